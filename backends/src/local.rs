//! `LocalDisk`: segments as files in one directory.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use walspool_wal::format::{parse_segment_file_name, segment_file_name};
use walspool_wal::{Error, SegmentId, SegmentInfo, Storage};

/// Name of the lock file in a WAL directory.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the metadata subdirectory (consumer checkpoints, counters, the WAL id).
pub const META_DIR: &str = "meta";

/// Makes every temporary file name unique within the process (with the pid, across
/// processes): two threads replacing the same key at once (the writer and the
/// housekeeping thread both persist `meta/counters`) never share a temporary file.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether a file name in the WAL directory or `meta/` is a temporary file of an
/// atomic replacement: `.<key>.tmp<pid>.<n>` (a leading `.`, which no metadata key or
/// published name may have), or `<key>.tmp<pid>` as written by versions before that
/// (no valid key ends in `.tmp<digits>`).
fn is_temp_file_name(name: &str) -> bool {
    if name.starts_with('.') {
        return name.contains(".tmp");
    }
    match name.rsplit_once(".tmp") {
        Some((key, digits)) => {
            !key.is_empty() && !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// Whether `key` may name a metadata entry (or a published document): 1 or more ASCII
/// letters, digits, `.`, `-` or `_`, not starting with `.` and not ending in
/// `.tmp<digits>` (the names temporary files have or had, see [`is_temp_file_name`]).
fn is_valid_meta_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
        && !is_temp_file_name(key)
}

/// A WAL directory on the local file system.
///
/// Layout: `{base_seq:020}.wal` segment files, `meta/` (one file per key, replaced
/// atomically with write + fsync + rename + directory fsync), `stats.json` (the stats
/// file, replaced atomically every interval) and `LOCK`, held with an exclusive
/// `flock` for as long as the writer lives. A replacement writes a temporary file
/// `.<key>.tmp<pid>.<n>` first, unique per write; such files left by a crash (and the
/// `<key>.tmp<pid>` ones of older versions) are never listed as keys and are deleted
/// when the directory is next opened for writing. Files are created mode 0600 and the
/// directory 0700: WAL records are often audit data.
#[derive(Debug)]
pub struct LocalDisk {
    dir: PathBuf,
    lock: Mutex<Option<File>>,
    files: Mutex<HashMap<SegmentId, Arc<File>>>,
    read_only: bool,
}

fn io_err(op: &'static str, path: &Path, e: io::Error) -> Error {
    Error::Io {
        op,
        path: path.display().to_string(),
        source: e,
    }
}

impl LocalDisk {
    /// Opens (creating if needed) a WAL directory for writing and takes its lock.
    /// A second writer gets [`Error::Locked`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref().to_path_buf();
        match fs::metadata(&dir) {
            Ok(m) if !m.is_dir() => {
                return Err(Error::Config(format!(
                    "{} exists and is not a directory",
                    dir.display()
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The directories about to be created, innermost first.
                let mut new_dirs = Vec::new();
                let mut p = dir.as_path();
                while !p.as_os_str().is_empty() && fs::symlink_metadata(p).is_err() {
                    new_dirs.push(p.to_path_buf());
                    p = p.parent().unwrap_or(Path::new(""));
                }
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| io_err("create WAL directory", &dir, e))?;
                // A new directory's entry is durable only once its parent is fsynced:
                // without this a power cut can take the whole WAL, acknowledged records
                // and all, away (found by tests/power_loss.rs).
                for d in new_dirs {
                    let parent = match d.parent() {
                        Some(p) if !p.as_os_str().is_empty() => p,
                        _ => Path::new("."),
                    };
                    Self::sync_dir(parent).map_err(|e| io_err("sync directory", parent, e))?;
                }
            }
            Err(e) => return Err(io_err("stat WAL directory", &dir, e)),
        }
        let meta = dir.join(META_DIR);
        if !meta.is_dir() {
            DirBuilder::new()
                .mode(0o700)
                .create(&meta)
                .or_else(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| io_err("create meta directory", &meta, e))?;
            Self::sync_dir(&dir).map_err(|e| io_err("sync directory", &dir, e))?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| io_err("open lock file", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: lock_path.display().to_string(),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &lock_path, e)),
        }
        // Record the holder's pid, for operators.
        let _ = lock.set_len(0);
        let _ = (&lock).write_all(format!("{}\n", std::process::id()).as_bytes());
        // Temporary files of replacements a crashed writer left behind. Nobody else
        // writes here while we hold the lock.
        remove_stale_temp_files(&dir);
        remove_stale_temp_files(&meta);
        Ok(LocalDisk {
            dir,
            lock: Mutex::new(Some(lock)),
            files: Mutex::new(HashMap::new()),
            read_only: false,
        })
    }

    /// Opens a WAL directory for reading only, without the lock: for tools (the
    /// monitor, `dump`, `verify`) that look at a WAL another process may be writing.
    /// Every write fails.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref().to_path_buf();
        let m = fs::metadata(&dir).map_err(|e| io_err("open WAL directory", &dir, e))?;
        if !m.is_dir() {
            return Err(Error::Config(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        Ok(LocalDisk {
            dir,
            lock: Mutex::new(None),
            files: Mutex::new(HashMap::new()),
            read_only: true,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a segment file.
    pub fn segment_path(&self, id: SegmentId) -> PathBuf {
        self.dir.join(segment_file_name(id))
    }

    fn check_writable(&self) -> io::Result<()> {
        if !self.read_only
            && self
                .lock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
        {
            return Err(io::Error::other(
                "WAL directory was released (the WAL is closed)",
            ));
        }
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "storage was opened read-only",
            ));
        }
        Ok(())
    }

    fn file(&self, id: SegmentId) -> io::Result<Arc<File>> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = files.get(&id) {
            return Ok(f.clone());
        }
        let f = OpenOptions::new()
            .read(true)
            .write(!self.read_only)
            .open(self.segment_path(id))?;
        let f = Arc::new(f);
        files.insert(id, f.clone());
        Ok(f)
    }

    fn sync_dir(path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn meta_path(&self, key: &str) -> io::Result<PathBuf> {
        if !is_valid_meta_key(key) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid metadata key {key:?}"),
            ));
        }
        Ok(self.dir.join(META_DIR).join(key))
    }

    /// Replaces `dir/name` atomically: writes a temporary file unique to this call
    /// (`.<name>.tmp<pid>.<n>`, created exclusively), then renames it over `name`.
    /// Concurrent replacements of the same name each write their own file: the last
    /// rename wins and every version read is whole.
    fn write_atomic(dir: &Path, name: &str, value: &[u8], durable: bool) -> io::Result<()> {
        let path = dir.join(name);
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp{}.{n}", std::process::id()));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(value)?;
            if durable {
                f.sync_all()?;
            }
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if durable {
            Self::sync_dir(dir)?;
        }
        Ok(())
    }
}

/// Deletes the temporary files (see [`is_temp_file_name`]) in `dir`. Best effort: a
/// leftover is harmless (never listed as a key), only wasted space.
fn remove_stale_temp_files(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str() else {
            continue;
        };
        if !is_temp_file_name(n) || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        match fs::remove_file(e.path()) {
            Ok(()) => tracing::info!(file = %e.path().display(), "removed a stale temporary file"),
            Err(err) => {
                tracing::warn!(file = %e.path().display(), error = %err, "could not remove a stale temporary file")
            }
        }
    }
}

