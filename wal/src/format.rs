//! The on-disk format, byte by byte. `docs/format.md` is the prose version of this
//! module; every offset and size there has a named constant here. All integers are
//! little-endian.
//!
//! ```text
//! segment  := header frame* footer?
//! header   := MAGIC(8) version:u16 flags:u16 base_seq:u64 created_us:u64 crc:u32      (32 bytes)
//!             chain_ext?                            (56 bytes, when flags has FLAG_CHAINED)
//! chain_ext:= key_fp[8] prev_key_fp[8] seed_mac[32] crc:u32 reserved:u32
//! frame    := len:u32 crc:u32 seq:u64 ts_us:u64 mac[32]? payload[len]     (24 (+32) + len)
//! footer   := FOOTER_MARKER:u32 crc:u32 FOOTER_MAGIC(8) last_seq:u64 count:u64
//!             last_ts_us:u64 body_crc:u32 reserved:u32                                (48 bytes)
//! ```
//!
//! * header `crc` is CRC-32 (IEEE, crc32fast) over header bytes `0..28`.
//! * frame `crc` covers the `len` field, then `seq` and `ts_us`, then (in chained
//!   segments) the `mac`, then the payload.
//! * in chained segments `mac = HMAC-SHA256(key, prev_mac || seq || ts_us || payload)`,
//!   where `prev_mac` is the previous frame's mac, or the header's `seed_mac` for the
//!   first frame of a segment.
//! * footer `crc` covers footer bytes `8..48`; `body_crc` covers every byte of the
//!   segment before the footer.
//! * A frame whose `len` is [`FOOTER_MARKER`] is the footer: the segment is sealed.

use crate::error::Error;

/// First 8 bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"WALSPOOL";
/// The format version this build writes. Version 2 added the optional HMAC chain
/// ([`FLAG_CHAINED`]); an unchained version-2 segment is laid out exactly as version 1.
/// Version 3 added [`FLAG_SCHEMA`]: every payload starts with its record's schema version.
pub const FORMAT_VERSION: u16 = 3;
/// Oldest format version this build can read.
pub const MIN_READ_VERSION: u16 = 1;

/// Size of the fixed segment header (the whole header of an unchained segment).
pub const HEADER_LEN: usize = 32;
/// Header flag: frames carry an HMAC-SHA256 chain (version 2+).
pub const FLAG_CHAINED: u16 = 1;
/// Header flag (version 3+): every frame's payload starts with one byte, the schema
/// version of its record (1..=255, see [`crate::schema`]); the encoded record follows.
/// Payloads of segments without it are records of schema version 1.
pub const FLAG_SCHEMA: u16 = 2;
/// Size of the chain extension that follows the fixed header in chained segments.
pub const CHAIN_EXT_LEN: usize = 56;
/// Largest header: fixed part plus chain extension. Read this many bytes to decode any header.
pub const HEADER_MAX_LEN: usize = HEADER_LEN + CHAIN_EXT_LEN;
/// Size of a frame's MAC in chained segments.
pub const MAC_LEN: usize = 32;
/// Offset of the version field in the header.
pub const HEADER_VERSION_OFFSET: usize = 8;
/// Offset of the flags field in the header.
pub const HEADER_FLAGS_OFFSET: usize = 10;
/// Offset of the base sequence number in the header.
pub const HEADER_BASE_SEQ_OFFSET: usize = 12;
/// Offset of the creation timestamp (µs since the Unix epoch) in the header.
pub const HEADER_CREATED_OFFSET: usize = 20;
/// Offset of the header CRC.
pub const HEADER_CRC_OFFSET: usize = 28;

/// Size of a frame header (before the payload).
pub const FRAME_HEADER_LEN: usize = 24;
/// Offset of the payload length in a frame.
pub const FRAME_LEN_OFFSET: usize = 0;
/// Offset of the CRC in a frame.
pub const FRAME_CRC_OFFSET: usize = 4;
/// Offset of the sequence number in a frame.
pub const FRAME_SEQ_OFFSET: usize = 8;
/// Offset of the timestamp in a frame.
pub const FRAME_TS_OFFSET: usize = 16;
/// Largest payload a frame may carry (64 MiB).
pub const MAX_PAYLOAD_LEN: u32 = 64 << 20;

