//! docs/format.md and the code agree (issue 17): every size, offset and constant the
//! document states is checked against `walspool_wal::format` and `recovery`.

use walspool_wal::format::*;
use walspool_wal::recovery::{END_CLEAN, END_LEN, END_MAC_LEN, END_MAGIC, END_POISONED};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/format.md");
    std::fs::read_to_string(path).expect("docs/format.md")
}

/// The `(offset, size)` of `field` in the table under the heading that starts with
/// `heading`.
fn row(doc: &str, heading: &str, field: &str) -> (usize, usize) {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("docs/format.md has no heading {heading:?}"));
    for line in doc[start..].lines().skip(1) {
        if line.starts_with('#') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() > 4 && cells[3] == field {
            let n = |s: &str| {
                s.split_whitespace()
                    .next()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_else(|| panic!("{heading} / {field}: {s:?} is not a number"))
            };
            return (n(cells[1]), n(cells[2]));
        }
    }
    panic!("docs/format.md: no field {field:?} under {heading:?}");
}

fn says(doc: &str, text: &str) {
    assert!(doc.contains(text), "docs/format.md should say {text:?}");
}

#[test]
fn versions() {
    let d = doc();
    says(&d, &format!("`FORMAT_VERSION` = {FORMAT_VERSION}"));
    says(&d, "`MIN_READ_VERSION..=FORMAT_VERSION`");
    // The version table's last row is the current version.
    // The version log's newest row is the current version.
    let log = &d[d.find("## Version log").expect("a version log")..];
    let table = &log[..log[3..].find("\n## ").map_or(log.len(), |i| i + 3)];
    let newest = table
        .lines()
        .filter_map(|l| {
            l.strip_prefix("| ")?
                .split('|')
                .next()?
                .trim()
                .parse::<u16>()
                .ok()
        })
        .max()
        .expect("a version table");
    assert_eq!(newest, FORMAT_VERSION, "the version table's newest row");
    assert_eq!(MIN_READ_VERSION, 1);
    says(&d, "`WALSPOOL` (`MAGIC`)");
    assert_eq!(&MAGIC, b"WALSPOOL");
    says(&d, "`WSPLSEAL` (`FOOTER_MAGIC`)");
    assert_eq!(&FOOTER_MAGIC, b"WSPLSEAL");
    says(&d, "`WSPLEND1` (`END_MAGIC`)");
    assert_eq!(&END_MAGIC, b"WSPLEND1");
    says(
        &d,
        &format!("00000000000000000001.{SEGMENT_EXT}   segment files"),
    );
    assert_eq!(
        segment_file_name(1),
        format!("00000000000000000001.{SEGMENT_EXT}")
    );
}

#[test]
fn header() {
    let d = doc();
    says(&d, &format!("### Header ({HEADER_LEN} bytes)"));
    let h = "### Header (";
    assert_eq!(row(&d, h, "magic"), (0, MAGIC.len()));
    assert_eq!(row(&d, h, "version"), (HEADER_VERSION_OFFSET, 2));
    assert_eq!(row(&d, h, "flags"), (HEADER_FLAGS_OFFSET, 2));
    assert_eq!(row(&d, h, "base_seq"), (HEADER_BASE_SEQ_OFFSET, 8));
    assert_eq!(row(&d, h, "created_us"), (HEADER_CREATED_OFFSET, 8));
    assert_eq!(row(&d, h, "crc"), (HEADER_CRC_OFFSET, 4));
    assert_eq!(HEADER_CRC_OFFSET + 4, HEADER_LEN);
    says(&d, &format!("CRC-32 of bytes 0..{HEADER_CRC_OFFSET}"));
    says(&d, "bit 0 `FLAG_CHAINED`");
    assert_eq!(FLAG_CHAINED, 1 << 0);
    says(&d, "bit 1 `FLAG_SCHEMA`");
    assert_eq!(FLAG_SCHEMA, 1 << 1);
}

#[test]
fn chained_segments() {
    let d = doc();
    says(&d, &format!("### Chain extension ({CHAIN_EXT_LEN} bytes"));
    assert_eq!(HEADER_MAX_LEN, HEADER_LEN + CHAIN_EXT_LEN);
    says(
        &d,
        &format!("starts at byte {HEADER_MAX_LEN} (`HEADER_MAX_LEN`)"),
    );
    says(&d, &format!("at byte {HEADER_LEN} (`HEADER_LEN`)"));
    says(
        &d,
        &format!(
            "decoded from the header's end (byte {HEADER_LEN}, or {HEADER_MAX_LEN} when chained)"
        ),
    );
    let c = "### Chain extension (";
    assert_eq!(row(&d, c, "key_fp").0, HEADER_LEN);
    let (at, len) = row(&d, c, "reserved");
    assert_eq!(at + len, HEADER_MAX_LEN);
    assert_eq!(row(&d, c, "seed").1, MAC_LEN);
}

#[test]
fn frame() {
    let d = doc();
    says(
        &d,
        &format!(
            "### Frame ({FRAME_HEADER_LEN} bytes + payload; {} bytes + payload when chained)",
            FRAME_HEADER_LEN + MAC_LEN
        ),
    );
    let f = "### Frame (";
    assert_eq!(row(&d, f, "len"), (FRAME_LEN_OFFSET, 4));
    assert_eq!(row(&d, f, "crc"), (FRAME_CRC_OFFSET, 4));
    assert_eq!(row(&d, f, "seq"), (FRAME_SEQ_OFFSET, 8));
    assert_eq!(row(&d, f, "ts_us"), (FRAME_TS_OFFSET, 8));
    assert_eq!(row(&d, f, "mac"), (FRAME_HEADER_LEN, MAC_LEN));
    assert_eq!(FRAME_TS_OFFSET + 8, FRAME_HEADER_LEN);
    says(
        &d,
        &format!("at most `MAX_PAYLOAD_LEN` ({} MiB)", MAX_PAYLOAD_LEN >> 20),
    );
    assert_eq!(FOOTER_MARKER, 0xFFFF_FFFF);
    says(&d, "`0xFFFFFFFF` marks the footer");
}

#[test]
fn footer() {
    let d = doc();
    says(&d, &format!("### Footer ({FOOTER_LEN} bytes"));
    let f = "### Footer (";
    assert_eq!(row(&d, f, "marker"), (0, 4));
    assert_eq!(row(&d, f, "magic"), (8, FOOTER_MAGIC.len()));
    let (at, len) = row(&d, f, "reserved");
    assert_eq!(at + len, FOOTER_LEN);
    says(&d, &format!("CRC-32 of footer bytes 8..{FOOTER_LEN}"));
}

#[test]
fn recovery_point() {
    let d = doc();
    says(
        &d,
        &format!("## Recovery point (`meta/end`, {END_LEN} bytes; {END_MAC_LEN} when chained)"),
    );
    let r = "## Recovery point (";
    let (crc_at, crc_len) = row(&d, r, "crc");
    assert_eq!(crc_at + crc_len, END_LEN);
    let (mac_at, mac_len) = row(&d, r, "mac");
    assert_eq!(mac_at + mac_len, END_MAC_LEN);
    says(&d, "bit 0 `END_CLEAN`");
    assert_eq!(END_CLEAN, 1);
    says(&d, "bit 1 `END_POISONED`");
    assert_eq!(END_POISONED, 2);
}
