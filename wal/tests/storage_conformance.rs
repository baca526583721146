//! The `Storage` conformance suite on `Memory`, and `Storage` as a trait object:
//! `Arc<dyn Storage>`, `Box<dyn Storage>` and a `Wal<Box<dyn Storage>>` (issue 17).

use std::sync::Arc;

use walspool_wal::storage::conformance;
use walspool_wal::{Memory, Options, Storage, Wal};

#[test]
fn memory_passes_the_suite() {
    conformance::run(Memory::new);
}

#[test]
fn arc_dyn_storage_passes_the_suite() {
    conformance::run(|| -> Arc<dyn Storage> { Arc::new(Memory::new()) });
}

#[test]
fn box_dyn_storage_passes_the_suite() {
    conformance::run(|| -> Box<dyn Storage> { Box::new(Memory::new()) });
}

/// A backend chosen at run time: the WAL's type does not name it.
#[test]
fn wal_over_a_boxed_backend() {
    let pick = |name: &str| -> Box<dyn Storage> {
        match name {
            "memory" => Box::new(Memory::new()),
            other => panic!("unknown backend {other}"),
        }
    };
    let wal: Wal<Box<dyn Storage>> = Wal::open(pick("memory"), Options::default()).unwrap();
    let seq = wal.append_blocking(&"boxed".to_string()).unwrap();
    assert_eq!(seq, 1);
    assert_eq!(wal.storage().location(), "memory");
    futures::executor::block_on(wal.close()).unwrap();
}
