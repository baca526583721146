//! `walspool verify --key-file` on an HMAC-chained WAL (issue 10).

use std::process::Command;

use futures::executor::block_on;
use walspool_backends::LocalDisk;
use walspool_wal::format::{
    decode_frame_with, encode_frame_with, Decoded, SegmentFooter, SegmentHeader, FOOTER_LEN,
    HEADER_MAX_LEN,
};
use walspool_wal::{HmacKey, Options, Wal};

fn verify(dir: &std::path::Path, keys: &[&std::path::Path]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_walspool"));
    c.arg("verify").arg(dir);
    for k in keys {
        c.arg("--key-file").arg(k);
    }
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn verify_checks_the_chain_and_names_the_broken_link() {
    let tmp = tempfile::tempdir().unwrap();
    let key_path = tmp.path().join("audit.key");
    std::fs::write(
        &key_path,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    let key = HmacKey::from_file(&key_path).unwrap();
    let dir = tmp.path().join("wal");
    let wal = Wal::open(
        LocalDisk::open(&dir).unwrap(),
        Options::default().segment_size(4096).hmac_key(key),
    )
    .unwrap();
    block_on(wal.append_batch(&(0..200).map(|i| format!("event {i}")).collect::<Vec<_>>()))
        .unwrap();
    block_on(wal.close()).unwrap();

    let (code, out, err) = verify(&dir, &[&key_path]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("chain ok: 200 MACs verified"), "{out}");

    // Edit a payload byte in a sealed segment and fix its CRC: CRCs pass, the chain does not.
    let mut segs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    let seg = &segs[1];
    let mut b = std::fs::read(seg).unwrap();
    let h = SegmentHeader::decode(&b[..HEADER_MAX_LEN], "s").unwrap();
    let at = h.data_offset();
    let Decoded::Frame(f, n) = decode_frame_with(&b[at..], true) else {
        panic!("no frame")
    };
    let (seq, ts, mac) = (f.seq, f.ts_us, f.mac.unwrap().to_vec());
    let mut payload = f.payload.to_vec();
    payload[2] ^= 1;
    let mut m = [0u8; 32];
    m.copy_from_slice(&mac);
    let mut enc = Vec::new();
    encode_frame_with(&mut enc, seq, ts, Some(&m), &payload);
    assert_eq!(enc.len(), n);
    b[at..at + n].copy_from_slice(&enc);
    // A careful forger also fixes the sealed segment's footer (its body CRC).
    let fpos = b.len() - FOOTER_LEN;
    let mut footer = SegmentFooter::decode(&b[fpos..]).unwrap();
    footer.body_crc = crc32fast::hash(&b[..fpos]);
    b[fpos..].copy_from_slice(&footer.encode());
    std::fs::write(seg, &b).unwrap();

    let (code, _, _) = verify(&dir, &[]);
    assert_eq!(
        code, 0,
        "CRC-only verify cannot see an edit with a recomputed CRC"
    );
    let (code, _, err) = verify(&dir, &[&key_path]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("CHAIN BROKEN"), "{err}");
    assert!(
        err.contains(seg.file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
    assert!(err.contains(&format!("byte offset {at}")), "{err}");
    assert!(err.contains(&format!("sequence {seq}")), "{err}");
}

/// Issue 13, case 7: `verify --key-file` on a chained WAL whose writer is running (or
/// crashed): the active segment ends in preallocated zeros and appends in flight are
/// not yet durable. Neither is a broken chain.
#[test]
fn verify_with_keys_on_a_running_or_crashed_chained_wal_is_ok() {
    let tmp = tempfile::tempdir().unwrap();
    let key_path = tmp.path().join("audit.key");
    std::fs::write(
        &key_path,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    let key = HmacKey::from_file(&key_path).unwrap();
    let dir = tmp.path().join("wal");
    let wal = Wal::open(
        LocalDisk::open(&dir).unwrap(),
        Options::default()
            .segment_size(64 << 10)
            .stats_interval(Some(std::time::Duration::from_millis(10)))
            .hmac_key(key),
    )
    .unwrap();
    for i in 0..300 {
        block_on(wal.append(&format!("event {i}"))).unwrap();
    }
    // Let the stats file and the recovery point catch up, then check the live WAL.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let active = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .max()
        .unwrap();
    assert_eq!(
        std::fs::metadata(&active).unwrap().len(),
        64 << 10,
        "the active segment is preallocated"
    );
    let (code, out, err) = verify(&dir, &[&key_path]);
    assert_eq!(code, 0, "running WAL: {out}{err}");
    assert!(out.contains("chain ok: 300 MACs verified"), "{out}");
    // A crash: the process goes away without closing (the files stay as they are).
    std::mem::forget(wal);
    let (code, out, err) = verify(&dir, &[&key_path]);
    assert_eq!(code, 0, "crashed WAL: {out}{err}");
}
