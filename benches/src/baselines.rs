//! Same-run baselines: what the hardware and a naive design give.
//!
//! The raw fsync baseline overwrites a preallocated file (zeros written and fsynced
//! first, wrapping at [`PREALLOC`]), so `fdatasync` never has to persist a size
//! change: the best case for fsync latency. The group-commit and BufWriter baselines
//! append to a fresh file, as their simplest implementation would; a `prealloc`
//! variant of each overwrites a preallocated file instead.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Condvar, Mutex};

use crate::common::{
    serial_loop, threads_loop, tmpdir, Cfg, Payloads, Res, Sample, BATCH, PAYLOAD,
};

/// Size of the preallocated file the fsync baselines overwrite (multiple of PAYLOAD).
pub const PREALLOC: u64 = 64 << 20;

fn preallocated(path: &Path) -> Res<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    for i in 0..(PREALLOC >> 20) {
        f.write_all_at(&zeros, i << 20)?;
    }
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(f)
}

/// Writes `buf` at logical offset `off` of the circular preallocated file.
fn write_wrapped(f: &File, buf: &[u8], off: u64) -> std::io::Result<()> {
    let pos = off % PREALLOC;
    let first = ((PREALLOC - pos) as usize).min(buf.len());
    f.write_all_at(&buf[..first], pos)?;
    if first < buf.len() {
        write_wrapped(f, &buf[first..], off + first as u64)?;
    }
    Ok(())
}

/// Where a baseline writes: a circular preallocated file, or a fresh growing file.
enum Target {
    Prealloc(File),
    Append(File),
}

impl Target {
    fn new(path: &Path, prealloc: bool) -> Res<Self> {
        Ok(if prealloc {
            Target::Prealloc(preallocated(path)?)
        } else {
            Target::Append(
                OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(path)?,
            )
        })
    }
    fn write(&self, buf: &[u8], off: u64) -> std::io::Result<()> {
        match self {
            Target::Prealloc(f) => write_wrapped(f, buf, off),
            Target::Append(f) => f.write_all_at(buf, off),
        }
    }
    fn file(&self) -> &File {
        match self {
            Target::Prealloc(f) | Target::Append(f) => f,
        }
    }
}

/// Raw `pwrite` + `fdatasync` of one 256-byte record at a time, over the
/// preallocated file (or, for comparison, appending to a fresh file).
pub fn raw_fsync(cfg: &Cfg, p: &Payloads, prealloc: bool) -> Res<Sample> {
    let dir = tmpdir(cfg, "raw")?;
    let f = Target::new(&dir.path().join("raw"), prealloc)?;
    serial_loop(cfg.run_for, cfg.max_sync_records, 1, 1, |i| {
        f.write(p.get(i), i * PAYLOAD as u64)?;
        f.file().sync_data()?;
        Ok(())
    })
}

#[derive(Default)]
struct GcState {
    buf: Vec<u8>,
    appended: u64,
    durable: u64,
    leader: bool,
    written_bytes: u64,
    error: Option<String>,
}

/// The simplest group commit: writers append under a mutex; whoever finds no leader
/// becomes one, writes everything pending with one `pwrite` and one `fdatasync`, and
/// wakes everyone covered.
pub fn group_commit(cfg: &Cfg, p: &Payloads, n: usize, prealloc: bool) -> Res<Sample> {
    let dir = tmpdir(cfg, "gc")?;
    let f = Target::new(&dir.path().join("gc"), prealloc)?;
    let state = Mutex::new(GcState::default());
    let cv = Condvar::new();
    let (f, state, cv) = (&f, &state, &cv);
    threads_loop(n, cfg.run_for, |t| {
        Ok(move |i: u64| -> Res<()> {
            let mut g = state.lock().map_err(|_| "poisoned")?;
            g.buf.extend_from_slice(p.get(i * 131 + t as u64));
            g.appended += 1;
            let mine = g.appended;
            loop {
                if let Some(e) = &g.error {
                    return Err(e.clone().into());
                }
                if g.durable >= mine {
                    return Ok(());
                }
                if !g.leader {
                    g.leader = true;
                    let buf = std::mem::take(&mut g.buf);
                    let target = g.appended;
                    let off = g.written_bytes;
                    g.written_bytes += buf.len() as u64;
                    drop(g);
                    let res = f.write(&buf, off).and_then(|_| f.file().sync_data());
                    g = state.lock().map_err(|_| "poisoned")?;
                    g.leader = false;
                    match res {
                        Ok(()) => g.durable = target,
                        Err(e) => g.error = Some(e.to_string()),
                    }
                    // Recycle the allocation if nobody refilled the buffer meanwhile.
                    if g.buf.is_empty() {
                        let mut b = buf;
                        b.clear();
                        g.buf = b;
                    }
                    cv.notify_all();
                } else {
                    g = cv.wait(g).map_err(|_| "poisoned")?;
                }
            }
        })
    })
}

/// `BufWriter` (default 8 KiB buffer) over a fresh file (or the preallocated one),
/// `fdatasync` after every 1000 records; latency is per 1000-record batch.
pub fn bufwriter_sync_1000(cfg: &Cfg, p: &Payloads, prealloc: bool) -> Res<Sample> {
    let dir = tmpdir(cfg, "bw1000")?;
    let path = dir.path().join("bw");
    let f = if prealloc {
        preallocated(&path)?
    } else {
        File::create(&path)?
    };
    let mut w = BufWriter::new(f);
    let mut pos = 0u64;
    serial_loop(cfg.run_for, u64::MAX, BATCH as u64, 1, |b| {
        for k in 0..BATCH as u64 {
            w.write_all(p.get(b * BATCH as u64 + k))?;
        }
        w.flush()?;
        w.get_ref().sync_data()?;
        pos += (BATCH * PAYLOAD) as u64;
        if prealloc && pos + (BATCH * PAYLOAD) as u64 > PREALLOC {
            w.seek(SeekFrom::Start(0))?;
            pos = 0;
        }
        Ok(())
    })
}

/// `BufWriter` appending to a fresh file, never synced: the page-cache ceiling.
pub fn bufwriter_nosync(cfg: &Cfg, p: &Payloads) -> Res<Sample> {
    let dir = tmpdir(cfg, "bwnosync")?;
    let mut w = BufWriter::new(File::create(dir.path().join("bw"))?);
    let s = serial_loop(cfg.run_for, u64::MAX, 1, crate::common::SAMPLE_EVERY, |i| {
        w.write_all(p.get(i))?;
        Ok(())
    })?;
    w.flush()?;
    Ok(s)
}