impl Storage for LocalDisk {
    fn list_segments(&self) -> io::Result<Vec<SegmentInfo>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(id) = name.to_str().and_then(parse_segment_file_name) else {
                continue;
            };
            let len = match e.metadata() {
                Ok(m) => m.len(),
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            out.push(SegmentInfo { id, len });
        }
        Ok(out)
    }

    fn create_segment(&self, id: SegmentId) -> io::Result<()> {
        self.check_writable()?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.segment_path(id))?;
        // Make the new directory entry durable.
        Self::sync_dir(&self.dir)?;
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::new(f));
        Ok(())
    }

    fn write_at(&self, id: SegmentId, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check_writable()?;
        self.file(id)?.write_all_at(data, offset)
    }

    fn sync(&self, id: SegmentId) -> io::Result<()> {
        self.check_writable()?;
        self.file(id)?.sync_data()
    }

    fn read_at(&self, id: SegmentId, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let f = self.file(id)?;
        loop {
            match f.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn truncate(&self, id: SegmentId, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.file(id)?.set_len(len)
    }

    fn remove_segment(&self, id: SegmentId) -> io::Result<()> {
        self.check_writable()?;
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        fs::remove_file(self.segment_path(id))
    }

    fn get_meta(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.meta_path(key)?) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> io::Result<()> {
        self.check_writable()?;
        self.meta_path(key)?;
        Self::write_atomic(&self.dir.join(META_DIR), key, value, true)
    }

    fn remove_meta(&self, key: &str) -> io::Result<()> {
        self.check_writable()?;
        match fs::remove_file(self.meta_path(key)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Self::sync_dir(&self.dir.join(META_DIR)),
        }
    }

    fn list_meta(&self, prefix: &str) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        let dir = self.dir.join(META_DIR);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in rd {
            let e = e?;
            if let Some(n) = e.file_name().to_str() {
                // Temporary files (`.x.tmp…`, or `x.tmp<pid>` of older versions) are
                // not keys. Every valid key is listed, whatever it contains.
                if n.starts_with(prefix) && is_valid_meta_key(n) {
                    out.push(n.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn publish(&self, name: &str, value: &[u8]) -> io::Result<()> {
        self.check_writable()?;
        if !is_valid_meta_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid published name {name:?}"),
            ));
        }
        let path = self.dir.join(name);
        Self::write_atomic(&self.dir, name, value, false)?;
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o600));
        Ok(())
    }

    fn preallocate(&self, id: SegmentId, len: u64) -> io::Result<()> {
        self.check_writable()?;
        let f = self.file(id)?;
        let cur = f.metadata()?.len();
        if cur >= len {
            return Ok(());
        }
        // Measured on this ext4 VM: fdatasync after a 256-byte write inside a
        // fallocated range takes ~105 µs (p50) against ~155 µs when the write grows the
        // file, because the size change need not be journaled (BENCHMARKS.md).
        match rustix::fs::fallocate(&*f, rustix::fs::FallocateFlags::empty(), cur, len - cur) {
            Ok(()) => Ok(()),
            // File systems without fallocate (tmpfs on old kernels, some FUSE): fine.
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    fn write_zeroes(&self, id: SegmentId, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        // Real writes, not fallocate's ZERO_RANGE (which leaves unwritten extents on
        // ext4) nor WRITE_ZEROES (Linux 6.17+, needs device support; not on this VM).
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let f = self.file(id)?;
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(ZEROS.len() as u64) as usize;
            f.write_all_at(&ZEROS[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    fn start_writeback(&self, id: SegmentId, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        start_writeback(&*self.file(id)?, offset, len)
    }

    fn release(&self) {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // Unlock explicitly: a child process caught between fork and exec holds a
        // duplicate of the descriptor, and merely closing ours would leave the lock held
        // until that child execs.
        if let Some(f) = self.lock.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = f.unlock();
        }
    }

    fn segment_name(&self, id: SegmentId) -> String {
        self.segment_path(id).display().to_string()
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}

/// `sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE)`: starts writeback of the
/// dirty pages in the range and returns without waiting for it. Without the `WAIT`
/// flags it neither waits for nor reports (consumes) a writeback error: the writer's
/// next `fdatasync` on this file still sees it (the kernel's per-file `errseq`).
///
/// Neither rustix (1.1) nor nix (0.26-0.31) wraps `sync_file_range`, hence the one
/// `unsafe` call of the workspace. It is there for `Durability::Buffered`: without it
/// each roll's fdatasync wrote a whole 64 MiB segment while appends waited (case (d)
/// of BENCHMARKS.md, "Early writeback").
#[cfg(target_os = "linux")]
fn start_writeback(f: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let too_big = |_| io::Error::new(io::ErrorKind::InvalidInput, "range beyond off64_t");
    let off = libc::off64_t::try_from(offset).map_err(too_big)?;
    let n = libc::off64_t::try_from(len).map_err(too_big)?;
    // SAFETY: a plain system call on a descriptor `f` keeps open for the whole call; it
    // takes no pointers and touches no memory of this process.
    #[allow(unsafe_code)]
    let r = unsafe { libc::sync_file_range(f.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Other systems: no hint (their `fdatasync` does all the writing).
#[cfg(not(target_os = "linux"))]
fn start_writeback(_f: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Ok(())
}

impl Drop for LocalDisk {
    fn drop(&mut self) {
        // Release the lock explicitly (see `release`).
        if let Some(f) = self.lock.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = f.unlock();
        }
    }
}
