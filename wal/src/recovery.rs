//! Recovery on open, and the durable end of the log.
//!
//! # What recovery can tell apart
//!
//! A torn write can only damage bytes written after the last completed fdatasync. The
//! WAL therefore keeps a **recovery point** in `meta/end` ([`LogEnd`]): a position in the
//! tail segment and a sequence number that are known to be durable. The housekeeping
//! thread moves it forward after fdatasyncs (at most every stats interval, and at least
//! once a second), the writer sets it exactly on a clean close, and recovery rewrites it
//! after every open. With an HMAC key it carries a MAC, so it cannot be forged or moved
//! back without the key.
//!
//! Scanning the tail segment, the first frame that is not intact at offset `d` is judged:
//!
//! * `d` lies before the recovery point: synced data is damaged — **corruption**.
//! * nothing intact follows it (the rest is zeros, a partial frame or garbage up to the
//!   end): a **torn tail**, cut and counted.
//! * intact frames with later sequence numbers follow, and the damaged span holds a
//!   whole zero sector: a write that never reached the disk while later pages did (out
//!   of order writeback before a power cut). Nothing after it was synced (an fdatasync
//!   covers everything before the synced frame), so it is a torn tail too.
//! * intact frames follow and the damage is not a lost write: **corruption**.
//!
//! Then the recovered end is compared with the recovery point: a log that ends before
//! the sequence number the recovery point names lost its tail (a deleted or shortened
//! newest segment) — also corruption.
//!
//! Corruption is an [`Error::Corrupt`] under [`RecoveryMode::Strict`] naming the segment,
//! the offset and what follows. Under [`RecoveryMode::Lenient`] the damaged records are
//! skipped and counted (`corrupt_skipped_total`), every intact record after them is
//! kept, and the log continues after the highest sequence number that may have been
//! acknowledged, so that no sequence number is ever reused.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::chain::HmacKey;
use crate::cursor::{find_frame_after, has_zero_sector, FrameCursor, Step};
use crate::error::{Error, Result};
use crate::format::{
    decode_frame_with, u32_at, u64_at, ChainHeader, Decoded, SegmentFooter, SegmentHeader,
    FOOTER_LEN, FORMAT_VERSION, FRAME_HEADER_LEN, HEADER_LEN, HEADER_MAX_LEN, MAC_LEN,
};
use crate::options::{Options, RecoveryMode};
use crate::storage::{Storage, StorageExt};
use crate::wal::{new_meta, now_us, SegMeta};

/// Metadata key of the durable end of the log.
pub const META_END: &str = "end";
/// Magic of the `meta/end` record.
pub const END_MAGIC: [u8; 8] = *b"WSPLEND1";
/// Length of the `meta/end` record without a MAC.
pub const END_LEN: usize = 40;
/// Length of the `meta/end` record with a key fingerprint and MAC.
pub const END_MAC_LEN: usize = END_LEN + 8 + MAC_LEN;
/// `meta/end` flag: written by a clean close; the log ends exactly here.
pub const END_CLEAN: u32 = 1;
/// `meta/end` flag: an fdatasync failed after this point; bytes after it were never
/// confirmed durable (after a failed fdatasync Linux may keep them readable in the page
/// cache and lose them later), so recovery cuts them.
pub const END_POISONED: u32 = 2;

/// The durable end of the log as recorded in `meta/end`: every record up to `last_seq`
/// is durable, and the tail segment `base` is durable up to byte `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEnd {
    /// Base sequence number of the segment the position is in.
    pub base: u64,
    /// Byte offset in that segment up to which it is durable.
    pub offset: u64,
    /// Every record up to this sequence number is durable (0: none yet).
    pub last_seq: u64,
    /// [`END_CLEAN`], [`END_POISONED`].
    pub flags: u32,
}

impl LogEnd {
    /// Whether it was written by a clean close.
    pub fn clean(&self) -> bool {
        self.flags & END_CLEAN != 0
    }

