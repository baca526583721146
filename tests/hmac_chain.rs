//! Tamper evidence (issue 10): every kind of edit to a chained WAL is detected and
//! reported at the right place.

use std::path::{Path, PathBuf};

use futures::executor::block_on;
use walspool::format::{
    decode_frame_with, encode_frame_with, Decoded, SegmentHeader, HEADER_MAX_LEN, MAC_LEN,
};
use walspool::{verify_chain, HmacKey, LocalDisk, Options, Wal};

struct Fixture {
    _tmp: tempfile::TempDir,
    wal_dir: PathBuf,
    key: HmacKey,
    key_path: PathBuf,
}

fn key_file(dir: &Path, name: &str, byte: u8) -> (PathBuf, HmacKey) {
    let p = dir.join(name);
    let hex: String = (0..32)
        .map(|i| format!("{:02x}", byte.wrapping_add(i)))
        .collect();
    std::fs::write(&p, format!("{hex}\n")).unwrap();
    let k = HmacKey::from_file(&p).unwrap();
    (p, k)
}

fn fixture(records: u64) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let (key_path, key) = key_file(tmp.path(), "audit.key", 1);
    let wal_dir = tmp.path().join("wal");
    let wal = Wal::open(
        LocalDisk::open(&wal_dir).unwrap(),
        Options::default().segment_size(4096).hmac_key(key.clone()),
    )
    .unwrap();
    block_on(async {
        for i in 0..records {
            wal.append(&format!("audit event {i}")).await.unwrap();
        }
    });
    block_on(wal.close()).unwrap();
    Fixture {
        _tmp: tmp,
        wal_dir,
        key,
        key_path,
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// (offset, seq, ts, mac, payload) of each frame.
type Frame = (usize, u64, u64, [u8; MAC_LEN], Vec<u8>);

fn frames(bytes: &[u8]) -> (usize, Vec<Frame>) {
    let h = SegmentHeader::decode(&bytes[..HEADER_MAX_LEN.min(bytes.len())], "t").unwrap();
    let mut pos = h.data_offset();
    let mut out = Vec::new();
    while let Decoded::Frame(f, n) = decode_frame_with(&bytes[pos..], true) {
        let mut m = [0u8; MAC_LEN];
        m.copy_from_slice(f.mac.unwrap());
        out.push((pos, f.seq, f.ts_us, m, f.payload.to_vec()));
        pos += n;
    }
    (pos, out)
}

fn encode(f: &Frame) -> Vec<u8> {
    let mut b = Vec::new();
    encode_frame_with(&mut b, f.1, f.2, Some(&f.3), &f.4);
    b
}

fn verify(
    dir: &Path,
    keys: &[HmacKey],
    expected: Option<u64>,
) -> Result<walspool::ChainReport, walspool::ChainBreak> {
    verify_chain(&LocalDisk::open_read_only(dir).unwrap(), keys, expected)
}

#[test]
fn intact_chain_verifies() {
    let f = fixture(300);
    assert!(segments(&f.wal_dir).len() > 3);
    let rep = verify(&f.wal_dir, std::slice::from_ref(&f.key), Some(300)).unwrap();
    assert_eq!(rep.records, 300);
    assert_eq!(rep.macs_verified, 300);
    assert_eq!(rep.last_seq, 300);
    // And the records read back normally through the WAL, with the key.
    let wal = Wal::open(
        LocalDisk::open(&f.wal_dir).unwrap(),
        Options::default()
            .segment_size(4096)
            .hmac_key(f.key.clone()),
    )
    .unwrap();
    let e = block_on(futures::StreamExt::next(&mut wal.read_from::<String>(7)))
        .unwrap()
        .unwrap();
    assert_eq!(e.record, "audit event 6");
    // The chain continues across a reopen.
    block_on(wal.append(&"after reopen".to_string())).unwrap();
    block_on(wal.close()).unwrap();
    let rep = verify(&f.wal_dir, std::slice::from_ref(&f.key), None).unwrap();
    assert_eq!(rep.macs_verified, 301);
}

#[test]
fn edited_payload_with_recomputed_crc() {
    let f = fixture(300);
    let seg = &segments(&f.wal_dir)[1];
    let mut b = std::fs::read(seg).unwrap();
    let (_, fr) = frames(&b);
    let mut victim = fr[4].clone();
    let at = victim.0;
    victim.4[3] ^= 0x20; // "audit event" -> "auDit event"
    let enc = encode(&victim); // a valid CRC over the edited bytes
    b[at..at + enc.len()].copy_from_slice(&enc);
    std::fs::write(seg, &b).unwrap();
    let err = verify(&f.wal_dir, std::slice::from_ref(&f.key), None).unwrap_err();
    assert!(
        err.segment
            .ends_with(seg.file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
    assert_eq!((err.offset, err.seq), (at as u64, Some(victim.1)), "{err}");
    assert!(err.reason.contains("MAC mismatch"), "{err}");
}

#[test]
fn deleted_record() {
    let f = fixture(300);
    let seg = &segments(&f.wal_dir)[2];
    let b = std::fs::read(seg).unwrap();
    let (_, fr) = frames(&b);
    let (start, end) = (fr[5].0, fr[6].0);
    let mut out = b[..start].to_vec();
    out.extend_from_slice(&b[end..]);
    std::fs::write(seg, &out).unwrap();
    let err = verify(&f.wal_dir, std::slice::from_ref(&f.key), None).unwrap_err();
    assert_eq!(err.offset, start as u64, "{err}");
    assert_eq!(err.seq, Some(fr[6].1), "{err}");
    assert!(err.reason.contains("expected sequence"), "{err}");
}

#[test]
fn swapped_records_renumbered() {
    let f = fixture(300);
    let seg = &segments(&f.wal_dir)[1];
    let b = std::fs::read(seg).unwrap();
    let (_, fr) = frames(&b);
    // Swap records 3 and 4 but keep sequence numbers in order and CRCs valid.
    let mut a = fr[4].clone();
    let mut c = fr[3].clone();
    std::mem::swap(&mut a.1, &mut c.1);
    let mut out = b[..fr[3].0].to_vec();
    out.extend(encode(&a));
    out.extend(encode(&c));
    out.extend_from_slice(&b[fr[5].0..]);
    assert_eq!(out.len(), b.len());
    std::fs::write(seg, &out).unwrap();
    let err = verify(&f.wal_dir, std::slice::from_ref(&f.key), None).unwrap_err();
    assert_eq!(
        (err.offset, err.seq),
        (fr[3].0 as u64, Some(fr[3].1)),
        "{err}"
    );
    assert!(err.reason.contains("MAC mismatch"), "{err}");
}

#[test]
fn middle_segment_removed() {
    let f = fixture(300);
    let segs = segments(&f.wal_dir);
    std::fs::remove_file(&segs[2]).unwrap();
    let err = verify(&f.wal_dir, std::slice::from_ref(&f.key), None).unwrap_err();
    assert!(
        err.segment
            .ends_with(segs[3].file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
    assert_eq!(err.offset, 0);
    assert!(err.reason.contains("sequence gap"), "{err}");
}

#[test]
fn truncated_at_a_segment_boundary() {
    let f = fixture(300);
    // The writer's stats file records the last sequence it wrote.
    let stats =
        walspool::StatsFile::parse(&std::fs::read(f.wal_dir.join(walspool::STATS_FILE)).unwrap())
            .unwrap();
    let last = stats.metrics.last_seq;
    assert_eq!(last, 300);
    let segs = segments(&f.wal_dir);
    // Remove the tail segments: what is left ends cleanly at a segment boundary.
    for s in &segs[segs.len() - 2..] {
        std::fs::remove_file(s).unwrap();
    }
    assert!(
        verify(&f.wal_dir, std::slice::from_ref(&f.key), None).is_ok(),
        "undetectable without the writer's record"
    );
    let err = verify(&f.wal_dir, std::slice::from_ref(&f.key), Some(last)).unwrap_err();
    assert!(err.reason.contains("truncated"), "{err}");
    assert!(
        err.segment
            .ends_with(segs[segs.len() - 3].file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn appended_without_the_key() {
    let f = fixture(300);
    let seg = segments(&f.wal_dir).pop().unwrap();
    let mut b = std::fs::read(&seg).unwrap();
    let (end, fr) = frames(&b);
    let last = fr.last().unwrap();
    b.truncate(end);
    let forged = (
        end,
        last.1 + 1,
        last.2 + 1,
        [0x42; MAC_LEN],
        b"forged event".to_vec(),
    );
    b.extend(encode(&forged));
    std::fs::write(&seg, &b).unwrap();
    let err = verify(&f.wal_dir, std::slice::from_ref(&f.key), None).unwrap_err();
    assert_eq!(
        (err.offset, err.seq),
        (end as u64, Some(last.1 + 1)),
        "{err}"
    );
    assert!(err.reason.contains("MAC mismatch"), "{err}");
    // A key that is not the WAL's is no help either.
    let (_, other) = key_file(f.key_path.parent().unwrap(), "other.key", 9);
    let err = verify(&f.wal_dir, &[other], None).unwrap_err();
    assert!(err.reason.contains("not among the keys"), "{err}");
}

#[test]
fn unchained_wal_still_verifies_by_crc() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = Wal::open(
        LocalDisk::open(tmp.path().join("w")).unwrap(),
        Options::default().segment_size(4096),
    )
    .unwrap();
    block_on(wal.append_batch(&(0..200).map(|i| format!("r{i}")).collect::<Vec<_>>())).unwrap();
    block_on(wal.close()).unwrap();
    let rep = verify(&tmp.path().join("w"), &[], Some(200)).unwrap();
    assert_eq!(
        (rep.records, rep.macs_verified, rep.chained_segments),
        (200, 0, 0)
    );
    // Enabling the chain later starts it in a new segment; older segments stay readable.
    let (_, key) = key_file(tmp.path(), "k", 3);
    let wal = Wal::open(
        LocalDisk::open(tmp.path().join("w")).unwrap(),
        Options::default().segment_size(4096).hmac_key(key.clone()),
    )
    .unwrap();
    block_on(wal.append(&"chained".to_string())).unwrap();
    assert_eq!(
        block_on(futures::StreamExt::collect::<Vec<_>>(
            wal.read_range::<String>(1, 201)
        ))
        .len(),
        201
    );
    block_on(wal.close()).unwrap();
    let rep = verify(&tmp.path().join("w"), &[key], None).unwrap();
    assert_eq!((rep.records, rep.macs_verified), (201, 1));
}

#[test]
fn key_rotation() {
    let f = fixture(100);
    let (_, new_key) = key_file(f.key_path.parent().unwrap(), "new.key", 77);
    {
        let wal = Wal::open(
            LocalDisk::open(&f.wal_dir).unwrap(),
            Options::default()
                .segment_size(4096)
                .hmac_key(f.key.clone()),
        )
        .unwrap();
        block_on(wal.append(&"before rotation".to_string())).unwrap();
        wal.rotate_key(new_key.clone()).unwrap();
        block_on(wal.append(&"after rotation".to_string())).unwrap();
        block_on(wal.close()).unwrap();
    }
    let rep = verify(&f.wal_dir, &[f.key.clone(), new_key.clone()], Some(102)).unwrap();
    assert_eq!((rep.records, rep.rotations), (102, 1));
    let err = verify(&f.wal_dir, std::slice::from_ref(&new_key), None).unwrap_err();
    assert!(err.reason.contains("not among the keys"), "{err}");
    // The WAL now opens with the new key only; the old key is refused.
    let err = Wal::open(
        LocalDisk::open(&f.wal_dir).unwrap(),
        Options::default()
            .segment_size(4096)
            .hmac_key(f.key.clone()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("key mismatch"), "{err}");
    let wal = Wal::open(
        LocalDisk::open(&f.wal_dir).unwrap(),
        Options::default().segment_size(4096).hmac_key(new_key),
    )
    .unwrap();
    block_on(wal.close()).unwrap();
}

#[test]
fn chained_wal_needs_its_key_and_keys_stay_out_of_the_wal_dir() {
    let f = fixture(10);
    let err = Wal::open(LocalDisk::open(&f.wal_dir).unwrap(), Options::default()).unwrap_err();
    assert!(err.to_string().contains("HMAC-chained"), "{err}");
    let (_, inside) = key_file(&f.wal_dir, "key-in-wal-dir", 5);
    let err = Wal::open(
        LocalDisk::open(&f.wal_dir).unwrap(),
        Options::default().hmac_key(inside),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("inside the WAL directory"),
        "{err}"
    );
    let short = HmacKey::new(b"short".to_vec()).unwrap_err();
    assert!(short.to_string().contains("at least"), "{short}");
}

/// The writer thread extends the chain (MACs frames just before writing them, derives
/// each new segment's seed): concurrent appenders and batches, explicit rolls and key
/// rotations queued back to back (the second one lands on an empty segment) all end up
/// in one chain that verifies, and it continues after a reopen.
#[test]
fn chain_built_by_the_writer_under_concurrent_appends_rolls_and_rotations() {
    let f = fixture(0);
    let dir = f.key_path.parent().unwrap();
    let (_, k2) = key_file(dir, "k2.key", 40);
    let (_, k3) = key_file(dir, "k3.key", 90);
    let wal = Wal::open(
        LocalDisk::open(&f.wal_dir).unwrap(),
        Options::default()
            .segment_size(4096)
            .hmac_key(f.key.clone()),
    )
    .unwrap();
    let per_thread = 150u64;
    std::thread::scope(|s| {
        for t in 0..3 {
            let wal = &wal;
            s.spawn(move || {
                for i in 0..per_thread {
                    block_on(wal.append(&format!("thread {t} event {i}"))).unwrap();
                }
            });
        }
        let wal = &wal;
        s.spawn(move || {
            for b in 0..10 {
                let batch: Vec<String> = (0..15).map(|i| format!("batch {b} item {i}")).collect();
                block_on(wal.append_batch(&batch)).unwrap();
            }
        });
        for step in 0..6 {
            std::thread::sleep(std::time::Duration::from_millis(3));
            match step {
                1 => {
                    wal.rotate_key(k2.clone()).unwrap();
                    wal.rotate_key(k3.clone()).unwrap();
                }
                _ => wal.roll(),
            }
        }
    });
    let total = 3 * per_thread + 150;
    block_on(wal.close()).unwrap();
    let keys = [f.key.clone(), k2.clone(), k3.clone()];
    let rep = verify(&f.wal_dir, &keys, Some(total)).unwrap();
    assert_eq!((rep.records, rep.macs_verified), (total, total));
    assert!(rep.rotations >= 1, "{rep:?}");
    let wal = Wal::open(
        LocalDisk::open(&f.wal_dir).unwrap(),
        Options::default().segment_size(4096).hmac_key(k3.clone()),
    )
    .unwrap();
    block_on(wal.append(&"after reopen".to_string())).unwrap();
    wal.rotate_key(k2.clone()).unwrap();
    block_on(wal.append(&"after a rotation back".to_string())).unwrap();
    block_on(wal.close()).unwrap();
    let rep = verify(&f.wal_dir, &keys, Some(total + 2)).unwrap();
    assert_eq!(rep.macs_verified, total + 2);
}
