//! One frame cursor: reads a segment's frames in chunks, and finds the next intact
//! frame after damage. Recovery, `verify` and the lenient reader all walk segments
//! through it.

use std::io;

use crate::format::{
    decode_frame_with, Decoded, RawFrame, SegmentFooter, FRAME_HEADER_LEN, MAC_LEN, MAX_PAYLOAD_LEN,
};
use crate::storage::{SegmentId, Storage, StorageExt};

/// Size of the reads the cursor makes.
const CHUNK: usize = 1 << 20;
/// Smallest unit a disk writes atomically; a lost unsynced write leaves whole sectors
/// of zeros (or of their old content, which for new or preallocated space is zeros).
pub(crate) const SECTOR: u64 = 512;

/// What the cursor found at its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// An intact frame at `at`, `len` bytes long. The cursor moved past it;
    /// [`FrameCursor::last_frame`] gives its fields.
    Frame {
        at: u64,
        len: usize,
        seq: u64,
        ts_us: u64,
    },
    /// An intact footer at `at` (the cursor stays on it).
    Footer { at: u64, footer: SegmentFooter },
    /// The segment ends exactly at `at`.
    End { at: u64 },
    /// The segment ends inside a frame that starts at `at`.
    Truncated { at: u64 },
    /// The bytes at `at` are not a frame.
    Invalid { at: u64, reason: &'static str },
}

/// Reads the frames of one segment from an offset on.
pub(crate) struct FrameCursor<'s, S: Storage + ?Sized> {
    storage: &'s S,
    id: SegmentId,
    chained: bool,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_at: u64,
    pos: usize,
    last: (usize, usize),
    eof: bool,
}

impl<S: Storage + ?Sized> std::fmt::Debug for FrameCursor<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCursor")
            .field("segment", &self.id)
            .field("at", &self.at())
            .finish()
    }
}

impl<'s, S: Storage + ?Sized> FrameCursor<'s, S> {
    /// A cursor at file offset `at` (the first frame is at the header's data offset).
    pub fn new(storage: &'s S, id: SegmentId, at: u64, chained: bool) -> Self {
        FrameCursor {
            storage,
            id,
            chained,
            buf: Vec::new(),
            buf_at: at,
            pos: 0,
            last: (0, 0),
            eof: false,
        }
    }

    /// The file offset the cursor is at.
    pub fn at(&self) -> u64 {
        self.buf_at + self.pos as u64
    }

    /// Moves the cursor to file offset `at`.
    pub fn seek(&mut self, at: u64) {
        self.buf.clear();
        self.buf_at = at;
        self.pos = 0;
        self.eof = false;
    }