    /// Encodes it; with a key, appends the key's fingerprint and a MAC.
    pub fn encode(&self, key: Option<&HmacKey>) -> Vec<u8> {
        let mut b = Vec::with_capacity(END_MAC_LEN);
        b.extend_from_slice(&END_MAGIC);
        b.extend_from_slice(&self.base.to_le_bytes());
        b.extend_from_slice(&self.offset.to_le_bytes());
        b.extend_from_slice(&self.last_seq.to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        if let Some(k) = key {
            b.extend_from_slice(&k.fingerprint());
            let mac = k.mac_end(&b);
            b.extend_from_slice(&mac);
        }
        b
    }

    /// Decodes and checks a `meta/end` record. With keys, a record must carry a MAC by
    /// one of them; `what` names the record in errors.
    pub fn decode(b: &[u8], keys: &[&HmacKey], what: &str) -> Result<LogEnd> {
        let bad = |reason: String| Error::Corrupt {
            segment: what.to_string(),
            offset: 0,
            reason,
        };
        if (b.len() != END_LEN && b.len() != END_MAC_LEN) || b[..8] != END_MAGIC {
            return Err(bad("not a walspool end-of-log record".into()));
        }
        if crc32fast::hash(&b[..END_LEN - 4]) != u32_at(b, END_LEN - 4) {
            return Err(bad("end-of-log record CRC mismatch".into()));
        }
        if !keys.is_empty() {
            if b.len() != END_MAC_LEN {
                return Err(bad(
                    "the end-of-log record carries no MAC but the WAL is HMAC-chained: it was replaced or the tail was cut by someone without the key".into(),
                ));
            }
            let fp = &b[END_LEN..END_LEN + 8];
            let Some(k) = keys.iter().find(|k| k.fingerprint()[..] == fp[..]) else {
                return Err(bad(format!(
                    "the end-of-log record is MACed with key {} which is not among the keys given",
                    crate::chain::hex(fp)
                )));
            };
            if k.mac_end(&b[..END_LEN + 8])[..] != b[END_LEN + 8..] {
                return Err(bad(
                    "end-of-log record MAC mismatch: it was edited or written without the key (a cut-off tail?)".into(),
                ));
            }
        }
        Ok(LogEnd {
            base: u64_at(b, 8),
            offset: u64_at(b, 16),
            last_seq: u64_at(b, 24),
            flags: u32_at(b, 32),
        })
    }
}

/// Reads `meta/end`; `None` for a WAL written before it existed (or a new one).
pub fn read_end<S: Storage + ?Sized>(storage: &S, keys: &[&HmacKey]) -> Result<Option<LogEnd>> {
    let what = format!("{}/meta {META_END}", storage.location());
    match storage
        .get_meta(META_END)
        .map_err(|e| Error::io("read end of log", what.clone(), e))?
    {
        None => Ok(None),
        Some(b) => LogEnd::decode(&b, keys, &what).map(Some),
    }
}

/// Writes `meta/end` (atomically and durably).
pub(crate) fn write_end<S: Storage + ?Sized>(
    storage: &S,
    end: &LogEnd,
    key: Option<&HmacKey>,
) -> Result<()> {
    storage
        .put_meta(META_END, &end.encode(key))
        .map_err(|e| Error::io("write end of log", storage.location(), e))
}

/// One place where the tail segment is damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the first damaged byte (the start of the bad frame).
    pub offset: u64,
    /// What was wrong there.
    pub reason: String,
    /// The first intact later frame (offset and sequence number), if any.
    pub resumes_at: Option<(u64, u64)>,
    /// Intact records found after the damage (counting on from `resumes_at`).
    pub intact_after: u64,
    /// Last intact sequence number before the damage.
    pub last_good_seq: u64,
}

/// What a scan of the tail segment found.
pub(crate) struct TailScan {
    /// Where the next frame goes (after the last kept frame, or after the footer).
    pub offset: u64,
    pub count: u64,
    pub last_seq: u64,
    pub last_ts: u64,
    /// CRC of every byte up to `offset`.
    pub crc: crc32fast::Hasher,
    pub last_mac: Option<[u8; MAC_LEN]>,
    pub footer: Option<SegmentFooter>,
    /// Bytes after `offset` that are neither zeros nor intact: a torn tail.
    pub torn_bytes: u64,
    /// Corruption: in strict mode the first one ends the scan; in lenient mode every
    /// one is skipped and listed.
    pub corrupt: Vec<Damage>,
    /// Sequence numbers skipped over damage (lenient).
    pub skipped: u64,
}

