//! Tamper evidence: a keyed HMAC-SHA256 chain over every record.
//!
//! CRCs catch accidents, not edits: anyone with disk access can change a payload and
//! recompute its CRC. With [`Options::hmac_key`](crate::Options::hmac_key) every frame
//! also carries `mac = HMAC-SHA256(key, prev_mac || seq || ts_us || payload)`, where
//! `prev_mac` is the previous record's MAC. The chain crosses segments: each segment's
//! header records the chain state it starts from (its `seed`), so one segment can be
//! checked on its own, and the seed must equal the previous segment's last MAC, so a
//! removed, reordered or replaced segment breaks the chain. [`verify_chain`] checks it
//! and reports the first broken link with segment, offset and sequence number.
//!
//! The key never lives in the WAL directory: it comes from a file
//! ([`HmacKey::from_file`], refused if the file is inside the WAL's directory) or an
//! environment variable ([`HmacKey::from_env`]).
//!
//! **Key rotation.** Call [`Wal::rotate_key`](crate::Wal::rotate_key) on the running
//! WAL (which holds the old key). It seals the current segment and starts a new one
//! whose header names the new key's fingerprint and the old one's, and whose seed is
//! `HMAC-SHA256(old_key, last_mac || "walspool-rotate" || new_fingerprint)`: the old key
//! authenticates the change. Keep the old key for verification: `walspool verify
//! --key-file` accepts several key files. Then configure the new key for later opens.

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::format::{decode_frame_with, Decoded, SegmentHeader, HEADER_MAX_LEN, MAC_LEN};
use crate::storage::{Storage, StorageExt};

type HmacSha256 = Hmac<Sha256>;

/// Label mixed into the seed of a segment that starts with a new key.
pub const ROTATE_LABEL: &[u8] = b"walspool-rotate";

/// A secret HMAC key. Its `Debug` output shows only the fingerprint.
#[derive(Clone)]
pub struct HmacKey {
    /// HMAC state with the key already absorbed (its inner and outer pad blocks):
    /// each MAC starts from a copy of it instead of hashing the key twice again.
    keyed: HmacSha256,
    fp: [u8; 8],
    source: Option<PathBuf>,
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HmacKey(fingerprint {})", hex(&self.fp))
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

impl HmacKey {
    /// Smallest key accepted, in bytes.
    pub const MIN_LEN: usize = 16;

    /// A key from raw bytes (at least 16; 32 random bytes recommended).
    pub fn new(key: impl Into<Vec<u8>>) -> Result<Self> {
        let key = key.into();
        if key.len() < Self::MIN_LEN {
            return Err(Error::Config(format!(
                "HMAC key is {} bytes; at least {} are required (32 random bytes recommended)",
                key.len(),
                Self::MIN_LEN
            )));
        }
        let digest = Sha256::digest(&key);
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&digest[..8]);
        let keyed = HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length");
        Ok(HmacKey {
            keyed,
            fp,
            source: None,
        })
    }

    /// Parses key material: hex (64+ hex digits, surrounding whitespace ignored) or raw bytes.
    fn parse(bytes: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(bytes).ok().map(str::trim);
        match text.and_then(|t| if t.len() >= 32 { unhex(t) } else { None }) {
            Some(k) => Self::new(k),
            None => Self::new(bytes.to_vec()),
        }
    }

    /// Reads a key from a file (hex or raw bytes). The WAL refuses a key file that lies
    /// inside its own directory.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::io("read HMAC key file", path.display().to_string(), e))?;
        let mut k = Self::parse(&bytes)?;
        k.source = Some(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
        Ok(k)
    }

    /// Reads a key from an environment variable (hex or raw).
    pub fn from_env(var: &str) -> Result<Self> {
        let v = std::env::var(var).map_err(|_| {
            Error::Config(format!("environment variable {var} (HMAC key) is not set"))
        })?;
        Self::parse(v.as_bytes())
    }

    /// First 8 bytes of SHA-256 of the key: names the key in segment headers without
    /// revealing it.
    pub fn fingerprint(&self) -> [u8; 8] {
        self.fp
    }

    /// The fingerprint as hex.
    pub fn fingerprint_hex(&self) -> String {
        hex(&self.fp)
    }

