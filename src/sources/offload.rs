//! Large items run their pipeline on a thread of the blocking pool: parsing
//! and hashing tens of megabytes is CPU work that holds an async worker for
//! a long time, and the gateway has only as many workers as cores, so every
//! small request behind it would wait (a form post waited 19.7 s behind a
//! round of 49 MB mails, tests/memory_budget.rs). The item's I/O (Redis,
//! clamd) still goes through the runtime; only the thread is another.

use std::future::Future;

/// Items at least this large are run off the async workers.
pub const LARGE_ITEM: usize = 1 << 20;

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
    let runtime = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || runtime.block_on(work)).await {
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

    #[tokio::test]
    async fn a_small_item_runs_in_place() {
        let here = std::thread::current().id();
        let ran_on = process(10, async { std::thread::current().id() }).await;
        assert_eq!(ran_on, here);
    }
}