/// Value of the `len` field that marks the footer of a sealed segment.
pub const FOOTER_MARKER: u32 = u32::MAX;
/// Magic inside the footer.
pub const FOOTER_MAGIC: [u8; 8] = *b"WSPLSEAL";
/// Size of the footer.
pub const FOOTER_LEN: usize = 48;

/// Extension of segment files on `LocalDisk` (the name is the base sequence, 20 digits).
pub const SEGMENT_EXT: &str = "wal";

/// The segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version the segment was written with.
    pub version: u16,
    /// Flags (none defined in version 1; must be zero).
    pub flags: u16,
    /// Sequence number of the first record this segment holds (or would hold).
    pub base_seq: u64,
    /// Creation time, µs since the Unix epoch.
    pub created_us: u64,
    /// The HMAC chain state at the start of the segment (chained segments only).
    pub chain: Option<ChainHeader>,
}

/// The chain extension of a chained segment's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHeader {
    /// Fingerprint of the key the segment's frames are MACed with (first 8 bytes of
    /// SHA-256 of the key).
    pub key_fp: [u8; 8],
    /// Fingerprint of the previous segment's key when the key was rotated at this
    /// segment, zero otherwise.
    pub prev_key_fp: [u8; 8],
    /// `prev_mac` for the first frame: the previous segment's last MAC (zero for the
    /// first segment of a WAL), or, after a key rotation,
    /// `HMAC-SHA256(old_key, last_mac || "walspool-rotate" || key_fp)`.
    pub seed: [u8; 32],
}