    /// The file the key was read from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// `HMAC-SHA256(key, prev || seq || ts_us || payload)`.
    pub fn mac(&self, prev: &[u8; MAC_LEN], seq: u64, ts_us: u64, payload: &[u8]) -> [u8; MAC_LEN] {
        let mut m = self.keyed.clone();
        m.update(prev);
        m.update(&seq.to_le_bytes());
        m.update(&ts_us.to_le_bytes());
        m.update(payload);
        m.finalize().into_bytes().into()
    }

    /// `HMAC-SHA256(key, "walspool-end" || record)`: authenticates the durable end of
    /// the log (`meta/end`), so that a cut-off tail cannot pass for the whole log.
    pub fn mac_end(&self, record: &[u8]) -> [u8; MAC_LEN] {
        let mut m = self.keyed.clone();
        m.update(b"walspool-end");
        m.update(record);
        m.finalize().into_bytes().into()
    }

    /// The seed of the first segment under `new_fp`, authenticated by this (old) key.
    pub fn rotation_seed(&self, last_mac: &[u8; MAC_LEN], new_fp: &[u8; 8]) -> [u8; MAC_LEN] {
        let mut m = self.keyed.clone();
        m.update(last_mac);
        m.update(ROTATE_LABEL);
        m.update(new_fp);
        m.finalize().into_bytes().into()
    }
}

