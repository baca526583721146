//! `LocalDisk` passes the `Storage` conformance suite (issue 17).

use walspool_backends::LocalDisk;
use walspool_wal::storage::conformance;

#[test]
fn local_disk_passes_the_suite() {
    let mut dirs = Vec::new();
    conformance::run(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = LocalDisk::open(dir.path().join("wal")).expect("LocalDisk::open");
        dirs.push(dir);
        disk
    });
}

#[test]
fn local_disk_as_a_trait_object() {
    let mut dirs = Vec::new();
    conformance::run(|| -> Box<dyn walspool_wal::Storage> {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = LocalDisk::open(dir.path().join("wal")).expect("LocalDisk::open");
        dirs.push(dir);
        Box::new(disk)
    });
}
