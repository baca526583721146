//! The tokio runtime the archive owns, and the bridge that lets any executor await
//! work running on it.
//!
//! object_store's HTTP clients (S3) need a tokio runtime: they spawn connection tasks
//! and sleep between retries with tokio timers, and panic without one. walspool runs
//! every object-store call on a small runtime of its own, on its own threads, and hands
//! the result back through a `futures` oneshot channel, which any executor can await.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};

use futures::channel::oneshot;

use super::ArchiveError;

/// Worker threads of the archive runtime. Uploads are I/O-bound; two threads keep a
/// multipart upload's parts and a CRC computation moving without taking the machine.
const WORKER_THREADS: usize = 2;

/// A multi-thread tokio runtime owned by walspool. Dropping it (from any thread, inside
/// an async context or not) shuts it down on its owner thread, never in the caller.
pub(crate) struct OwnedRuntime {
    handle: tokio::runtime::Handle,
    _stop: mpsc::Sender<()>,
}

impl std::fmt::Debug for OwnedRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedRuntime").finish_non_exhaustive()
    }
}

impl OwnedRuntime {
    pub(crate) fn new() -> Result<Self, ArchiveError> {
        let (handle_tx, handle_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("walspool-archive-rt".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(WORKER_THREADS)
                    .thread_name("walspool-archive")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                // Returns once every `OwnedRuntime` handle (sender) is gone.
                let _ = stop_rx.recv();
                rt.shutdown_timeout(std::time::Duration::from_secs(5));
            })
            .map_err(|e| {
                ArchiveError::io("spawn archive runtime thread", "walspool-archive-rt", e)
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| {
                ArchiveError::Runtime("the archive runtime thread died while starting".into())
            })?
            .map_err(|e| {
                ArchiveError::io("build the archive tokio runtime", "walspool-archive-rt", e)
            })?;
        Ok(OwnedRuntime {
            handle,
            _stop: stop_tx,
        })
    }

    /// Runs `fut` on the owned runtime; the returned future can be awaited from any
    /// executor. Dropping it aborts the task.
    pub(crate) fn spawn<F, T>(&self, fut: F) -> Bridged<T>
    where
        F: Future<Output = Result<T, ArchiveError>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let task = self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        Bridged {
            rx,
            task: Some(task),
        }
    }

    /// Spawns a detached background task.
    pub(crate) fn spawn_detached<F>(&self, fut: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(fut)
    }
}

/// The result of work spawned on the owned runtime. Awaitable from any executor.
pub(crate) struct Bridged<T> {
    rx: oneshot::Receiver<Result<T, ArchiveError>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl<T> Future for Bridged<T> {
    type Output = Result<T, ArchiveError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(r) => {
                self.task = None;
                Poll::Ready(r.unwrap_or_else(|_| {
                    Err(ArchiveError::Runtime(
                        "the archive task ended without an answer (it panicked, or the runtime shut down)".into(),
                    ))
                }))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Drop for Bridged<T> {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
