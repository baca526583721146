//! Test support shared by wal/tests/{writeback,zero_ahead}.rs: `Memory` with the
//! storage calls a test wants to watch (or fail) handed to an [`Observer`] first.

#![allow(dead_code)]

use std::io;

use walspool_wal::{Memory, SegmentId, SegmentInfo, Storage};

/// What a test sees of the calls on [`Observed`]. Every method has a default that
/// only forwards.
pub trait Observer: Clone + Send + Sync + 'static {
    /// Before each `write_at` of `len` bytes.
    fn write_at(&self, _id: SegmentId, _offset: u64, _len: u64) {}
    /// Before each `truncate`.
    fn truncate(&self, _id: SegmentId, _len: u64) {}
    /// `start_writeback` (the default does nothing, as `Storage`'s).
    fn start_writeback(
        &self,
        _mem: &Memory,
        _id: SegmentId,
        _offset: u64,
        _len: u64,
    ) -> io::Result<()> {
        Ok(())
    }
    /// `write_zeroes` (the default does nothing, as `Storage`'s).
    fn write_zeroes(
        &self,
        _mem: &Memory,
        _id: SegmentId,
        _offset: u64,
        _len: u64,
    ) -> io::Result<()> {
        Ok(())
    }
}

/// `Memory`, watched by `obs`.
#[derive(Debug, Clone)]
pub struct Observed<O> {
    pub mem: Memory,
    pub obs: O,
}

impl<O: Observer> Observed<O> {
    pub fn new(obs: O) -> Self {
        Observed {
            mem: Memory::new(),
            obs,
        }
    }
}

impl<O: Observer> Storage for Observed<O> {
    fn list_segments(&self) -> io::Result<Vec<SegmentInfo>> {
        self.mem.list_segments()
    }
    fn create_segment(&self, id: SegmentId) -> io::Result<()> {
        self.mem.create_segment(id)
    }
    fn write_at(&self, id: SegmentId, offset: u64, data: &[u8]) -> io::Result<()> {
        self.obs.write_at(id, offset, data.len() as u64);
        self.mem.write_at(id, offset, data)
    }
    fn sync(&self, id: SegmentId) -> io::Result<()> {
        self.mem.sync(id)
    }
    fn read_at(&self, id: SegmentId, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.mem.read_at(id, offset, buf)
    }
    fn truncate(&self, id: SegmentId, len: u64) -> io::Result<()> {
        self.obs.truncate(id, len);
        self.mem.truncate(id, len)
    }
    fn remove_segment(&self, id: SegmentId) -> io::Result<()> {
        self.mem.remove_segment(id)
    }
    fn get_meta(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        self.mem.get_meta(key)
    }
    fn put_meta(&self, key: &str, value: &[u8]) -> io::Result<()> {
        self.mem.put_meta(key, value)
    }
    fn remove_meta(&self, key: &str) -> io::Result<()> {
        self.mem.remove_meta(key)
    }
    fn list_meta(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.mem.list_meta(prefix)
    }
    fn start_writeback(&self, id: SegmentId, offset: u64, len: u64) -> io::Result<()> {
        self.obs.start_writeback(&self.mem, id, offset, len)
    }
    fn write_zeroes(&self, id: SegmentId, offset: u64, len: u64) -> io::Result<()> {
        self.obs.write_zeroes(&self.mem, id, offset, len)
    }
}