impl TailScan {
    /// An empty scan of the segment `base` right after its header.
    fn start(base: u64, header: SegmentHeader, header_bytes: &[u8]) -> Self {
        let hlen = header.data_offset();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header_bytes[..hlen]);
        TailScan {
            offset: hlen as u64,
            count: 0,
            last_seq: base - 1,
            last_ts: 0,
            crc,
            last_mac: header.chain.map(|c| c.seed),
            footer: None,
            torn_bytes: 0,
            corrupt: Vec::new(),
            skipped: 0,
        }
    }

    /// Keeps the frame the cursor just returned (it ends at `end`).
    fn accept<S: Storage + ?Sized>(
        &mut self,
        cur: &FrameCursor<'_, S>,
        end: u64,
        seq: u64,
        ts_us: u64,
    ) {
        self.crc.update(cur.last_bytes());
        self.last_seq = seq;
        self.last_ts = ts_us;
        self.count += 1;
        if let (Some(m), Some(last)) = (cur.last_frame().mac, self.last_mac.as_mut()) {
            last.copy_from_slice(m);
        }
        self.offset = end;
    }
}

/// Scans the tail segment (read only). `synced_to` is the offset up to which the segment
/// is known to be durable (from the recovery point); damage before it is corruption.
pub(crate) fn scan_tail<S: Storage + ?Sized>(
    storage: &S,
    base: u64,
    header: SegmentHeader,
    header_bytes: &[u8],
    synced_to: u64,
    synced_seq: u64,
    mode: RecoveryMode,
) -> Result<TailScan> {
    let name = storage.segment_name(base);
    let io = |e| Error::io("read", name.clone(), e);
    let hlen = header.data_offset() as u64;
    let mut t = TailScan::start(base, header, header_bytes);
    let mut cur = FrameCursor::new(storage, base, hlen, header.is_chained());
    loop {
        let (at, reason) = match cur.next().map_err(io)? {
            Step::Frame {
                at,
                len,
                seq,
                ts_us,
            } => {
                if seq == t.last_seq + 1 {
                    t.accept(&cur, at + len as u64, seq, ts_us);
                    continue;
                }
                (
                    at,
                    format!("sequence {seq} where {} was expected", t.last_seq + 1),
                )
            }
            Step::Footer { at, footer } => {
                if footer.last_seq == t.last_seq && footer.count == t.count {
                    t.footer = Some(footer);
                    t.offset = at + FOOTER_LEN as u64;
                    break;
                }
                (at, "footer does not match the records before it".into())
            }
            Step::End { at } => {
                if at < synced_to && synced_to != u64::MAX {
                    t.corrupt.push(Damage {
                        offset: at,
                        reason: format!(
                            "the segment ends at byte {at} but it was durable up to byte {synced_to}: records {}..={synced_seq} are missing (cut off?)",
                            t.last_seq + 1
                        ),
                        resumes_at: None,
                        intact_after: 0,
                        last_good_seq: t.last_seq,
                    });
                }
                break;
            }
            Step::Truncated { at } => (at, "the segment ends inside a record".into()),
            Step::Invalid { at, reason } => (at, reason.to_string()),
        };
        // The rest of the segment, read once for every judgement below.
        let rest = cur.read_range(at, None).map_err(io)?;
        let nonzero_end = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        // Preallocated space the writer has not reached yet is zeros: the end of the log.
        if at >= synced_to && nonzero_end == 0 {
            break;
        }
        let next = find_frame_after(&rest, at, t.last_seq, header.is_chained());
        let damaged = &rest[..next.map_or(rest.len(), |(o, _)| (o - at) as usize)];
        let lost_write = next.is_some() && has_zero_sector(damaged, at);
        if at >= synced_to && (next.is_none() || lost_write) {
            // A torn tail: nothing after `at` was ever synced. Trailing zeros of
            // preallocated space are not counted as torn bytes.
            t.torn_bytes = nonzero_end as u64;
            break;
        }
        let mut d = Damage {
            offset: at,
            reason,
            resumes_at: next,
            intact_after: 0,
            last_good_seq: t.last_seq,
        };
        if let Some((o, s)) = next {
            // Count the intact run that follows, for the error message.
            let mut probe = FrameCursor::new(storage, base, o, header.is_chained());
            let mut expect = s;
            while let Step::Frame { seq, .. } = probe.next().map_err(io)? {
                if seq != expect {
                    break;
                }
                d.intact_after += 1;
                expect += 1;
            }
        }
        t.corrupt.push(d);
        let Some((o, s)) = next else { break };
        if mode == RecoveryMode::Strict {
            break;
        }
        // Lenient: skip the damaged bytes (they stay in the body CRC) and go on.
        t.crc.update(damaged);
        t.skipped += s - t.last_seq - 1;
        t.last_seq = s - 1;
        t.offset = o;
        cur.seek(o);
    }
    Ok(t)
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (after sequence {})", self.reason, self.last_good_seq)?;
        if let Some((o, s)) = self.resumes_at {
            write!(
                f,
                "; {} intact record(s) follow from sequence {s} at byte {o}",
                self.intact_after
            )?;
        }
        Ok(())
    }
}