impl SegmentHeader {
    /// Bytes of header before the first frame: where the first frame starts.
    pub fn data_offset(&self) -> usize {
        if self.chain.is_some() {
            HEADER_MAX_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Whether frames carry MACs.
    pub fn is_chained(&self) -> bool {
        self.chain.is_some()
    }

    /// Whether payloads start with their record's schema version ([`FLAG_SCHEMA`]).
    pub fn has_schema(&self) -> bool {
        self.flags & FLAG_SCHEMA != 0
    }

    /// Encodes the header (32 bytes, or 88 when chained).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.data_offset()];
        b[0..8].copy_from_slice(&MAGIC);
        b[HEADER_VERSION_OFFSET..HEADER_VERSION_OFFSET + 2]
            .copy_from_slice(&self.version.to_le_bytes());
        let flags = self.flags
            | if self.chain.is_some() {
                FLAG_CHAINED
            } else {
                0
            };
        b[HEADER_FLAGS_OFFSET..HEADER_FLAGS_OFFSET + 2].copy_from_slice(&flags.to_le_bytes());
        b[HEADER_BASE_SEQ_OFFSET..HEADER_BASE_SEQ_OFFSET + 8]
            .copy_from_slice(&self.base_seq.to_le_bytes());
        b[HEADER_CREATED_OFFSET..HEADER_CREATED_OFFSET + 8]
            .copy_from_slice(&self.created_us.to_le_bytes());
        let crc = crc32fast::hash(&b[..HEADER_CRC_OFFSET]);
        b[HEADER_CRC_OFFSET..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        if let Some(c) = &self.chain {
            let x = HEADER_LEN;
            b[x..x + 8].copy_from_slice(&c.key_fp);
            b[x + 8..x + 16].copy_from_slice(&c.prev_key_fp);
            b[x + 16..x + 48].copy_from_slice(&c.seed);
            let crc = crc32fast::hash(&b[x..x + 48]);
            b[x + 48..x + 52].copy_from_slice(&crc.to_le_bytes());
        }
        b
    }

    /// Decodes and checks a header. `segment` names the segment in errors.
    pub fn decode(b: &[u8], segment: &str) -> Result<Self, Error> {
        let corrupt = |reason: &str| Error::Corrupt {
            segment: segment.to_string(),
            offset: 0,
            reason: reason.to_string(),
        };
        if b.len() < HEADER_LEN {
            return Err(corrupt("segment header is truncated"));
        }
        if b[0..8] != MAGIC {
            return Err(corrupt("bad magic: not a walspool segment"));
        }
        let stored = u32_at(b, HEADER_CRC_OFFSET);
        if crc32fast::hash(&b[..HEADER_CRC_OFFSET]) != stored {
            return Err(corrupt("segment header CRC mismatch"));
        }
        let version = u16::from_le_bytes([b[HEADER_VERSION_OFFSET], b[HEADER_VERSION_OFFSET + 1]]);
        if !(MIN_READ_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(Error::UnsupportedVersion {
                segment: segment.to_string(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let flags = u16::from_le_bytes([b[HEADER_FLAGS_OFFSET], b[HEADER_FLAGS_OFFSET + 1]]);
        let known = match version {
            1 => 0,
            2 => FLAG_CHAINED,
            _ => FLAG_CHAINED | FLAG_SCHEMA,
        };
        if flags & !known != 0 {
            return Err(corrupt("unknown segment flags"));
        }
        let chain = if flags & FLAG_CHAINED != 0 {
            if b.len() < HEADER_MAX_LEN {
                return Err(corrupt("chained segment header is truncated"));
            }
            let x = HEADER_LEN;
            if crc32fast::hash(&b[x..x + 48]) != u32_at(b, x + 48) {
                return Err(corrupt("chain header CRC mismatch"));
            }
            let mut c = ChainHeader {
                key_fp: [0; 8],
                prev_key_fp: [0; 8],
                seed: [0; 32],
            };
            c.key_fp.copy_from_slice(&b[x..x + 8]);
            c.prev_key_fp.copy_from_slice(&b[x + 8..x + 16]);
            c.seed.copy_from_slice(&b[x + 16..x + 48]);
            Some(c)
        } else {
            None
        };
        Ok(SegmentHeader {
            version,
            flags: flags & !FLAG_CHAINED,
            base_seq: u64_at(b, HEADER_BASE_SEQ_OFFSET),
            created_us: u64_at(b, HEADER_CREATED_OFFSET),
            chain,
        })
    }
}

/// How many header bytes to read to decode the header that starts with `fixed` (the
/// first [`HEADER_LEN`] bytes): [`HEADER_MAX_LEN`] for a chained segment, else `HEADER_LEN`.
pub fn header_len_from_fixed(fixed: &[u8]) -> usize {
    if fixed.len() >= HEADER_LEN
        && u16::from_le_bytes([
            fixed[HEADER_VERSION_OFFSET],
            fixed[HEADER_VERSION_OFFSET + 1],
        ]) >= 2
        && u16::from_le_bytes([fixed[HEADER_FLAGS_OFFSET], fixed[HEADER_FLAGS_OFFSET + 1]])
            & FLAG_CHAINED
            != 0
    {
        HEADER_MAX_LEN
    } else {
        HEADER_LEN
    }
}

/// The footer of a sealed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentFooter {
    /// Sequence number of the last record in the segment.
    pub last_seq: u64,
    /// Number of records in the segment.
    pub count: u64,
    /// Timestamp of the last record, µs since the Unix epoch.
    pub last_ts_us: u64,
    /// CRC-32 of every byte of the segment before the footer.
    pub body_crc: u32,
}

impl SegmentFooter {
    /// Encodes the footer.
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[0..4].copy_from_slice(&FOOTER_MARKER.to_le_bytes());
        b[8..16].copy_from_slice(&FOOTER_MAGIC);
        b[16..24].copy_from_slice(&self.last_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.count.to_le_bytes());
        b[32..40].copy_from_slice(&self.last_ts_us.to_le_bytes());
        b[40..44].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[8..FOOTER_LEN]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a footer; `None` when the bytes are not a valid footer.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < FOOTER_LEN || u32_at(b, 0) != FOOTER_MARKER || b[8..16] != FOOTER_MAGIC {
            return None;
        }
        if crc32fast::hash(&b[8..FOOTER_LEN]) != u32_at(b, 4) {
            return None;
        }
        Some(SegmentFooter {
            last_seq: u64_at(b, 16),
            count: u64_at(b, 24),
            last_ts_us: u64_at(b, 32),
            body_crc: u32_at(b, 40),
        })
    }
}

/// Appends one frame (of an unchained segment) to `buf`.
pub fn encode_frame(buf: &mut Vec<u8>, seq: u64, ts_us: u64, payload: &[u8]) {
    encode_frame_with(buf, seq, ts_us, None, payload)
}

/// Appends one frame to `buf`; `mac` is `Some` in chained segments.
///
/// The frame is written in place and its CRC computed over the bytes as they lie in
/// `buf` (the `len` field, then `seq` to the end of the payload in one pass), so the
/// payload is read once, not copied after a separate CRC pass.
pub fn encode_frame_with(
    buf: &mut Vec<u8>,
    seq: u64,
    ts_us: u64,
    mac: Option<&[u8; MAC_LEN]>,
    payload: &[u8],
) {
    let len = payload.len() as u32;
    buf.reserve(FRAME_HEADER_LEN + MAC_LEN + payload.len());
    let start = buf.len();
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&ts_us.to_le_bytes());
    if let Some(m) = mac {
        buf.extend_from_slice(m);
    }
    buf.extend_from_slice(payload);
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[start + FRAME_LEN_OFFSET..start + FRAME_CRC_OFFSET]);
    h.update(&buf[start + FRAME_SEQ_OFFSET..]);
    let crc = h.finalize();
    buf[start + FRAME_CRC_OFFSET..start + FRAME_SEQ_OFFSET].copy_from_slice(&crc.to_le_bytes());
}

/// Appends one frame without its CRC (and, when `chained`, with a zeroed MAC slot):
/// [`seal_frames`] fills them in before the frame is written. Lets appenders queue
/// frames with a copy only, leaving the CRC and MAC passes to the writer thread.
pub(crate) fn encode_frame_unsealed(
    buf: &mut Vec<u8>,
    seq: u64,
    ts_us: u64,
    chained: bool,
    payload: &[u8],
) {
    let len = payload.len() as u32;
    buf.reserve(FRAME_HEADER_LEN + MAC_LEN + payload.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&ts_us.to_le_bytes());
    if chained {
        buf.extend_from_slice(&[0; MAC_LEN]);
    }
    buf.extend_from_slice(payload);
}

/// Computes a frame's MAC from `(seq, ts_us, payload)`, extending the HMAC chain.
pub(crate) type MacFn<'a> = &'a mut dyn FnMut(u64, u64, &[u8]) -> [u8; MAC_LEN];

/// Fills in the CRC (and, when `mac` is given, the MAC first) of every frame in `buf`,
/// a run of whole frames from [`encode_frame_unsealed`]. `mac(seq, ts_us, payload)`
/// is called in frame order (the HMAC chain).
pub(crate) fn seal_frames(buf: &mut [u8], mut mac: Option<MacFn<'_>>) {
    let mac_len = if mac.is_some() { MAC_LEN } else { 0 };
    let mut at = 0;
    while at < buf.len() {
        let len = u32_at(buf, at + FRAME_LEN_OFFSET) as usize;
        let end = at + FRAME_HEADER_LEN + mac_len + len;
        let f = &mut buf[at..end];
        if let Some(m) = mac.as_mut() {
            let seq = u64_at(f, FRAME_SEQ_OFFSET);
            let ts = u64_at(f, FRAME_TS_OFFSET);
            let (head, payload) = f.split_at_mut(FRAME_HEADER_LEN + MAC_LEN);
            head[FRAME_HEADER_LEN..].copy_from_slice(&m(seq, ts, payload));
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&f[FRAME_LEN_OFFSET..FRAME_CRC_OFFSET]);
        h.update(&f[FRAME_SEQ_OFFSET..]);
        let crc = h.finalize();
        f[FRAME_CRC_OFFSET..FRAME_SEQ_OFFSET].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

/// The CRC an unchained frame carries.
pub fn frame_crc(len: u32, seq: u64, ts_us: u64, payload: &[u8]) -> u32 {
    frame_crc_with(len, seq, ts_us, None, payload)
}

/// The CRC a frame carries (`mac` in chained segments).
pub fn frame_crc_with(len: u32, seq: u64, ts_us: u64, mac: Option<&[u8]>, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(&ts_us.to_le_bytes());
    if let Some(m) = mac {
        h.update(m);
    }
    h.update(payload);
    h.finalize()
}

/// One decoded frame, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame<'a> {
    /// Sequence number.
    pub seq: u64,
    /// Timestamp, µs since the Unix epoch.
    pub ts_us: u64,
    /// The postcard-encoded record.
    pub payload: &'a [u8],
    /// The frame's HMAC (chained segments only).
    pub mac: Option<&'a [u8]>,
}

/// What [`decode_frame`] found at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid frame and its total encoded length.
    Frame(RawFrame<'a>, usize),
    /// A valid footer: the segment is sealed.
    Footer(SegmentFooter),
    /// The buffer ends before the frame does; `needed` bytes would be required in total.
    Incomplete {
        /// Total bytes the frame needs from its start.
        needed: usize,
    },
    /// The bytes are not a valid frame.
    Invalid(&'static str),
}

/// Decodes the frame at the start of `b` in an unchained segment. Never panics,
/// whatever the bytes.
pub fn decode_frame(b: &[u8]) -> Decoded<'_> {
    decode_frame_with(b, false)
}

/// Decodes the frame at the start of `b`; `chained` says whether the segment's frames
/// carry MACs ([`SegmentHeader::is_chained`]). Never panics, whatever the bytes.
pub fn decode_frame_with(b: &[u8], chained: bool) -> Decoded<'_> {
    if b.len() < 4 {
        return Decoded::Incomplete {
            needed: FRAME_HEADER_LEN,
        };
    }
    let len = u32_at(b, FRAME_LEN_OFFSET);
    if len == FOOTER_MARKER {
        if b.len() < FOOTER_LEN {
            return Decoded::Incomplete { needed: FOOTER_LEN };
        }
        return match SegmentFooter::decode(&b[..FOOTER_LEN]) {
            Some(f) => Decoded::Footer(f),
            None => Decoded::Invalid("footer CRC mismatch"),
        };
    }
    if len > MAX_PAYLOAD_LEN {
        return Decoded::Invalid("frame length out of range");
    }
    let mac_len = if chained { MAC_LEN } else { 0 };
    let total = FRAME_HEADER_LEN + mac_len + len as usize;
    if b.len() < total {
        return Decoded::Incomplete { needed: total };
    }
    let crc = u32_at(b, FRAME_CRC_OFFSET);
    let seq = u64_at(b, FRAME_SEQ_OFFSET);
    let ts_us = u64_at(b, FRAME_TS_OFFSET);
    let mac = chained.then(|| &b[FRAME_HEADER_LEN..FRAME_HEADER_LEN + MAC_LEN]);
    let payload = &b[FRAME_HEADER_LEN + mac_len..total];
    if frame_crc_with(len, seq, ts_us, mac, payload) != crc {
        return Decoded::Invalid("frame CRC mismatch");
    }
    Decoded::Frame(
        RawFrame {
            seq,
            ts_us,
            payload,
            mac,
        },
        total,
    )
}

/// Splits a frame's payload into the record's schema version and its encoded bytes.
/// `has_schema` is [`SegmentHeader::has_schema`] of the frame's segment; without it the
/// version is [`DEFAULT_SCHEMA_VERSION`](crate::schema::DEFAULT_SCHEMA_VERSION). `None`
/// for an empty payload in a segment with versions (not a valid record).
pub fn split_schema(has_schema: bool, payload: &[u8]) -> Option<(u8, &[u8])> {
    if !has_schema {
        return Some((crate::schema::DEFAULT_SCHEMA_VERSION, payload));
    }
    let (&v, rest) = payload.split_first()?;
    (v != 0).then_some((v, rest))
}

/// The name a segment has on disk: its base sequence, zero-padded to 20 digits.
pub fn segment_file_name(base_seq: u64) -> String {
    format!("{base_seq:020}.{SEGMENT_EXT}")
}

/// Parses a segment file name back into its base sequence.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SEGMENT_EXT)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_place_crc_matches_frame_crc() {
        let mac = [0xA5u8; MAC_LEN];
        for m in [None, Some(&mac)] {
            for n in [0usize, 1, 5, 63, 64, 257, 4099] {
                let payload: Vec<u8> = (0..n).map(|i| (i * 31 + 7) as u8).collect();
                let mut buf = vec![9u8; 3];
                encode_frame_with(&mut buf, 42, 1234, m, &payload);
                let f = &buf[3..];
                let want = frame_crc_with(n as u32, 42, 1234, m.map(|x| &x[..]), &payload);
                assert_eq!(u32_at(f, FRAME_CRC_OFFSET), want);
                assert_eq!(u32_at(f, FRAME_LEN_OFFSET), n as u32);
                assert_eq!(f.len(), FRAME_HEADER_LEN + m.map_or(0, |_| MAC_LEN) + n);
            }
        }
    }

