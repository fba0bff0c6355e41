//! Worker threads, one event loop each (thread per core, as nginx and Envoy run).
//!
//! Every worker is a single-threaded tokio runtime. A connection, its requests and the upstream
//! connections they use all stay on the worker that accepted it: no work stealing, no wakeups
//! across threads, no locks between a request and its upstream connection. The thread that owns
//! the control work (admin, reloads, signals) is separate.

use std::cell::Cell;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker threads, stopped when this is dropped.
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    /// Client connections each worker is serving.
    load: Arc<[AtomicUsize]>,
}

/// Counts a connection against its worker while it lives.
pub struct Load {
    load: Arc<[AtomicUsize]>,
    index: usize,
}

// === impl Workers ===

impl Workers {
    /// Starts `n` (at least one) worker threads.
    pub fn start(n: usize) -> io::Result<Self> {
        let n = n.max(1);
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        for index in 0..n {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            std::thread::Builder::new().name(format!("sluice-worker-{index}")).spawn(move || {
                INDEX.with(|i| i.set(index));
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })?;
            let handle =
                handle_rx.recv().map_err(|_| io::Error::other("worker thread died while starting"))??;
            handles.push(handle);
            stops.push(stop_tx);
        }
        let load = (0..n).map(|_| AtomicUsize::new(0)).collect();
        Ok(Self { handles, stops, load })
    }

    /// The worker serving the fewest connections, with the new one counted against it.
    pub fn least_loaded(&self) -> (&Handle, Load) {
        let index =
            (0..self.handles.len()).min_by_key(|i| self.load[*i].load(Ordering::Relaxed)).unwrap_or(0);
        self.load[index].fetch_add(1, Ordering::Relaxed);
        (&self.handles[index], Load { load: self.load.clone(), index })
    }

    /// Connections per worker.
    pub fn connections(&self) -> Vec<usize> {
        self.load.iter().map(|l| l.load(Ordering::Relaxed)).collect()
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.load[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Index of the worker running the caller; 0 outside the workers (tests, the control thread).
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// One CPU's worth of workers per core the process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