    fn fill(&mut self, needed: usize) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        self.buf.drain(..self.pos);
        self.buf_at += self.pos as u64;
        self.pos = 0;
        let want = CHUNK.max(needed);
        let more = self
            .storage
            .read_vec(self.id, self.buf_at + self.buf.len() as u64, want)?;
        if more.len() < want {
            self.eof = true;
        }
        let got = !more.is_empty();
        self.buf.extend_from_slice(&more);
        Ok(got)
    }

    /// Decodes what is at the cursor; moves past it if it is a frame.
    pub fn next(&mut self) -> io::Result<Step> {
        loop {
            let at = self.at();
            match decode_frame_with(&self.buf[self.pos..], self.chained) {
                Decoded::Frame(f, n) => {
                    let (seq, ts_us) = (f.seq, f.ts_us);
                    self.last = (self.pos, n);
                    self.pos += n;
                    return Ok(Step::Frame {
                        at,
                        len: n,
                        seq,
                        ts_us,
                    });
                }
                Decoded::Footer(footer) => return Ok(Step::Footer { at, footer }),
                Decoded::Invalid(reason) => return Ok(Step::Invalid { at, reason }),
                Decoded::Incomplete { needed } => {
                    if !self.fill(needed)? {
                        return Ok(if self.pos == self.buf.len() {
                            Step::End { at }
                        } else {
                            Step::Truncated { at }
                        });
                    }
                }
            }
        }
    }

    /// The whole encoded frame the last [`Step::Frame`] returned.
    pub fn last_bytes(&self) -> &[u8] {
        &self.buf[self.last.0..self.last.0 + self.last.1]
    }

    /// The fields of the frame the last [`Step::Frame`] returned.
    pub fn last_frame(&self) -> RawFrame<'_> {
        let b = self.last_bytes();
        let mac_len = if self.chained { MAC_LEN } else { 0 };
        let u64_at = |at: usize| crate::format::u64_at(b, at);
        RawFrame {
            seq: u64_at(crate::format::FRAME_SEQ_OFFSET),
            ts_us: u64_at(crate::format::FRAME_TS_OFFSET),
            mac: self
                .chained
                .then(|| &b[FRAME_HEADER_LEN..FRAME_HEADER_LEN + MAC_LEN]),
            payload: &b[FRAME_HEADER_LEN + mac_len..],
        }
    }

    /// Reads `from..to` of the segment (short at its end; `None`: to the end).
    pub fn read_range(&self, from: u64, to: Option<u64>) -> io::Result<Vec<u8>> {
        if let Some(to) = to {
            return self
                .storage
                .read_vec(self.id, from, to.saturating_sub(from) as usize);
        }
        let mut out = Vec::new();
        loop {
            let b = self
                .storage
                .read_vec(self.id, from + out.len() as u64, CHUNK)?;
            let short = b.len() < CHUNK;
            out.extend_from_slice(&b);
            if short {
                return Ok(out);
            }
        }
    }

    /// Looks for the first intact frame after offset `after` whose sequence number is
    /// above `last_seq` (a frame a writer appended later than the damaged one). Returns
    /// its offset and sequence number and leaves the cursor on it, or `None` (the cursor
    /// is then at the end).
    pub fn resync(&mut self, after: u64, last_seq: u64) -> io::Result<Option<(u64, u64)>> {
        let rest = self.read_range(after, None)?;
        let found = find_frame_after(&rest, after, last_seq, self.chained);
        self.seek(found.map_or(after + rest.len() as u64, |(o, _)| o));
        if found.is_none() {
            self.eof = true;
        }
        Ok(found)
    }
}

/// In `bytes` (which start at file offset `at`), the first intact frame after `at`
/// whose sequence number is above `last_seq`: its offset and sequence number.
pub(crate) fn find_frame_after(
    bytes: &[u8],
    at: u64,
    last_seq: u64,
    chained: bool,
) -> Option<(u64, u64)> {
    let hdr = FRAME_HEADER_LEN + if chained { MAC_LEN } else { 0 };
    let mut i = 1usize;
    while i + hdr <= bytes.len() {
        let b = &bytes[i..];
        let len = crate::format::u32_at(b, 0);
        let seq = crate::format::u64_at(b, crate::format::FRAME_SEQ_OFFSET);
        // Cheap checks first: a plausible length and a later sequence number.
        if len <= MAX_PAYLOAD_LEN
            && seq > last_seq
            && seq - last_seq < (1 << 32)
            && hdr + len as usize <= b.len()
            && matches!(decode_frame_with(b, chained), Decoded::Frame(..))
        {
            return Some((at + i as u64, seq));
        }
        i += 1;
    }
    None
}

