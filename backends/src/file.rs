//! File sink (no feature needed): appends each batch to a JSON-lines file, one fsync
//! per batch, rotating by size, exactly once across restarts.
//!
//! # The lines
//!
//! One JSON object per record, `\n`-terminated, in sequence order:
//!
//! * [`LineFormat::Envelope`] (default), for any `T`:
//!   `{"key":"{wal_id}:{seq}","wal_id":"…","consumer":"…","seq":7,"ts_us":…,"record":…}`
//!   (the HTTP sink's wire record).
//! * [`LineFormat::Flat`], for records that serialize to a JSON object: the record's
//!   own fields plus `"wal_id"` and `"wal_seq"` (which replace fields of those names),
//!   e.g. `{"ts":…,"service":"…","action":"…",…,"wal_id":"…","wal_seq":7}`: what a log
//!   pipeline that expects the plain audit record wants.
//!
//! # Delivery
//!
//! `send` returns `Ok` once the batch's lines are written and `fdatasync`ed. The sink
//! remembers the last record it wrote, `(wal_id, seq)`, and skips records of the same
//! WAL at or below it, so a batch sent again (after a timeout, or a restart of the
//! shipping process that died before its checkpoint) writes no duplicate. On
//! [`build`](FileSinkBuilder::build) that position is **recovered from the files**: a
//! torn last line (a crash mid-write: never acknowledged) is cut off, and the last
//! complete line of the active file, or of the newest rotated file when the active
//! one is empty, gives `(wal_id, seq)`. So the file holds every record **exactly once**
//! as long as it is only written by this sink, for one consumer. Records of another
//! WAL id (a new WAL, or one restored with a new id) are written in full and become the
//! new position.
//!
//! # Rotation
//!
//! With [`max_bytes`](FileSinkBuilder::max_bytes), once the active file `path` reaches
//! that size after a batch it is renamed to `{path}.{n:06}` (n = 1, 2, ...: the highest
//! is the newest) and a new `path` is started; the directory is fsynced. With
//! [`max_files`](FileSinkBuilder::max_files), the oldest rotated files beyond that many
//! are deleted. Files are created with mode 0600.
//!
//! # Errors
//!
//! A failed write is transient (the partial write is cut off again and the next attempt
//! retries). A failed fsync poisons the sink: the kernel may have dropped the dirty
//! pages, so it refuses every later batch with a transient error until the process
//! opens it again (recovery then reads what really is in the file). A record that does
//! not serialize, or is not a JSON object in the flat format, is refused permanently
//! ([`SinkError::Record`]).
//!
//! # Runtimes
//!
//! The file is written on a thread the sink owns; `send` encodes the batch on the
//! caller's task and awaits the thread's answer through a `futures` oneshot channel, so
//! no executor thread blocks on an fsync.
//!
//! ```
//! use std::time::Duration;
//! use walspool_backends::file::{FileSink, LineFormat};
//! use walspool_wal::shipper::Shipper;
//! use walspool_wal::{Memory, Options, Wal};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("audit.jsonl");
//! let wal = Wal::open(Memory::new(), Options::default())?;
//! let last = futures::executor::block_on(wal.append_batch(&["a".to_string(), "b".to_string()]))?.end - 1;
//!
//! let sink = FileSink::builder(&path)
//!     .format(LineFormat::Envelope)
//!     .max_bytes(64 << 20)
//!     .max_files(10)
//!     .build()?;
//! let shipper = Shipper::<_, String>::builder(wal.consumer("file")?, sink)
//!     .linger(Duration::from_millis(1))
//!     .build()?;
//! let running = shipper.spawn_on_thread()?;
//! assert!(running.handle().wait_committed_timeout(last, Duration::from_secs(10)));
//! running.shutdown()?;
//! assert_eq!(std::fs::read_to_string(&path)?.lines().count(), 2);
//! # Ok(())
//! # }
//! ```

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use async_trait::async_trait;
use futures::channel::oneshot;
use serde::Serialize;
use walspool_wal::shipper::{Batch, Sink, SinkError};
use walspool_wal::Error;

/// How a record is written as a line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LineFormat {
    /// `{"key","wal_id","consumer","seq","ts_us","record"}` around any record.
    #[default]
    Envelope,
    /// The record's own JSON object plus `wal_id` and `wal_seq`.
    Flat,
}

