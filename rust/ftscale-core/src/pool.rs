//! The crate's one rayon pool.
//!
//! Sized from `FTSCALE_NUM_THREADS` (default: all cores) when first used, or explicitly per
//! call. Fork-safe: Ray forks worker processes, and a forked child inherits the pool's data
//! structures but none of its threads, so using the parent's pool would hang forever. We
//! remember the pid that built each pool and build a fresh one in a child (the parent's
//! pool object is leaked in the child on purpose: dropping it would signal threads that do
//! not exist there).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

pub const THREADS_ENV: &str = "FTSCALE_NUM_THREADS";

struct Pools {
    pid: u32,
    by_size: HashMap<usize, Arc<ThreadPool>>,
}

static POOLS: Mutex<Option<Pools>> = Mutex::new(None);

/// Number of threads used when a call does not ask for a number.
pub fn default_num_threads() -> usize {
    std::env::var(THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn pool(num_threads: usize) -> Arc<ThreadPool> {
    let pid = std::process::id();
    let mut guard = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    if guard.as_ref().is_some_and(|p| p.pid != pid) {
        // Forked child: the parent's pools have no threads here.
        if let Some(old) = guard.take() {
            std::mem::forget(old);
        }
    }
    let pools = guard.get_or_insert_with(|| Pools { pid, by_size: HashMap::new() });
    pools
        .by_size
        .entry(num_threads)
        .or_insert_with(|| {
            Arc::new(
                ThreadPoolBuilder::new()
                    .num_threads(num_threads)
                    .thread_name(|i| format!("ftscale-{i}"))
                    .build()
                    .expect("failed to start the ftscale thread pool"),
            )
        })
        .clone()
}

/// Run `f` inside the pool of `num_threads` threads (`None`: the default size).
/// Every parallel iterator in the crate runs through here; outputs never depend on the size.
pub fn install<R: Send>(num_threads: Option<usize>, f: impl FnOnce() -> R + Send) -> R {
    // Even one thread runs inside a pool of ours, so no par_iter escapes to rayon's global pool.
    let n = num_threads.filter(|&n| n > 0).unwrap_or_else(default_num_threads);
    pool(n).install(f)
}
