//! Test support shared by backends/tests/{nats,kafka}.rs: a broker process of the
//! test's own (started, SIGKILLed, restarted on the same store), and the pieces of
//! their broker-outage tests.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use walspool_wal::shipper::{Backoff, Breaker, ShipperBuilder};
use walspool_wal::{Memory, Storage, Wal};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A broker process listening on 127.0.0.1:`port`; `command(port)` starts it (and
/// starts it again, on the same store, after a kill).
pub struct Broker {
    name: &'static str,
    port: u16,
    command: Box<dyn Fn(u16) -> Command>,
    child: Option<Child>,
}

impl Broker {
    pub fn start(name: &'static str, command: impl Fn(u16) -> Command + 'static) -> Broker {
        let mut b = Broker {
            name,
            port: free_port(),
            command: Box::new(command),
            child: None,
        };
        b.restart();
        b
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the process and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.child = Some((self.command)(self.port).spawn().unwrap());
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{} did not start",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The outage tests' shipper settings: batches of 500, a 5 s send timeout, backoff
/// from 50 ms to 500 ms, a breaker that opens after 3 failures for 700 ms.
pub fn outage_settings<S: Storage, T: serde::de::DeserializeOwned + Send + Sync + 'static>(
    b: ShipperBuilder<S, T>,
) -> ShipperBuilder<S, T> {
    b.batch_max(500)
        .send_timeout(Duration::from_secs(5))
        .backoff(Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            ..Backoff::default()
        })
        .breaker(Breaker {
            failure_threshold: 3,
            open_for: Duration::from_millis(700),
        })
}

/// Appends records `rec(1..=n)` in the background, 250 at a time, `pause` apart.
pub fn spawn_appender<R: Serialize + Send + 'static>(
    wal: &Wal<Memory>,
    n: u64,
    rec: fn(u64) -> R,
    pause: Duration,
) -> JoinHandle<()> {
    let wal = wal.clone();
    std::thread::spawn(move || {
        for chunk in (1..=n).collect::<Vec<u64>>().chunks(250) {
            let recs: Vec<R> = chunk.iter().copied().map(rec).collect();
            futures::executor::block_on(wal.append_batch(&recs)).unwrap();
            std::thread::sleep(pause);
        }
    })
}

/// Polls `done` every `every` until it holds; fails after 60 s with `state()`.
pub fn wait_until<D: std::fmt::Debug>(
    every: Duration,
    mut done: impl FnMut() -> bool,
    state: impl Fn() -> D,
) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < Duration::from_secs(60), "{:?}", state());
        std::thread::sleep(every);
    }
}
