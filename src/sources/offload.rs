//! Large items run their pipeline on a thread of their own, off the async
//! workers, at a lower CPU priority: parsing, hashing and encoding tens of
//! megabytes holds a thread for a long time, the gateway has only as many
//! workers as cores, and every small request behind it would wait (a form
//! post waited 19.7 s behind a round of 49 MB mails, tests/memory_budget.rs).
//! Its I/O (Redis, clamd) works from any runtime; only the thread differs.
//!
//! The daemon runs large items on a runtime of their own ([`bulk_runtime`])
//! whose threads yield the CPU to the workers; without one (the in-process
//! test gateway) they go to the current runtime's blocking pool.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime};

/// Items at least this large are run off the async workers.
pub const LARGE_ITEM: usize = 1 << 20;

/// The nice value of the large items' threads: they get about a tenth of
/// the CPU a worker gets when both want it, all of it when the workers idle.
const BULK_NICE: i32 = 10;

static BULK: OnceLock<Handle> = OnceLock::new();

/// A runtime for large items, its threads at a lower CPU priority (Linux
/// nice values are per thread). One worker; the items run on its blocking
/// pool, a thread each.
pub fn bulk_runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("intake-bulk")
        .on_thread_start(lower_priority)
        .enable_all()
        .build()
}

/// Sends large items to `runtime` from now on (set once, before serving).
pub fn set_bulk_runtime(runtime: Handle) {
    let _ = BULK.set(runtime);
}

fn lower_priority() {
    // SAFETY: setpriority takes no pointers; on Linux, PRIO_PROCESS with
    // who = 0 names the calling thread. A refusal leaves the priority as it
    // was, which is only slower for small requests, never wrong.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, BULK_NICE);
    }
}

/// Runs `work`, the processing of an item of `size` bytes, to its end: on
/// a blocking thread when the item is large, in place otherwise. Once
/// begun it is not cancelled by the client going away: an item the
/// pipeline stores is answered to its client's retry by its key.
pub async fn process<F>(size: usize, work: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if size < LARGE_ITEM {
        return work.await;
    }
    let runtime = BULK.get().cloned().unwrap_or_else(Handle::current);
    let running = runtime.clone();
    match runtime.spawn_blocking(move || running.block_on(work)).await {
        Ok(output) => output,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only a runtime shutting down cancels a blocking task.
            Err(e) => panic!("the runtime stopped under a large item: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_large_item_does_not_hold_the_only_worker() {
        let (ran, small_ran) = std::sync::mpsc::channel();
        // CPU work standing in for parsing a big mail: it holds its thread
        // until a small task has run, which needs the one worker.
        let large = tokio::spawn(process(LARGE_ITEM, async move {
            small_ran
                .recv_timeout(std::time::Duration::from_secs(10))
                .is_ok()
        }));
        tokio::task::yield_now().await;
        tokio::spawn(async move { ran.send(()) });
        assert!(
            large.await.unwrap(),
            "a small task ran on the worker while the large item was busy"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_bulk_runtime_threads_yield_the_cpu_to_the_workers() {
        let bulk = bulk_runtime().unwrap();
        // SAFETY: getpriority takes no pointers.
        let nice = bulk
            .block_on(bulk.spawn_blocking(|| unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }))
            .unwrap();
        assert_eq!(
            nice, BULK_NICE,
            "a large item's thread runs at nice {BULK_NICE}"
        );
        // SAFETY: as above.
        let here = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_ne!(here, BULK_NICE, "other threads keep their priority");
    }

    #[tokio::test]
    async fn a_small_item_runs_in_place() {
        let here = std::thread::current().id();
        let ran_on = process(10, async { std::thread::current().id() }).await;
        assert_eq!(ran_on, here);
    }
}