/// The writer's view of the tail after recovery.
pub(crate) struct TailState {
    pub base: u64,
    pub offset: u64,
    pub count: u64,
    pub last_seq: u64,
    pub last_ts: u64,
    pub crc: crc32fast::Hasher,
    pub sealed: bool,
    pub cut_bytes: u64,
    pub created_us: u64,
    pub chain: Option<ChainHeader>,
    pub last_mac: Option<[u8; MAC_LEN]>,
    /// Sequence numbers skipped over corruption (lenient mode).
    pub skipped: u64,
    /// Whether the segment's payloads carry a schema version (`FLAG_SCHEMA`, format 3).
    pub has_schema: bool,
}

/// Recovers the tail segment: judges damage (see the module docs), cuts a torn tail,
/// and fdatasyncs what it keeps. `fresh_chain` gives the chain header to write if the
/// segment's own header turns out to be torn.
pub(crate) fn recover_tail<S: Storage>(
    storage: &S,
    base: u64,
    len: u64,
    end: Option<&LogEnd>,
    mode: RecoveryMode,
    fresh_chain: impl FnOnce() -> Result<Option<ChainHeader>>,
) -> Result<TailState> {
    let name = storage.segment_name(base);
    // How far this segment is known to be durable.
    let synced_to = match end {
        Some(e) if e.base == base => e.offset,
        Some(e) if e.base > base => u64::MAX, // a later segment was durable: this one is whole
        _ => 0,
    };
    let mut hdr = storage
        .read_vec(base, 0, HEADER_LEN)
        .map_err(|e| Error::io("read segment header", name.clone(), e))?;
    if crate::format::header_len_from_fixed(&hdr) > HEADER_LEN {
        hdr = storage
            .read_vec(base, 0, HEADER_MAX_LEN)
            .map_err(|e| Error::io("read segment header", name.clone(), e))?;
    }
    let header = match SegmentHeader::decode(&hdr, &name) {
        Ok(h) => h,
        Err(e @ Error::UnsupportedVersion { .. }) => return Err(e),
        Err(e) => {
            // A torn header can only come from a crash right after the segment was
            // created: nothing after it can be valid yet, and the recovery point cannot
            // be inside it. Anything else is corruption.
            if synced_to <= HEADER_MAX_LEN as u64 && !looks_used(storage, base) {
                storage
                    .truncate(base, 0)
                    .map_err(|e| Error::io("truncate", name.clone(), e))?;
                let mut t = write_header(storage, base, fresh_chain()?)?;
                t.cut_bytes = len;
                return Ok(t);
            }
            let first = storage
                .read_vec(base, HEADER_LEN as u64, FRAME_HEADER_LEN + 64)
                .unwrap_or_default();
            let unchained_frames_follow =
                matches!(
                    decode_frame_with(&first, false),
                    Decoded::Frame(f, _) if f.seq == base
                ) || looks_used_at(storage, base, HEADER_LEN, false, base);
            if mode == RecoveryMode::Lenient && unchained_frames_follow {
                // Lenient: an unchained header holds nothing the frames do not say
                // again (the base is the file name): write it anew, keep the records.
                tracing::error!(segment = %name, error = %e, "lenient recovery: rewriting the damaged header of the tail segment");
                let h = SegmentHeader {
                    version: FORMAT_VERSION,
                    flags: crate::format::FLAG_SCHEMA,
                    base_seq: base,
                    created_us: now_us(),
                    chain: None,
                };
                storage
                    .write_at(base, 0, &h.encode())
                    .map_err(|e| Error::io("write segment header", name.clone(), e))?;
                return recover_tail(storage, base, len, end, mode, fresh_chain);
            }
            return Err(e);
        }
    };
    if header.base_seq != base {
        return Err(Error::Corrupt {
            segment: name,
            offset: 0,
            reason: format!(
                "header says base sequence {} but the file name says {base}",
                header.base_seq
            ),
        });
    }
    let synced_seq = end.map_or(0, |e| e.last_seq);
    let mut scan = scan_tail(storage, base, header, &hdr, synced_to, synced_seq, mode)?;
    if let Some(e) = end.filter(|e| e.base == base && e.flags & END_POISONED != 0) {
        // An fdatasync failed after `e.offset`: what follows was never confirmed durable
        // and may exist only in the page cache. Cut it (nothing after it was acknowledged).
        if scan.offset > e.offset && scan.corrupt.is_empty() {
            let cut = rescan_to(storage, base, header, &hdr, e.offset)?;
            scan.torn_bytes += scan.offset - cut.offset;
            scan = TailScan {
                torn_bytes: scan.torn_bytes,
                ..cut
            };
        }
    }
    if mode == RecoveryMode::Strict {
        if let Some(d) = scan.corrupt.first() {
            return Err(Error::Corrupt {
                segment: name,
                offset: d.offset,
                reason: format!(
                    "{d}. Synced (acknowledged) records are damaged; refusing to cut them. Open with RecoveryMode::Lenient to skip the damaged records and keep the rest, or restore the WAL from its archive"
                ),
            });
        }
    }
    let t = TailState {
        base,
        offset: scan.offset,
        count: scan.count,
        last_seq: scan.last_seq,
        last_ts: scan.last_ts,
        crc: scan.crc,
        sealed: scan.footer.is_some(),
        cut_bytes: scan.torn_bytes,
        created_us: header.created_us,
        chain: header.chain,
        last_mac: scan.last_mac,
        skipped: scan.skipped,
        has_schema: header.has_schema(),
    };
    if !t.sealed {
        let file_len = storage
            .segment_len(base)
            .map_err(|e| Error::io("stat segment", name.clone(), e))?
            .unwrap_or(len);
        if file_len > t.offset {
            storage
                .truncate(base, t.offset)
                .map_err(|e| Error::io("truncate torn tail", name.clone(), e))?;
        }
    }
    // What recovery keeps is handed to readers and consumers as durable, so it must be
    // on disk. Bytes after the recovery point may exist only in the page cache: written
    // but never fsynced (Periodic or Buffered durability, a crash mid-group-commit), or
    // — after a failed fdatasync — marked clean by the kernel without reaching the disk,
    // so that a later fdatasync does not write them. Write them again, then fdatasync.
    // From the recovery point, or from byte 0 — the header too — when the segment was
    // created after it: a header whose fdatasync failed is no more durable than a frame.
    let from = synced_to.min(t.offset);
    if from < t.offset {
        let again = storage
            .read_vec(base, from, (t.offset - from) as usize)
            .map_err(|e| Error::io("read", name.clone(), e))?;
        storage
            .write_at(base, from, &again)
            .map_err(|e| Error::io("rewrite recovered tail", name.clone(), e))?;
    }
    storage
        .sync(base)
        .map_err(|e| Error::io("fdatasync", name, e))?;
    Ok(t)
}

