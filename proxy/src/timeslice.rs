//! Worker threads offer their core to others every millisecond.
//!
//! A tokio worker does not sleep while any task of the runtime is ready: it takes work from
//! the other workers and from the shared I/O driver. When the workers get fewer cores than
//! there are of them (a busy or quota-limited host, or the benchmark's split, where the
//! second worker's core also runs the client and the backend), two runnable workers share
//! one core, and the kernel switches between them only at its tick, every 4 ms at
//! `HZ=250`. The connection the descheduled worker was serving, an HTTP/2 connection with
//! all its streams or an HTTP/1.1 exchange, waits the whole time: at two workers, one
//! connection in ten stalled at every tick, and the 99th percentile was 4.4 ms where one
//! worker had 1.0 ms.
//!
//! So after polling a connection's task, a worker whose turn has lasted [`SLICE`] calls
//! `sched_yield` and begins a new turn once it has the core back. A waiting worker gets the
//! core within about a millisecond, and the yielding worker has finished that poll, so none
//! of its connections stops halfway. With a core to itself the call returns at once, at
//! most a thousand times a second. Under EEVDF a yield moves the worker's deadline, not its
//! share of the CPU.
//!
//! One worker runs on tokio's current-thread scheduler: its tasks wait for that one thread
//! whatever it does, so it never turns this on.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// How long a worker polls tasks before it offers its core: a quarter of the 4 ms tick of
/// common kernels. With builds alternating in one run at two workers (HTTP/2), 0.5 ms cut
/// the p99 further (1.42 against 1.62 ms) but cost 8% of the requests per second, and 2 ms
/// left it at 2.5 ms; 1 ms kept the rate of the build without yields.
pub const SLICE: Duration = Duration::from_millis(1);

static ENABLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static TURN: Turn = const { Turn::new() };
}

/// Turns the yields on for the whole process: for runtimes of two or more workers.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// `tokio::spawn` for the tasks requests go through (client connections, the upstream
/// connections hyper drives, upgraded connections' relays): with the yields on, each poll
/// of the task ends the worker's turn if it has lasted a [`SLICE`].
pub(crate) fn spawn<F>(task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if !ENABLED.load(Ordering::Relaxed) {
        return tokio::spawn(task);
    }
    tokio::spawn(async move {
        let mut task = pin!(task);
        poll_fn(|cx| {
            let poll = task.as_mut().poll(cx);
            TURN.with(|turn| {
                if turn.due(Instant::now()) {
                    // A failed yield (it cannot fail on Linux) only means the worker keeps
                    // the core. The next turn begins when the worker has the core back.
                    let _ = nix::sched::sched_yield();
                    turn.begin(Instant::now());
                }
            });
            poll
        })
        .await
    })
}

/// One worker's current turn: when it began, once the worker has polled a task.
struct Turn {
    since: Cell<Option<Instant>>,
}

impl Turn {
    const fn new() -> Self {
        Self {
            since: Cell::new(None),
        }
    }

    /// Whether a [`SLICE`] has passed by `now` since the turn began; the first poll begins one.
    fn due(&self, now: Instant) -> bool {
        match self.since.get() {
            Some(since) => now.saturating_duration_since(since) >= SLICE,
            None => {
                self.begin(now);
                false
            }
        }
    }

    fn begin(&self, now: Instant) {
        self.since.set(Some(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_spawned_with_yields_is_woken_and_finishes() {
        enable();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let task = spawn(async move { receiver.await.map(|n: u32| n + 1) });
        tokio::task::yield_now().await;
        sender.send(41).ok();
        let answer = tokio::time::timeout(Duration::from_secs(10), task).await;
        assert!(
            matches!(answer, Ok(Ok(Ok(42)))),
            "the wrapped task must see its wake-up and return its output: {answer:?}"
        );
    }

    #[test]
    fn a_turn_is_due_once_a_slice_has_passed_since_it_began() {
        let turn = Turn::new();
        let start = Instant::now();
        assert!(!turn.due(start), "the first poll only starts the turn");
        assert!(!turn.due(start + SLICE / 2));
        assert!(turn.due(start + SLICE));
        assert!(turn.due(start + SLICE * 2), "due until a new turn begins");
        turn.begin(start + SLICE * 3);
        assert!(!turn.due(start + SLICE * 3 + SLICE / 2));
        assert!(turn.due(start + SLICE * 4));
    }
}