/// Whether `bytes` (the damaged span, starting at file offset `at` where the first bad
/// frame starts) bear the mark of a write that never reached the disk: a whole
/// sector-aligned run of zeros (etcd's torn-write test), or zeros from `at` up to the
/// next sector boundary (the rest of a page whose earlier part was synced before, which
/// a power cut reverts to its durable content: zeros in new or preallocated space). An
/// intact frame never starts with zeros up to a sector boundary, and a flipped bit does
/// not make one.
pub(crate) fn has_zero_sector(bytes: &[u8], at: u64) -> bool {
    let boundary = (at / SECTOR + 1) * SECTOR;
    let head = (boundary - at) as usize;
    if head <= bytes.len() && bytes[..head].iter().all(|&b| b == 0) {
        return true;
    }
    let first = at.div_ceil(SECTOR) * SECTOR;
    let mut s = first;
    while s + SECTOR <= at + bytes.len() as u64 {
        let i = (s - at) as usize;
        if bytes[i..i + SECTOR as usize].iter().all(|&b| b == 0) {
            return true;
        }
        s += SECTOR;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_frame, SegmentFooter};
    use crate::Memory;

    /// A segment body (no header) of `n` frames from `at` 32, and the frame offsets.
    fn segment(n: u64) -> (Memory, Vec<u64>) {
        let mem = Memory::new();
        mem.create_segment(1).unwrap();
        let mut b = vec![7u8; 32];
        let mut offs = Vec::new();
        for seq in 1..=n {
            offs.push(b.len() as u64);
            encode_frame(&mut b, seq, seq * 10, format!("payload {seq}").as_bytes());
        }
        offs.push(b.len() as u64);
        mem.write_at(1, 0, &b).unwrap();
        (mem, offs)
    }

    #[test]
    fn walks_frames_then_ends() {
        let (mem, offs) = segment(5);
        let mut c = FrameCursor::new(&mem, 1, 32, false);
        for seq in 1..=5 {
            match c.next().unwrap() {
                Step::Frame { at, seq: s, .. } => {
                    assert_eq!((at, s), (offs[seq as usize - 1], seq));
                    assert_eq!(c.last_frame().payload, format!("payload {seq}").as_bytes());
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(c.next().unwrap(), Step::End { at: offs[5] });
        // A footer is reported, and the cursor stays on it.
        let f = SegmentFooter {
            last_seq: 5,
            count: 5,
            last_ts_us: 50,
            body_crc: 1,
        };
        mem.write_at(1, offs[5], &f.encode()).unwrap();
        let mut c = FrameCursor::new(&mem, 1, offs[5], false);
        assert_eq!(
            c.next().unwrap(),
            Step::Footer {
                at: offs[5],
                footer: f
            }
        );
        assert_eq!(c.at(), offs[5]);
    }

    #[test]
    fn truncated_invalid_and_resync() {
        let (mem, offs) = segment(6);
        // Cut inside the last frame.
        let all = mem.segment_bytes(1).unwrap();
        mem.set_segment_bytes(1, all[..offs[6] as usize - 3].to_vec());
        let mut c = FrameCursor::new(&mem, 1, offs[5], false);
        assert_eq!(c.next().unwrap(), Step::Truncated { at: offs[5] });
        // Damage in frame 3: invalid there; resync finds frame 4.
        let mut b = all.clone();
        b[offs[2] as usize + 9] ^= 0x40;
        mem.set_segment_bytes(1, b);
        let mut c = FrameCursor::new(&mem, 1, offs[2], false);
        assert!(matches!(c.next().unwrap(), Step::Invalid { at, .. } if at == offs[2]));
        assert_eq!(c.resync(offs[2], 2).unwrap(), Some((offs[3], 4)));
        assert!(matches!(c.next().unwrap(), Step::Frame { seq: 4, .. }));
        // Nothing later than 6: no resync point.
        let mut c = FrameCursor::new(&mem, 1, offs[2], false);
        assert_eq!(c.resync(offs[2], 6).unwrap(), None);
    }

    #[test]
    fn zero_sectors_mark_lost_writes() {
        // A whole aligned zero sector.
        let mut b = vec![1u8; 2000];
        b[512..1024].iter_mut().for_each(|x| *x = 0);
        assert!(has_zero_sector(&b, 0));
        // Zeros from the start of the span to the next sector boundary.
        let mut b = vec![1u8; 600];
        b[..12].iter_mut().for_each(|x| *x = 0);
        assert!(has_zero_sector(&b, 500));
        // A flipped bit, or zeros that do not reach a boundary, are not.
        let mut b = vec![1u8; 600];
        b[3] = 0;
        assert!(!has_zero_sector(&b, 500));
        assert!(!has_zero_sector(&[0u8; 100], 1));
    }
}