/// Scans the segment again, keeping only frames that end at or before `limit`.
fn rescan_to<S: Storage>(
    storage: &S,
    base: u64,
    header: SegmentHeader,
    hdr: &[u8],
    limit: u64,
) -> Result<TailScan> {
    let name = storage.segment_name(base);
    let hlen = header.data_offset() as u64;
    let mut t = TailScan::start(base, header, hdr);
    let mut cur = FrameCursor::new(storage, base, hlen, header.is_chained());
    while let Step::Frame {
        at,
        len,
        seq,
        ts_us,
    } = cur.next().map_err(|e| Error::io("read", name.clone(), e))?
    {
        if at + len as u64 > limit || seq != t.last_seq + 1 {
            break;
        }
        t.accept(&cur, at + len as u64, seq, ts_us);
    }
    Ok(t)
}

/// Whether an intact frame follows a (bad) header: then the header is not torn by a
/// crash right after creation but damaged, and wiping the segment would lose records.
fn looks_used<S: Storage>(storage: &S, base: u64) -> bool {
    [HEADER_LEN, HEADER_MAX_LEN].iter().any(|&at| {
        [false, true]
            .iter()
            .any(|&chained| looks_used_at(storage, base, at, chained, 0))
    })
}

/// Whether an intact frame (with sequence `seq`, when not 0) starts at `at`.
fn looks_used_at<S: Storage>(storage: &S, base: u64, at: usize, chained: bool, seq: u64) -> bool {
    let mut want = FRAME_HEADER_LEN + MAC_LEN + 64;
    loop {
        let Ok(rest) = storage.read_vec(base, at as u64, want) else {
            return false;
        };
        match decode_frame_with(&rest, chained) {
            Decoded::Frame(f, _) => return seq == 0 || f.seq == seq,
            Decoded::Incomplete { needed } if rest.len() == want && needed > want => want = needed,
            _ => return false,
        }
    }
}