    #[test]
    fn sealed_frames_match_encoded_frames() {
        let key = [3u8; MAC_LEN];
        for chained in [false, true] {
            let mut want = Vec::new();
            let mut got = Vec::new();
            let mut prev = [0u8; MAC_LEN];
            for (i, n) in [0usize, 1, 63, 257, 4099].into_iter().enumerate() {
                let payload: Vec<u8> = (0..n).map(|k| (k * 13 + i) as u8).collect();
                let (seq, ts) = (100 + i as u64, 5000 + i as u64);
                // A stand-in chain: any function of (prev, seq, ts, payload).
                let mut m = prev;
                for (k, b) in payload.iter().chain(&seq.to_le_bytes()).enumerate() {
                    m[k % MAC_LEN] ^= b.wrapping_add(key[k % MAC_LEN]).wrapping_add(ts as u8);
                }
                prev = m;
                encode_frame_with(&mut want, seq, ts, chained.then_some(&m), &payload);
                encode_frame_unsealed(&mut got, seq, ts, chained, &payload);
            }
            let mut prev = [0u8; MAC_LEN];
            let mut f = |seq: u64, ts: u64, payload: &[u8]| {
                let mut m = prev;
                for (k, b) in payload.iter().chain(&seq.to_le_bytes()).enumerate() {
                    m[k % MAC_LEN] ^= b.wrapping_add(key[k % MAC_LEN]).wrapping_add(ts as u8);
                }
                prev = m;
                m
            };
            let mac: Option<MacFn<'_>> = if chained { Some(&mut f) } else { None };
            seal_frames(&mut got, mac);
            assert_eq!(got, want, "chained {chained}");
        }
    }

