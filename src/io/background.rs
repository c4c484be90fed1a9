//! Blocking threads for work nobody waits on, at a lower CPU priority than the threads that
//! serve requests. A cache fill's disk writer copies every byte of a miss to the page cache
//! and checksums it; on a busy machine that work ran at the same priority as the request
//! path and delayed the next request's first byte (measured with `bench/run.sh`'s TTFB of
//! back-to-back 1 MiB misses: about half of the machine's CPU went to writers). On these
//! threads the scheduler prefers the request path, and the writers catch up when the CPU is
//! free; a writer that falls too far behind makes its fill wait (see `cache::fill`), so
//! nothing is lost, only deferred.
//!
//! The threads are the blocking pool of a runtime of their own (never driven: it only holds
//! the pool), so they are reused, bounded and retired like tokio's own blocking threads.

use std::sync::OnceLock;

/// The nice value of the background threads (0 is the default, 19 the lowest priority).
/// Raising a thread's nice value needs no privilege; lowering it back would.
pub const NICE: i32 = 10;

/// At most this many background threads at once; more work waits for one (like
/// `spawn_blocking` at tokio's limit).
const MAX_THREADS: usize = 512;

fn pool() -> Option<&'static tokio::runtime::Runtime> {
    static POOL: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    POOL.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .thread_name("cache-writer")
            .max_blocking_threads(MAX_THREADS)
            .on_thread_start(lower_priority)
            .build()
            .map_err(|e| tracing::warn!(error = %e, "no background thread pool; disk writes run at normal priority"))
            .ok()
    })
    .as_ref()
}

/// Lowers the calling thread's priority to [`NICE`] (on Linux a nice value is per thread);
/// never raises it.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        if getpriority_process(None).is_ok_and(|p| p >= NICE) {
            return;
        }
        if let Err(e) = setpriority_process(None, NICE) {
            tracing::debug!(error = %e, "could not lower a background thread's priority");
        }
    }
}

/// Runs `f` on a background thread; like `tokio::task::spawn_blocking`, which it falls
/// back to when the pool could not be built.
pub fn spawn<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match pool() {
        Some(rt) => rt.spawn_blocking(f),
        None => tokio::task::spawn_blocking(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn background_threads_run_at_a_lower_priority() {
        let here = rustix::process::getpriority_process(None).unwrap();
        let there = spawn(|| rustix::process::getpriority_process(None).unwrap())
            .await
            .unwrap();
        assert_eq!(there, NICE.max(here));
        // The caller's own priority is untouched (it is per thread).
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), here);
    }

    #[tokio::test]
    async fn results_come_back_to_the_caller() {
        let handles: Vec<_> = (0..64u64).map(|i| spawn(move || i * i)).collect();
        let mut sum = 0u64;
        for h in handles {
            sum += h.await.unwrap();
        }
        assert_eq!(sum, (0..64u64).map(|i| i * i).sum::<u64>());
    }
}