/// The last record a file holds: `(wal_id, seq)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePosition {
    /// The WAL it came from.
    pub wal_id: String,
    /// Its sequence number.
    pub seq: u64,
}

/// Builds a [`FileSink`].
#[derive(Debug, Clone)]
pub struct FileSinkBuilder {
    path: PathBuf,
    format: LineFormat,
    max_bytes: Option<u64>,
    max_files: Option<usize>,
}

impl FileSinkBuilder {
    /// Line format (default [`LineFormat::Envelope`]).
    pub fn format(mut self, f: LineFormat) -> Self {
        self.format = f;
        self
    }

    /// Rotates the file once it holds this many bytes (default: never; at least 1,
    /// checked by [`build`](Self::build)).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// Keeps at most this many rotated files, deleting the oldest (default: all).
    pub fn max_files(mut self, n: usize) -> Self {
        self.max_files = Some(n);
        self
    }

    /// Opens (or creates) the file, recovers the last written position from it, and
    /// starts the sink's writer thread.
    pub fn build(self) -> Result<FileSink, Error> {
        if self.max_bytes == Some(0) {
            return Err(Error::Config(
                "file sink: max_bytes must be at least 1".into(),
            ));
        }
        let mut w = Writer::open(&self)?;
        let position = Arc::new(Mutex::new(w.last.clone()));
        w.shared = position.clone();
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("walspool-file-sink".into())
            .spawn(move || {
                // Ends when the sink (the sender) is dropped.
                for job in rx {
                    let r = w.write(&job);
                    let _ = job.reply.send(r);
                }
            })
            .map_err(|e| Error::Io {
                op: "spawn file sink thread",
                path: self.path.display().to_string(),
                source: e,
            })?;
        Ok(FileSink {
            cfg: self,
            tx,
            position,
        })
    }
}

/// A [`Sink`] that appends batches to a JSON-lines file; see the
/// [module documentation](self).
#[derive(Debug)]
pub struct FileSink {
    cfg: FileSinkBuilder,
    tx: mpsc::Sender<Job>,
    position: Arc<Mutex<Option<FilePosition>>>,
}

struct Job {
    wal_id: String,
    /// `(seq, line)`, each line `\n`-terminated.
    lines: Vec<(u64, Vec<u8>)>,
    reply: oneshot::Sender<Result<(), SinkError>>,
}

impl FileSink {
    /// Starts building a sink that appends to `path`.
    pub fn builder(path: impl AsRef<Path>) -> FileSinkBuilder {
        FileSinkBuilder {
            path: path.as_ref().to_path_buf(),
            format: LineFormat::default(),
            max_bytes: None,
            max_files: None,
        }
    }

    /// The active file.
    pub fn path(&self) -> &Path {
        &self.cfg.path
    }

    /// The last record the files hold (recovered on open, then updated per batch).
    pub fn position(&self) -> Option<FilePosition> {
        self.position
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Writes a batch, like [`Sink::send`], but returns a future that borrows nothing:
    /// for callers that cannot hold the sink across an await (a replay closure).
    pub fn write<T: Serialize>(
        &self,
        batch: &Batch<T>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send + 'static {
        let submitted = self.submit(batch);
        async move {
            let rx = submitted?;
            rx.await.unwrap_or_else(|_| {
                Err(SinkError::transient(
                    "the file sink's thread dropped the request",
                ))
            })
        }
    }

    fn submit<T: Serialize>(
        &self,
        batch: &Batch<T>,
    ) -> Result<oneshot::Receiver<Result<(), SinkError>>, SinkError> {
        let mut lines = Vec::with_capacity(batch.len());
        for e in batch.entries() {
            let mut line = match self.cfg.format {
                LineFormat::Envelope => serde_json::to_vec(&Envelope {
                    key: format!("{}:{}", batch.wal_id(), e.seq),
                    wal_id: batch.wal_id(),
                    consumer: batch.consumer(),
                    seq: e.seq,
                    ts_us: e.ts_us,
                    record: &e.record,
                }),
                LineFormat::Flat => match serde_json::to_value(&e.record) {
                    Ok(serde_json::Value::Object(mut o)) => {
                        o.insert("wal_id".into(), batch.wal_id().into());
                        o.insert("wal_seq".into(), e.seq.into());
                        serde_json::to_vec(&o)
                    }
                    Ok(_) => {
                        return Err(SinkError::record(
                            e.seq,
                            "the flat line format needs a record that is a JSON object",
                        ))
                    }
                    Err(err) => Err(err),
                },
            }
            .map_err(|err| SinkError::record(e.seq, format!("record to JSON: {err}")))?;
            line.push(b'\n');
            lines.push((e.seq, line));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                wal_id: batch.wal_id().to_string(),
                lines,
                reply,
            })
            .map_err(|_| SinkError::transient("the file sink's thread is gone"))?;
        Ok(rx)
    }
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    key: String,
    wal_id: &'a str,
    consumer: &'a str,
    seq: u64,
    ts_us: u64,
    record: &'a T,
}

