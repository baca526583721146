//! Waiting for walspool's own futures on the calling thread, without an executor.
//!
//! walspool's futures are completed by its own threads (the writer, the housekeeper),
//! so the only thing a blocking call needs is to park the calling thread until one of
//! them wakes it. `futures::executor::block_on` would do that too, but it refuses to
//! run inside another `futures` executor (`LocalPool`, `block_on`): it panics with
//! "cannot execute `LocalPool` executor from within another executor". This parks
//! the thread and nothing else, so it works on any thread: a plain thread, a tokio or
//! smol worker, or inside `futures::executor::block_on` / `LocalPool` (it blocks that
//! thread for as long as it waits, like any blocking call).

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `f` to completion on the calling thread, parking it while `f` is pending.
/// Only for futures that some other thread completes (walspool's own).
pub(crate) fn wait<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        // A spurious wake-up only costs another poll.
        std::thread::park();
    }
}