/// Creates a segment with its header (durably); returns the writer's view of it.
pub(crate) fn create_segment<S: Storage>(
    storage: &S,
    base: u64,
    chain: Option<ChainHeader>,
) -> Result<TailState> {
    let name = storage.segment_name(base);
    storage
        .create_segment(base)
        .map_err(|e| Error::io("create segment", name.clone(), e))?;
    write_header(storage, base, chain)
}

/// Writes (or rewrites) a segment's header durably; the segment must be empty.
pub(crate) fn write_header<S: Storage>(
    storage: &S,
    base: u64,
    chain: Option<ChainHeader>,
) -> Result<TailState> {
    let name = storage.segment_name(base);
    let h = SegmentHeader {
        version: FORMAT_VERSION,
        flags: crate::format::FLAG_SCHEMA,
        base_seq: base,
        created_us: now_us(),
        chain,
    };
    let hb = h.encode();
    storage
        .write_at(base, 0, &hb)
        .map_err(|e| Error::io("write segment header", name.clone(), e))?;
    storage
        .sync(base)
        .map_err(|e| Error::io("fdatasync", name, e))?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&hb);
    Ok(TailState {
        base,
        offset: hb.len() as u64,
        count: 0,
        last_seq: base - 1,
        last_ts: 0,
        crc,
        sealed: false,
        cut_bytes: 0,
        created_us: h.created_us,
        chain,
        last_mac: chain.map(|c| c.seed),
        skipped: 0,
        has_schema: h.has_schema(),
    })
}

/// Seals a recovered tail that has records (writes its footer, durably).
pub(crate) fn seal_tail<S: Storage>(storage: &S, t: &mut TailState) -> Result<()> {
    let name = storage.segment_name(t.base);
    let footer = SegmentFooter {
        last_seq: t.last_seq,
        count: t.count,
        last_ts_us: t.last_ts,
        body_crc: t.crc.clone().finalize(),
    };
    storage
        .write_at(t.base, t.offset, &footer.encode())
        .map_err(|e| Error::io("write footer", name.clone(), e))?;
    storage
        .truncate(t.base, t.offset + FOOTER_LEN as u64)
        .map_err(|e| Error::io("truncate", name.clone(), e))?;
    storage
        .sync(t.base)
        .map_err(|e| Error::io("fdatasync", name, e))?;
    t.offset += FOOTER_LEN as u64;
    t.sealed = true;
    Ok(())
}

/// The last MAC of a (sealed) chained segment, by scanning it. Only used in the rare
/// case of a torn header right after a roll.
pub(crate) fn last_mac_of<S: Storage>(
    storage: &S,
    base: u64,
    len: u64,
) -> Result<Option<[u8; MAC_LEN]>> {
    let name = storage.segment_name(base);
    let b = storage
        .read_vec(base, 0, len as usize)
        .map_err(|e| Error::io("read", name.clone(), e))?;
    let h = SegmentHeader::decode(&b[..b.len().min(HEADER_MAX_LEN)], &name)?;
    let Some(c) = h.chain else { return Ok(None) };
    let mut last = c.seed;
    let mut pos = h.data_offset();
    while let Decoded::Frame(f, n) = decode_frame_with(&b[pos..], true) {
        if let Some(m) = f.mac {
            last.copy_from_slice(m);
        }
        pos += n;
    }
    Ok(Some(last))
}

/// The lowest sequence number the next record may get: after everything the recovery
/// point says was durable and after every consumer checkpoint (a sequence number a sink
/// saw is never reused). Returns it and what demands it, when that is beyond the log.
pub(crate) fn floor_next_seq(
    recovered_last: u64,
    end: Option<&LogEnd>,
    consumers: &BTreeMap<String, u64>,
) -> Option<(u64, String)> {
    let mut need: Option<(u64, String)> = None;
    if let Some(e) = end {
        if e.last_seq > recovered_last {
            need = Some((
                e.last_seq,
                format!(
                    "records {}..={} are missing: the log ends at sequence {recovered_last} but its recovery point (meta/end) says {} was durable (the newest segment was deleted or cut short?)",
                    recovered_last + 1,
                    e.last_seq,
                    e.last_seq
                ),
            ));
        }
    }
    for (name, &c) in consumers {
        if c > recovered_last && need.as_ref().is_none_or(|(n, _)| c > *n) {
            need = Some((
                c,
                format!(
                    "consumer {name:?} has committed sequence {c} but the log ends at {recovered_last}: records it has seen are missing"
                ),
            ));
        }
    }
    need
}