#[async_trait]
impl<T: Serialize + Send + Sync + 'static> Sink<T> for FileSink {
    async fn send(&mut self, batch: &Batch<T>) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.write(batch).await
    }
}

/// The file, on the sink's thread.
struct Writer {
    path: PathBuf,
    dir: PathBuf,
    name: String,
    max_bytes: Option<u64>,
    max_files: Option<usize>,
    file: File,
    size: u64,
    last: Option<FilePosition>,
    shared: Arc<Mutex<Option<FilePosition>>>,
    /// Set by a failed fsync: every later batch is refused.
    poisoned: Option<String>,
}

fn io_err(op: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

impl Writer {
    fn open(cfg: &FileSinkBuilder) -> Result<Self, Error> {
        let path = cfg.path.clone();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Config(format!("file sink path {path:?} names no file")))?
            .to_string();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err("open", &path, e))?;
        let (size, last_line) = cut_torn_tail(&mut file, &path)?;
        let mut last = match last_line {
            Some(l) => Some(parse_position(&l, &path)?),
            None => None,
        };
        if last.is_none() {
            // Just rotated (or a crash between the rename and the first batch): the
            // newest rotated file ends with the last record.
            if let Some((_, p)) = rotated(&dir, &name)?.last() {
                let mut f = File::open(p).map_err(|e| io_err("open", p, e))?;
                if let Some(l) = last_line_of(&mut f, p)? {
                    last = Some(parse_position(&l, p)?);
                }
            }
        }
        sync_dir(&dir)?;
        Ok(Writer {
            path,
            dir,
            name,
            max_bytes: cfg.max_bytes,
            max_files: cfg.max_files,
            file,
            size,
            last,
            shared: Arc::new(Mutex::new(None)),
            poisoned: None,
        })
    }

    fn write(&mut self, job: &Job) -> Result<(), SinkError> {
        if let Some(cause) = &self.poisoned {
            return Err(SinkError::transient(format!(
                "file sink {} refuses writes after a failed fsync ({cause}); reopen it",
                self.path.display()
            )));
        }
        let skip_through = match &self.last {
            Some(p) if p.wal_id == job.wal_id => p.seq,
            _ => 0,
        };
        let mut buf = Vec::new();
        let mut last_seq = None;
        for (seq, line) in &job.lines {
            if *seq > skip_through {
                buf.extend_from_slice(line);
                last_seq = Some(*seq);
            }
        }
        let Some(last_seq) = last_seq else {
            return Ok(()); // all of it is already in the file
        };
        if let Err(e) = self.file.write_all(&buf) {
            let reason = format!("write {}: {e}", self.path.display());
            // Cut the partial write off so that the file ends with a whole line.
            if let Err(t) = self.file.set_len(self.size) {
                self.poisoned = Some(format!("{reason}; then truncate: {t}"));
            }
            return Err(SinkError::transient(reason));
        }
        if let Err(e) = self.file.sync_data() {
            let reason = format!("fdatasync {}: {e}", self.path.display());
            self.poisoned = Some(reason.clone());
            return Err(SinkError::transient(reason));
        }
        self.size += buf.len() as u64;
        let pos = FilePosition {
            wal_id: job.wal_id.clone(),
            seq: last_seq,
        };
        self.last = Some(pos.clone());
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(pos);
        if self.max_bytes.is_some_and(|m| self.size >= m) {
            // The batch is durable; a failed rotation only delays the next one.
            if let Err(e) = self.rotate() {
                tracing::warn!(path = %self.path.display(), error = %e, "file sink rotation failed");
            }
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), Error> {
        let existing = rotated(&self.dir, &self.name)?;
        let n = existing.last().map_or(1, |(n, _)| n + 1);
        let to = self.dir.join(format!("{}.{n:06}", self.name));
        std::fs::rename(&self.path, &to).map_err(|e| io_err("rename", &self.path, e))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| io_err("open", &self.path, e))?;
        self.size = 0;
        sync_dir(&self.dir)?;
        if let Some(keep) = self.max_files {
            let all = rotated(&self.dir, &self.name)?;
            for (_, p) in all.iter().take(all.len().saturating_sub(keep)) {
                std::fs::remove_file(p).map_err(|e| io_err("remove", p, e))?;
            }
        }
        Ok(())
    }
}