/// Where and why the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The segment file.
    pub segment: String,
    /// Byte offset of the record (or 0 for the header).
    pub offset: u64,
    /// Sequence number concerned, when known.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chain broken in {} at byte offset {}",
            self.segment, self.offset
        )?;
        if let Some(s) = self.seq {
            write!(f, " (sequence {s})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// What [`verify_chain`] checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainReport {
    /// Segments checked.
    pub segments: u64,
    /// Of which chained.
    pub chained_segments: u64,
    /// Records checked.
    pub records: u64,
    /// Records whose MAC was verified.
    pub macs_verified: u64,
    /// Last sequence number found (0 if none).
    pub last_seq: u64,
    /// Key rotations seen.
    pub rotations: u64,
}

/// Checks every frame of every segment: CRC, sequence continuity and, in chained
/// segments, the HMAC chain with `keys` (several keys for a WAL whose key was rotated).
/// Unchained segments are checked by CRC only, but an unchained segment after a chained
/// one is a break (someone removed the chain). When `expected_last_seq` is known (the
/// authenticated recovery point, [`recovery::read_end`](crate::recovery::read_end) with
/// the keys, or what the archive records), a log that ends before it was truncated.
/// Verification starts at the first segment on disk: history removed by retention is
/// not an error. In the newest segment, bytes after the last intact record (preallocated
/// zeros, a record being written, a torn write) end the walk: whether they are a torn
/// tail or corruption is [`inspect::verify`](crate::inspect::verify)'s judgement.
pub fn verify_chain<S: Storage>(
    storage: &S,
    keys: &[HmacKey],
    expected_last_seq: Option<u64>,
) -> std::result::Result<ChainReport, ChainBreak> {
    let mut segs = storage.list_segments().map_err(|e| ChainBreak {
        segment: storage.location(),
        offset: 0,
        seq: None,
        reason: format!("cannot list segments: {e}"),
    })?;
    segs.sort_by_key(|s| s.id);
    let mut rep = ChainReport::default();
    let mut prev_mac: Option<[u8; MAC_LEN]> = None;
    let mut prev_key: Option<HmacKey> = None;
    let mut next_seq: Option<u64> = None;
    let mut seen_chained = false;
    let newest = segs.last().map(|s| s.id);
    for info in &segs {
        let is_last = Some(info.id) == newest;
        let name = storage.segment_name(info.id);
        let brk = |offset: u64, seq: Option<u64>, reason: String| ChainBreak {
            segment: name.clone(),
            offset,
            seq,
            reason,
        };
        let bytes = storage
            .read_vec(info.id, 0, info.len as usize)
            .map_err(|e| brk(0, None, format!("cannot read: {e}")))?;
        let header = SegmentHeader::decode(&bytes[..bytes.len().min(HEADER_MAX_LEN)], &name)
            .map_err(|e| brk(0, None, e.to_string()))?;
        rep.segments += 1;
        if let Some(n) = next_seq {
            if header.base_seq != n {
                return Err(brk(
                    0,
                    Some(n),
                    format!(
                        "sequence gap: the previous segment ends at {} but this one starts at {} (records or a segment removed)",
                        n - 1,
                        header.base_seq
                    ),
                ));
            }
        }
        let key = match &header.chain {
            None => {
                if seen_chained {
                    return Err(brk(
                        0,
                        Some(header.base_seq),
                        "unchained segment after chained ones: the chain was removed".into(),
                    ));
                }
                None
            }
            Some(ch) => {
                seen_chained = true;
                rep.chained_segments += 1;
                let Some(key) = keys.iter().find(|k| k.fingerprint() == ch.key_fp) else {
                    return Err(brk(
                        0,
                        Some(header.base_seq),
                        format!(
                            "segment is MACed with key {} which is not among the keys given",
                            hex(&ch.key_fp)
                        ),
                    ));
                };
                if let Some(pm) = &prev_mac {
                    let expected = if ch.prev_key_fp != [0u8; 8] {
                        let Some(old) = prev_key
                            .as_ref()
                            .filter(|k| k.fingerprint() == ch.prev_key_fp)
                        else {
                            return Err(brk(
                                0,
                                Some(header.base_seq),
                                "key rotation from a key that did not MAC the previous segment"
                                    .into(),
                            ));
                        };
                        rep.rotations += 1;
                        old.rotation_seed(pm, &ch.key_fp)
                    } else {
                        *pm
                    };
                    if ch.seed != expected {
                        return Err(brk(
                            0,
                            Some(header.base_seq),
                            "segment does not continue the previous segment's chain (segment removed, reordered or replaced)".into(),
                        ));
                    }
                }
                Some((key.clone(), ch.seed))
            }
        };
        let mut pos = header.data_offset();
        let mut expect = header.base_seq;
        let mut mac_prev = key.as_ref().map(|k| k.1);
        loop {
            match decode_frame_with(&bytes[pos.min(bytes.len())..], header.is_chained()) {
                Decoded::Frame(f, n) => {
                    if f.seq != expect {
                        return Err(brk(
                            pos as u64,
                            Some(f.seq),
                            format!("expected sequence {expect} but found {} (record deleted, reordered or inserted)", f.seq),
                        ));
                    }
                    if let (Some((k, _)), Some(prev), Some(mac)) = (&key, mac_prev.as_ref(), f.mac)
                    {
                        let want = k.mac(prev, f.seq, f.ts_us, f.payload);
                        if want[..] != mac[..] {
                            return Err(brk(
                                pos as u64,
                                Some(f.seq),
                                "MAC mismatch: the record was edited, moved, or written without the key".into(),
                            ));
                        }
                        let mut m = [0u8; MAC_LEN];
                        m.copy_from_slice(mac);
                        mac_prev = Some(m);
                        rep.macs_verified += 1;
                    }
                    rep.records += 1;
                    rep.last_seq = f.seq;
                    expect += 1;
                    pos += n;
                }
                Decoded::Footer(ft) => {
                    if ft.last_seq != expect - 1 {
                        return Err(brk(
                            pos as u64,
                            Some(ft.last_seq),
                            "footer's last sequence does not match the records".into(),
                        ));
                    }
                    break;
                }
                Decoded::Incomplete { .. } if pos >= bytes.len() => break,
                Decoded::Incomplete { .. } | Decoded::Invalid(_) if is_last => break,
                Decoded::Incomplete { .. } => {
                    return Err(brk(pos as u64, Some(expect), "truncated record".into()))
                }
                Decoded::Invalid(r) => return Err(brk(pos as u64, Some(expect), r.to_string())),
            }
        }
        next_seq = Some(expect);
        prev_mac = mac_prev;
        prev_key = key.map(|k| k.0);
    }
    if let Some(want) = expected_last_seq {
        if rep.last_seq < want {
            let last = segs
                .last()
                .map(|s| storage.segment_name(s.id))
                .unwrap_or_else(|| storage.location());
            return Err(ChainBreak {
                segment: last,
                offset: segs.last().map_or(0, |s| s.len),
                seq: Some(rep.last_seq + 1),
                reason: format!(
                    "log truncated: the writer recorded sequence {want} but the log ends at {}",
                    rep.last_seq
                ),
            });
        }
    }
    Ok(rep)
}
