//! The `Storage` trait: what walspool needs from a place to keep segments.

use std::io;

pub mod conformance;

/// A segment is named by the sequence number of its first record (its base).
pub type SegmentId = u64;

/// A segment as listed by [`Storage::list_segments`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The segment's base sequence number.
    pub id: SegmentId,
    /// Its length in bytes as stored (may include a torn tail).
    pub len: u64,
}

/// Where a WAL keeps its segments and its small metadata (consumer checkpoints,
/// counters, the stats file).
///
/// # Contract
///
/// * **Blocking.** Every method blocks the calling thread until the operation is done.
///   walspool calls them from its own writer and housekeeping threads (and readers call
///   [`read_at`](Storage::read_at)), never while holding a lock that an async task waits
///   on. Implementations must be `Send + Sync`; concurrent calls on *different* segments,
///   and concurrent `read_at` with `write_at` on the same segment, must be safe.
/// * **Single writer.** Only one WAL writes a storage at a time. A backend that can be
///   shared between processes (a directory) must refuse a second writer when it is
///   opened, with [`Error::Locked`](crate::Error::Locked).
/// * **Durability.** Bytes written with [`write_at`](Storage::write_at) are durable only
///   once [`sync`](Storage::sync) of that segment has returned `Ok` with no failed
///   `sync` of it in between (see **Errors**). A segment created by
///   [`create_segment`](Storage::create_segment) exists durably when the call returns
///   (a directory backend fsyncs the directory). [`remove_segment`](Storage::remove_segment)
///   may take effect lazily after a crash (the segment may reappear; walspool copes).
///   [`put_meta`](Storage::put_meta) is atomic and durable: after a crash the key holds
///   either the old or the new value, never a mix. [`publish`](Storage::publish) is atomic
///   but need not be durable.
/// * **Crashes.** After a crash a segment holds every byte synced before it, and of the
///   unsynced bytes any prefix, possibly with a torn (partially written, or zero-filled)
///   last write. walspool detects and cuts such tails on open.
/// * **Zero-fill.** Reading past the end returns fewer bytes (a short read), not an error.
///   Writing past the end extends the segment; any gap reads as zeros.
/// * **Errors.** Failures are `io::Error`s; a full device is `io::ErrorKind::StorageFull`.
///   A failed `sync` means the bytes written since the last successful one may be lost
///   for good, even though they still read back: Linux marks the dirty pages clean after
///   a writeback error, so a later `sync` returns `Ok` without writing them and a power
///   loss then loses them (after a later `sync` they may read as zeros, or as what was
///   there before). Only writing them again makes them durable again. walspool poisons
///   the WAL on a failed `sync` and never acknowledges those bytes; code that reads them
///   back later (recovery in a new process) must not trust them to be durable.
///   [`Memory`](crate::Memory) models exactly this.
pub trait Storage: Send + Sync + 'static {
    /// Lists every segment, in any order.
    fn list_segments(&self) -> io::Result<Vec<SegmentInfo>>;
    /// Creates an empty segment. Fails if it exists.
    fn create_segment(&self, id: SegmentId) -> io::Result<()>;
    /// Writes `data` at `offset` in the segment.
    fn write_at(&self, id: SegmentId, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every byte written to the segment so far durable (fdatasync).
    fn sync(&self, id: SegmentId) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (short at the end).
    fn read_at(&self, id: SegmentId, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Cuts the segment to `len` bytes (durable once `sync` returns).
    fn truncate(&self, id: SegmentId, len: u64) -> io::Result<()>;
    /// Deletes a segment.
    fn remove_segment(&self, id: SegmentId) -> io::Result<()>;
    /// Reads a metadata value; `None` if the key is absent.
    fn get_meta(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    /// Stores a metadata value atomically and durably.
    fn put_meta(&self, key: &str, value: &[u8]) -> io::Result<()>;
    /// Deletes a metadata key (absent keys are fine).
    fn remove_meta(&self, key: &str) -> io::Result<()>;
    /// Lists metadata keys that start with `prefix`.
    fn list_meta(&self, prefix: &str) -> io::Result<Vec<String>>;

    /// Replaces a published, non-durable document (the stats file) atomically.
    fn publish(&self, name: &str, value: &[u8]) -> io::Result<()> {
        self.put_meta(name, value)
    }
    /// Reserves space for a segment up to `len` bytes (e.g. `fallocate`), so that
    /// appends inside it do not change the file size and fdatasync has less metadata to
    /// write. The reserved range reads as zeros. Optional: the default does nothing.
    fn preallocate(&self, _id: SegmentId, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Asks the storage to *start* writing `len` bytes at `offset` of the segment (bytes
    /// just written with [`write_at`](Storage::write_at)) to stable storage, without
    /// waiting for it (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that a later
    /// [`sync`](Storage::sync) finds less to write. The writer calls it every
    /// [`Options::writeback_bytes`](crate::Options::writeback_bytes) written between
    /// syncs.
    ///
    /// A hint only: it makes nothing durable (only `sync` does), and it must not
    /// consume a write error that the next `sync` of the segment has to report (on
    /// Linux, `SYNC_FILE_RANGE_WRITE` without the `WAIT` flags does not). walspool
    /// ignores its failure (logged once, then no more hints for that WAL). Optional: the
    /// default does nothing.
    fn start_writeback(&self, _id: SegmentId, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Writes zeros over `len` bytes at `offset` of the segment, a range past the
    /// log's end that the writer will fill with frames soon (it calls this every
    /// [`Options::zero_ahead_bytes`](crate::Options::zero_ahead_bytes), ahead of its
    /// write position). For a file system, so that the blocks are allocated *and
    /// written* before records go there: on ext4 and XFS an `fdatasync` after a write
    /// into `fallocate`d (unwritten) blocks must also journal their conversion to
    /// written, which costs more than one into blocks already written (BENCHMARKS.md,
    /// "Round 3"). The range reads as zeros before and after, so recovery sees
    /// nothing different; nothing needs to be durable when it returns.
    ///
    /// Optional: the default does nothing (right for storage without such blocks, as
    /// [`Memory`](crate::Memory)). walspool ignores its failure (logged once, then no
    /// more zeroing for that WAL): it is only about speed.
    fn write_zeroes(&self, _id: SegmentId, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Called once when the WAL is closed: release locks and handles so that the
    /// storage can be opened again (by this or another process) while old handles live.
    fn release(&self) {}
    /// A human-readable name of a segment, for errors and the monitor (a path on disk).
    fn segment_name(&self, id: SegmentId) -> String {
        crate::format::segment_file_name(id)
    }
    /// Where this storage lives, for errors and the stats file.
    fn location(&self) -> String {
        String::from("(storage)")
    }
}

/// Conveniences over any [`Storage`].
pub trait StorageExt: Storage {
    /// Reads exactly `len` bytes at `offset`, or fewer at the end of the segment.
    fn read_vec(&self, id: SegmentId, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = self.read_at(id, offset + got as u64, &mut buf[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// Length of a segment, from a listing.
    fn segment_len(&self, id: SegmentId) -> io::Result<Option<u64>> {
        Ok(self
            .list_segments()?
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| s.len))
    }
}

impl<S: Storage + ?Sized> StorageExt for S {}

/// Forwards every method, defaults included, to the storage behind a pointer: `Arc<S>`,
/// `Box<S>`, and so `Arc<dyn Storage>` and `Box<dyn Storage>`, which make
/// `Wal<Box<dyn Storage>>` a WAL whose backend is chosen at run time.
macro_rules! forward_storage {
    ($($ptr:ident)::+) => {
        impl<S: Storage + ?Sized> Storage for $($ptr)::+<S> {
            fn list_segments(&self) -> io::Result<Vec<SegmentInfo>> {
                (**self).list_segments()
            }
            fn create_segment(&self, id: SegmentId) -> io::Result<()> {
                (**self).create_segment(id)
            }
            fn write_at(&self, id: SegmentId, offset: u64, data: &[u8]) -> io::Result<()> {
                (**self).write_at(id, offset, data)
            }
            fn sync(&self, id: SegmentId) -> io::Result<()> {
                (**self).sync(id)
            }
            fn read_at(&self, id: SegmentId, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
                (**self).read_at(id, offset, buf)
            }
            fn truncate(&self, id: SegmentId, len: u64) -> io::Result<()> {
                (**self).truncate(id, len)
            }
            fn remove_segment(&self, id: SegmentId) -> io::Result<()> {
                (**self).remove_segment(id)
            }
            fn get_meta(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
                (**self).get_meta(key)
            }
            fn put_meta(&self, key: &str, value: &[u8]) -> io::Result<()> {
                (**self).put_meta(key, value)
            }
            fn remove_meta(&self, key: &str) -> io::Result<()> {
                (**self).remove_meta(key)
            }
            fn list_meta(&self, prefix: &str) -> io::Result<Vec<String>> {
                (**self).list_meta(prefix)
            }
            fn publish(&self, name: &str, value: &[u8]) -> io::Result<()> {
                (**self).publish(name, value)
            }
            fn release(&self) {
                (**self).release()
            }
            fn preallocate(&self, id: SegmentId, len: u64) -> io::Result<()> {
                (**self).preallocate(id, len)
            }
            fn start_writeback(&self, id: SegmentId, offset: u64, len: u64) -> io::Result<()> {
                (**self).start_writeback(id, offset, len)
            }
            fn write_zeroes(&self, id: SegmentId, offset: u64, len: u64) -> io::Result<()> {
                (**self).write_zeroes(id, offset, len)
            }
            fn segment_name(&self, id: SegmentId) -> String {
                (**self).segment_name(id)
            }
            fn location(&self) -> String {
                (**self).location()
            }
        }
    };
}

forward_storage!(std::sync::Arc);
forward_storage!(Box);
