//! Errors keep their causes as `source()` and print each once (issue 17).

use std::error::Error as _;

use walspool_wal::error::display_chain;
use walspool_wal::{Error, Memory, Options, Wal};

#[derive(Debug)]
struct SinkDown;

impl std::fmt::Display for SinkDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sink is down")
    }
}

impl std::error::Error for SinkDown {}

#[test]
fn a_replay_sink_failure_is_error_sink_with_the_sinks_error_as_source() {
    let wal = Wal::open(Memory::new(), Options::default()).unwrap();
    wal.append_blocking(&"a".to_string()).unwrap();
    let c = wal.consumer("replay").unwrap();
    let err =
        futures::executor::block_on(c.replay::<String, _, _, _>(10, |_| async { Err(SinkDown) }))
            .unwrap_err();
    assert!(
        matches!(&err, Error::Sink { consumer, .. } if consumer == "replay"),
        "{err:?}"
    );
    assert!(err.source().unwrap().downcast_ref::<SinkDown>().is_some());
    assert!(!err.to_string().contains("sink is down"), "{err}");
    assert_eq!(display_chain(&err).matches("sink is down").count(), 1);
    assert_eq!(c.committed(), 0, "nothing is committed past a failed batch");
    // A plain string works as a sink error too.
    let err =
        futures::executor::block_on(c.replay::<String, _, _, _>(10, |_| async { Err("refused") }))
            .unwrap_err();
    assert_eq!(display_chain(&err).matches("refused").count(), 1, "{err:?}");
    // batch_max 0 is refused, not adjusted.
    let err = futures::executor::block_on(
        c.replay::<String, _, _, std::convert::Infallible>(0, |_| async { Ok(()) }),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
}

#[test]
fn a_decode_error_keeps_the_decoders_error() {
    let wal = Wal::open(Memory::new(), Options::default()).unwrap();
    // An over-long varint: not a u64.
    let seq = futures::executor::block_on(wal.append_payloads(vec![vec![0xff; 11]]))
        .unwrap()
        .start;
    let got = futures::executor::block_on(async {
        use futures::StreamExt;
        wal.read_from::<u64>(seq).next().await
    })
    .unwrap();
    let err = got.unwrap_err();
    assert!(
        matches!(err, Error::Decode { seq: s, .. } if s == seq),
        "{err:?}"
    );
    let source = err.source().expect("the postcard error").to_string();
    assert!(!err.to_string().contains(&source), "{err}");
    assert_eq!(display_chain(&err).matches(&source).count(), 1);
}