/// What [`recover`] hands to `Wal::open`.
pub(crate) struct Recovered {
    /// The writer's view of the tail (a fresh segment when recovery started one).
    pub tail: TailState,
    /// Torn bytes cut.
    pub torn_cut: u64,
    /// Sequence numbers skipped over corruption or a missing tail (lenient).
    pub skipped: u64,
    /// The new recovery point (already written).
    pub end: LogEnd,
}

/// Recovery on open: checks the key against the tail, reads and authenticates the
/// recovery point, recovers the tail segment ([`recover_tail`]), enforces the recovery
/// point and the consumer checkpoints (see the module docs), starts a fresh segment
/// where needed, and writes the new recovery point. `segments` is the listing, updated.
pub(crate) fn recover<S: Storage>(
    storage: &S,
    opts: &Options,
    key: Option<&Arc<HmacKey>>,
    segments: &mut Vec<SegMeta>,
    consumers: &BTreeMap<String, u64>,
) -> Result<Recovered> {
    let key = key.cloned();
    let chain_from = |prev_mac: Option<[u8; MAC_LEN]>| {
        key.as_ref().map(|k| ChainHeader {
            key_fp: k.fingerprint(),
            prev_key_fp: [0; 8],
            seed: prev_mac.unwrap_or([0; MAC_LEN]),
        })
    };
    let strict = opts.recovery == RecoveryMode::Strict;
    // The tail's header says whether the WAL is chained and with which key: check
    // the key first (clear errors), then authenticate the recovery point with it.
    let tail_header = segments.last().and_then(|l| {
        let b = storage.read_vec(l.base, 0, HEADER_MAX_LEN).ok()?;
        SegmentHeader::decode(&b, "").ok()
    });
    let tail_chain = tail_header.and_then(|h| h.chain);
    match (&tail_chain, &key) {
        (Some(c), None) => {
            return Err(Error::Config(format!(
                "this WAL is HMAC-chained (key {}); open it with its key (Options::hmac_key)",
                crate::chain::hex(&c.key_fp)
            )))
        }
        (Some(c), Some(k)) if c.key_fp != k.fingerprint() => {
            return Err(Error::Config(format!(
                "HMAC key mismatch: the WAL's current key is {} but {} was given; to rotate keys, open with the old key and call Wal::rotate_key",
                crate::chain::hex(&c.key_fp),
                k.fingerprint_hex()
            )))
        }
        _ => {}
    }
    // An unchained tail (a WAL that starts its chain now) has an unauthenticated
    // recovery point; a chained one, or one whose header is unreadable, needs the MAC.
    let tail_unchained = tail_header.is_some_and(|h| h.chain.is_none());
    let end_keys: Vec<&HmacKey> = if tail_unchained {
        Vec::new()
    } else {
        key.iter().map(|k| &**k).collect()
    };
    let end = match read_end(storage, &end_keys) {
        Ok(e) => e,
        Err(e) if !strict => {
            tracing::warn!(error = %e, "lenient recovery: ignoring an unreadable end-of-log record");
            None
        }
        Err(e) => return Err(e),
    };
    if end.is_none() && key.is_some() && !segments.is_empty() && !tail_unchained {
        let why = format!(
            "{}/meta {META_END} is missing from an HMAC-chained WAL: a cut-off tail could not be detected (if the WAL was last written by walspool 0.1 before meta/end existed, open it once with RecoveryMode::Lenient)",
            storage.location()
        );
        if strict {
            return Err(Error::Corrupt {
                segment: format!("{}/meta {META_END}", storage.location()),
                offset: 0,
                reason: why,
            });
        }
        tracing::warn!("{why}");
    }
    let mut torn_cut = 0u64;
    let mut skipped = 0u64;
    let tail = match segments.last().cloned() {
        None => {
            // The recovery point first: a crash right after creating the segment
            // then still finds one.
            let initial = LogEnd {
                base: 1,
                offset: 0,
                last_seq: 0,
                flags: 0,
            };
            write_end(storage, &initial, key.as_deref())?;
            let t = create_segment(storage, 1, chain_from(None))?;
            segments.push(new_meta(1, t.offset));
            t
        }
        Some(last) => {
            let prev = segments.len().checked_sub(2).map(|i| segments[i].clone());
            let mut t = recover_tail(
                storage,
                last.base,
                last.bytes,
                end.as_ref(),
                opts.recovery,
                || match &prev {
                    Some(p) if key.is_some() => {
                        Ok(chain_from(last_mac_of(storage, p.base, p.bytes)?))
                    }
                    _ => Ok(chain_from(None)),
                },
            )?;
            torn_cut = t.cut_bytes;
            skipped = t.skipped;
            match (&t.chain, &key) {
                (Some(c), None) => {
                    return Err(Error::Config(format!(
                        "this WAL is HMAC-chained (key {}); open it with its key (Options::hmac_key)",
                        crate::chain::hex(&c.key_fp)
                    )))
                }
                (Some(c), Some(k)) if c.key_fp != k.fingerprint() => {
                    return Err(Error::Config(format!(
                        "HMAC key mismatch: the WAL's current key is {} but {} was given; to rotate keys, open with the old key and call Wal::rotate_key",
                        crate::chain::hex(&c.key_fp),
                        k.fingerprint_hex()
                    )))
                }
                _ => {}
            }
            // Never reuse a sequence number that may have been acknowledged or seen
            // by a consumer: the log must reach the recovery point and every
            // checkpoint.
            let mut next_base = t.last_seq + 1;
            if let Some((need, why)) = floor_next_seq(t.last_seq, end.as_ref(), consumers) {
                if strict {
                    return Err(Error::Corrupt {
                        segment: storage.segment_name(t.base),
                        offset: t.offset,
                        reason: format!(
                            "{why}. Open with RecoveryMode::Lenient to count them as lost and continue after sequence {need}, or restore the WAL from its archive"
                        ),
                    });
                }
                tracing::error!(location = %storage.location(), "lenient recovery: {why}; continuing after sequence {need}");
                skipped += need - t.last_seq;
                next_base = need + 1;
            }
            let idx = segments.len() - 1;
            let restart_chain = !t.sealed && t.chain.is_none() && key.is_some();
            let jump = next_base != t.last_seq + 1;
            if !t.sealed && (restart_chain || jump || t.skipped > 0) {
                if t.count > 0 {
                    // Seal it: what was skipped stays in sealed history, and new
                    // records go to a fresh segment (chained, or after the jump).
                    seal_tail(storage, &mut t)?;
                } else if !jump {
                    storage
                        .truncate(t.base, 0)
                        .map_err(|e| Error::io("truncate", storage.segment_name(t.base), e))?;
                    let cut = t.cut_bytes;
                    t = write_header(storage, t.base, chain_from(None))?;
                    t.cut_bytes = cut;
                }
            }
            segments[idx].bytes = t.offset;
            if t.sealed || jump {
                let fresh = create_segment(storage, next_base, chain_from(t.last_mac))?;
                if t.sealed {
                    segments[idx].sealed = true;
                    segments[idx].last_seq = t.last_seq;
                } else {
                    // An empty tail before the jump: replaced by the new segment.
                    storage.remove_segment(t.base).map_err(|e| {
                        Error::io("remove segment", storage.segment_name(t.base), e)
                    })?;
                    segments.pop();
                }
                segments.push(new_meta(next_base, fresh.offset));
                fresh
            } else {
                segments[idx].created_us = Some(t.created_us);
                t
            }
        }
    };
    if let Err(e) = storage.preallocate(tail.base, opts.segment_size) {
        tracing::debug!(error = %e, "could not preallocate the tail segment");
    }
    if torn_cut > 0 {
        tracing::warn!(
            location = %storage.location(),
            segment = %storage.segment_name(tail.base),
            bytes = torn_cut,
            "cut a torn tail (bytes written after the last fdatasync) at the last good record"
        );
    }
    // The recovered end is the new recovery point.
    let recovered_end = LogEnd {
        base: tail.base,
        offset: tail.offset,
        last_seq: tail.last_seq,
        flags: 0,
    };
    write_end(storage, &recovered_end, key.as_deref())?;
    Ok(Recovered {
        tail,
        torn_cut,
        skipped,
        end: recovered_end,
    })
}
