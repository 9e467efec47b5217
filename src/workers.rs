//! Where TCP connections are served: one single-threaded tokio runtime per
//! core, as nginx runs one worker process per core.
//!
//! Each accepted connection is handed to the worker serving the fewest and
//! stays there for its whole life. On one thread, an HTTP/2 connection's
//! stream tasks and the connection task run back to back, so the answers to a
//! burst of requests leave in one TLS write; on a work-stealing runtime the
//! connection task is woken per stream and writes far more often (measured on
//! one core: about 1.6x the HTTP/2 requests per CPU second, HTTP/1.1 the
//! same; see bench/README.md).
//!
//! Everything else (reloads, the admin API, QUIC, the CA) runs on the main
//! runtime. With no workers (one core), connections are served there too.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::runtime::Handle;

/// The worker runtimes, or none.
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    /// Connections open on this worker.
    open: Arc<AtomicUsize>,
}

/// Counts a connection open on a worker until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `n` worker threads (`edge-worker-N`), each running a
    /// current-thread runtime until the process exits. With `n == 0`,
    /// connections are served on the runtime that accepts them.
    pub fn start(n: usize) -> io::Result<Workers> {
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name(format!("edge-worker-{i}"))
                .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
            workers.push(Worker { handle, open: Arc::new(AtomicUsize::new(0)) });
        }
        Ok(Workers { workers })
    }

    /// How many worker threads run (0: connections stay on the main runtime).
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there are no worker threads.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Serves `stream` with `serve` on the least busy worker.
    pub fn serve<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self.workers.iter().min_by_key(|w| w.open.load(Ordering::Relaxed)) else {
            tokio::spawn(serve(stream));
            return;
        };
        // The socket moves from the accepting runtime's reactor to the
        // worker's: deregistered here, registered there.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand the connection to a worker");
                return;
            }
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(worker.open.clone());
        worker.handle.spawn(async move {
            let _open = open;
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::debug!(error = %e, "a worker cannot take the connection"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Connections are spread over the workers and served on their threads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn connections_run_on_worker_threads() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.len(), 2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        let mut names = Vec::new();
        for _ in 0..2 {
            let client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let (tx, rx) = tokio::sync::oneshot::channel();
            workers.serve(server, move |mut s| async move {
                let _ = tx.send(std::thread::current().name().map(str::to_string));
                let mut b = [0u8; 4];
                s.read_exact(&mut b).await.unwrap();
                s.write_all(&b).await.unwrap();
            });
            names.push(rx.await.unwrap().unwrap_or_default());
            clients.push(client);
        }
        names.sort();
        // Both open at once: the second went to the idle worker.
        assert_eq!(names, ["edge-worker-0", "edge-worker-1"]);
        for mut c in clients {
            c.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
        }
    }
}