/// The rotated files `{name}.{n:06}` in `dir`, oldest first.
fn rotated(dir: &Path, name: &str) -> Result<Vec<(u64, PathBuf)>, Error> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| io_err("list", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| io_err("list", dir, e))?;
        let f = entry.file_name();
        let Some(f) = f.to_str() else { continue };
        let Some(num) = f.strip_prefix(name).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        if num.len() >= 6 && num.bytes().all(|c| c.is_ascii_digit()) {
            if let Ok(n) = num.parse() {
                out.push((n, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("fsync directory", dir, e))
}

/// Cuts a last line without its `\n` off the file (a write torn by a crash, never
/// acknowledged) and returns the file's size and its last complete line.
fn cut_torn_tail(file: &mut File, path: &Path) -> Result<(u64, Option<Vec<u8>>), Error> {
    let len = file.metadata().map_err(|e| io_err("stat", path, e))?.len();
    let end = last_newline_at_or_before(file, path, len)?;
    let keep = end.map_or(0, |i| i + 1);
    if keep != len {
        tracing::warn!(path = %path.display(), cut = len - keep, "file sink: cutting a torn last line");
        file.set_len(keep)
            .map_err(|e| io_err("truncate", path, e))?;
        file.sync_data().map_err(|e| io_err("fdatasync", path, e))?;
    }
    let line = match end {
        None => None,
        Some(nl) => {
            let start = last_newline_at_or_before(file, path, nl)?.map_or(0, |i| i + 1);
            let mut buf = vec![0u8; (nl - start) as usize];
            file.seek(SeekFrom::Start(start))
                .and_then(|_| file.read_exact(&mut buf))
                .map_err(|e| io_err("read", path, e))?;
            Some(buf)
        }
    };
    Ok((keep, line))
}

/// The last complete line of a file.
fn last_line_of(file: &mut File, path: &Path) -> Result<Option<Vec<u8>>, Error> {
    let len = file.metadata().map_err(|e| io_err("stat", path, e))?.len();
    let Some(nl) = last_newline_at_or_before(file, path, len)? else {
        return Ok(None);
    };
    let start = last_newline_at_or_before(file, path, nl)?.map_or(0, |i| i + 1);
    let mut buf = vec![0u8; (nl - start) as usize];
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|e| io_err("read", path, e))?;
    Ok(Some(buf))
}

/// Offset of the last `\n` strictly before `end`, reading backwards in 64 KiB chunks.
fn last_newline_at_or_before(file: &mut File, path: &Path, end: u64) -> Result<Option<u64>, Error> {
    const CHUNK: u64 = 64 << 10;
    let mut hi = end;
    let mut buf = vec![0u8; CHUNK as usize];
    while hi > 0 {
        let lo = hi.saturating_sub(CHUNK);
        let n = (hi - lo) as usize;
        file.seek(SeekFrom::Start(lo))
            .and_then(|_| file.read_exact(&mut buf[..n]))
            .map_err(|e| io_err("read", path, e))?;
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

/// `(wal_id, seq)` of a line in either format.
fn parse_position(line: &[u8], path: &Path) -> Result<FilePosition, Error> {
    let bad = |why: &str| Error::Corrupt {
        segment: path.display().to_string(),
        offset: 0,
        reason: format!(
            "the last line is not a walspool file sink record ({why}): {:?}",
            String::from_utf8_lossy(&line[..line.len().min(200)])
        ),
    };
    let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| bad(&e.to_string()))?;
    let seq = v
        .get("seq")
        .filter(|_| v.get("record").is_some())
        .or_else(|| v.get("wal_seq"))
        .and_then(|s| s.as_u64())
        .ok_or_else(|| bad("no seq or wal_seq"))?;
    let wal_id = v
        .get("wal_id")
        .and_then(|s| s.as_str())
        .ok_or_else(|| bad("no wal_id"))?
        .to_string();
    Ok(FilePosition { wal_id, seq })
}

#[cfg(test)]
mod tests {
    use super::*;
    use walspool_wal::Entry;

    fn batch(wal: &str, seqs: std::ops::RangeInclusive<u64>) -> Batch<serde_json::Value> {
        Batch::new(
            wal,
            "c",
            seqs.map(|seq| Entry {
                seq,
                ts_us: seq,
                record: serde_json::json!({"n": seq, "pad": "x".repeat(100)}),
            })
            .collect(),
        )
    }

    fn lines(p: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn replays_write_no_duplicates_across_reopen_and_torn_tails() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.jsonl");
        let mut s = FileSink::builder(&p).build().unwrap();
        futures::executor::block_on(s.send(&batch("w", 1..=10))).unwrap();
        futures::executor::block_on(s.send(&batch("w", 5..=12))).unwrap();
        assert_eq!(
            s.position(),
            Some(FilePosition {
                wal_id: "w".into(),
                seq: 12
            })
        );
        drop(s);
        // A crash mid-write left half a line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"key\":\"w:13\",\"wal")
            .unwrap();
        let mut s = FileSink::builder(&p).build().unwrap();
        assert_eq!(s.position().unwrap().seq, 12);
        futures::executor::block_on(s.send(&batch("w", 1..=15))).unwrap();
        let seqs: Vec<u64> = lines(&p)
            .iter()
            .map(|v| v["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=15).collect::<Vec<_>>());
        assert_eq!(lines(&p)[0]["key"], "w:1");
        assert_eq!(lines(&p)[0]["record"]["n"], 1);
        // Another WAL id is written in full.
        futures::executor::block_on(s.send(&batch("v", 1..=2))).unwrap();
        assert_eq!(lines(&p).len(), 17);
    }

    #[test]
    fn rotation_keeps_the_position_and_the_newest_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.jsonl");
        let mut s = FileSink::builder(&p)
            .format(LineFormat::Flat)
            .max_bytes(1000)
            .max_files(3)
            .build()
            .unwrap();
        for i in 0..10u64 {
            futures::executor::block_on(s.send(&batch("w", i * 10 + 1..=i * 10 + 10))).unwrap();
        }
        let rot = rotated(d.path(), "out.jsonl").unwrap();
        assert_eq!(
            rot.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        // Every batch rotated: the active file is empty; the position comes from .000010.
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        drop(s);
        let mut s = FileSink::builder(&p)
            .format(LineFormat::Flat)
            .max_bytes(1000)
            .build()
            .unwrap();
        assert_eq!(s.position().unwrap().seq, 100);
        futures::executor::block_on(s.send(&batch("w", 91..=101))).unwrap();
        let l = lines(&p);
        assert_eq!(l.len(), 1);
        assert_eq!(
            (l[0]["wal_seq"].as_u64(), l[0]["n"].as_u64()),
            (Some(101), Some(101))
        );
        let newest = lines(&rot[2].1);
        assert_eq!(newest.last().unwrap()["wal_seq"], 100);
    }

    #[test]
    fn a_foreign_last_line_is_refused_and_non_objects_are_permanent_in_flat() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.jsonl");
        std::fs::write(&p, "hello\n").unwrap();
        let err = FileSink::builder(&p).build().unwrap_err();
        assert!(
            err.to_string().contains("not a walspool file sink record"),
            "{err}"
        );
        let p = d.path().join("y.jsonl");
        let mut s = FileSink::builder(&p)
            .format(LineFormat::Flat)
            .build()
            .unwrap();
        let b = Batch::new(
            "w",
            "c",
            vec![Entry {
                seq: 1,
                ts_us: 1,
                record: 5u32,
            }],
        );
        let err = futures::executor::block_on(s.send(&b)).unwrap_err();
        assert!(matches!(err, SinkError::Record { seq: 1, .. }), "{err}");
    }
}