    #[test]
    fn frame_round_trip() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, 99, b"hello");
        match decode_frame(&buf) {
            Decoded::Frame(f, n) => {
                assert_eq!(
                    (f.seq, f.ts_us, f.payload, n),
                    (7, 99, &b"hello"[..], buf.len())
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        for cut in 0..buf.len() {
            assert!(
                matches!(decode_frame(&buf[..cut]), Decoded::Incomplete { .. }),
                "cut {cut}"
            );
        }
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(decode_frame(&b), Decoded::Frame(..)),
                "bit {bit} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn header_and_footer_round_trip() {
        let h = SegmentHeader {
            version: FORMAT_VERSION,
            flags: 0,
            base_seq: 42,
            created_us: 5,
            chain: None,
        };
        assert_eq!(SegmentHeader::decode(&h.encode(), "s").unwrap(), h);
        let chained = SegmentHeader {
            chain: Some(ChainHeader {
                key_fp: [1; 8],
                prev_key_fp: [0; 8],
                seed: [7; 32],
            }),
            ..h
        };
        let enc = chained.encode();
        assert_eq!(enc.len(), HEADER_MAX_LEN);
        assert_eq!(SegmentHeader::decode(&enc, "s").unwrap(), chained);
        let mut torn = enc.clone();
        torn[HEADER_LEN + 20] ^= 1;
        assert!(SegmentHeader::decode(&torn, "s").is_err());
        assert!(SegmentHeader::decode(&enc[..HEADER_LEN], "s").is_err());
        let mut f = Vec::new();
        encode_frame_with(&mut f, 3, 4, Some(&[9; MAC_LEN]), b"pay");
        match decode_frame_with(&f, true) {
            Decoded::Frame(fr, n) => {
                assert_eq!((fr.seq, fr.payload, n), (3, &b"pay"[..], f.len()));
                assert_eq!(fr.mac, Some(&[9u8; MAC_LEN][..]));
            }
            other => panic!("{other:?}"),
        }
        assert!(!matches!(decode_frame_with(&f, false), Decoded::Frame(..)));
        let mut bad = h.encode();
        bad[HEADER_VERSION_OFFSET] = 9;
        let fixed_crc = crc32fast::hash(&bad[..HEADER_CRC_OFFSET]);
        bad[HEADER_CRC_OFFSET..].copy_from_slice(&fixed_crc.to_le_bytes());
        assert!(matches!(
            SegmentHeader::decode(&bad, "s"),
            Err(Error::UnsupportedVersion { found: 9, .. })
        ));
        let f = SegmentFooter {
            last_seq: 9,
            count: 3,
            last_ts_us: 1,
            body_crc: 77,
        };
        assert_eq!(SegmentFooter::decode(&f.encode()), Some(f));
        assert_eq!(parse_segment_file_name(&segment_file_name(12)), Some(12));
        assert_eq!(parse_segment_file_name("x.wal"), None);
    }
}
