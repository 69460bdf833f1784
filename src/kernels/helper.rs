//! A second core for a decoding step's products.
//!
//! A greedy step is a chain of one-row products, each streaming its weights from memory in tens
//! to hundreds of microseconds (ViT-GPT2: 72 of them, 124 MB in q8). One core streams at most
//! what its own outstanding cache misses allow; two streaming halves of a product get more of
//! the memory's bandwidth. Handing each half to tract's thread pool cost more than it saved:
//! a worker asleep between products takes tens of microseconds to wake, and the caller sleeps
//! until it is done. So the caller computes one half itself and a helper thread, spinning
//! between products (and parked after [`SPIN`] without work), the other. Used only where the
//! plan runs with two threads or more, by one caller at a time (others run alone).

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the helper waits for work, spinning, before it parks: longer than the gaps between
/// the products of a step and between steps, short enough not to hold a core after decoding.
const SPIN: Duration = Duration::from_millis(2);

/// The other half of a product, on the caller's stack while the caller waits for it.
struct Job<'a> {
    part: &'a (dyn Fn(Range<usize>) + Sync),
    range: Range<usize>,
}

struct Helper {
    /// The job, or null; set by the caller, cleared by the helper when done.
    job: AtomicPtr<Job<'static>>,
    done: AtomicBool,
    /// A job's `part` panicked on the helper.
    panicked: AtomicBool,
    /// The helper is parked or about to be (see `wait_for_job`).
    sleeping: AtomicBool,
    thread: std::thread::Thread,
}

/// The helper, started at first use; `None` where a thread could not be started.
fn helper() -> Option<&'static Helper> {
    static HELPER: OnceLock<Option<&'static Helper>> = OnceLock::new();
    *HELPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<&'static Helper>();
        std::thread::Builder::new()
            .name("glance-helper".into())
            .spawn(move || {
                let helper: &'static Helper = Box::leak(Box::new(Helper {
                    job: AtomicPtr::new(std::ptr::null_mut()),
                    done: AtomicBool::new(false),
                    panicked: AtomicBool::new(false),
                    sleeping: AtomicBool::new(false),
                    thread: std::thread::current(),
                }));
                if tx.send(helper).is_ok() {
                    run(helper);
                }
            })
            .ok()?;
        rx.recv().ok()
    })
}

fn run(helper: &Helper) -> ! {
    loop {
        let job = wait_for_job(helper);
        // SAFETY: the caller keeps the job alive until `done` is set (see `split`).
        let job = unsafe { &*job };
        let part = job.part;
        let range = job.range.clone();
        if catch_unwind(AssertUnwindSafe(|| part(range))).is_err() {
            helper.panicked.store(true, Ordering::Relaxed);
        }
        helper.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        helper.done.store(true, Ordering::Release);
    }
}

fn wait_for_job(helper: &Helper) -> *mut Job<'static> {
    let mut since = Instant::now();
    loop {
        let job = helper.job.load(Ordering::Acquire);
        if !job.is_null() {
            return job;
        }
        if since.elapsed() < SPIN {
            std::hint::spin_loop();
            continue;
        }
        // Dekker with `split`: each side stores, then reads the other's flag (SeqCst), so a
        // job set while the helper goes to sleep is seen by one of them.
        helper.sleeping.store(true, Ordering::SeqCst);
        if helper.job.load(Ordering::SeqCst).is_null() {
            std::thread::park();
        }
        helper.sleeping.store(false, Ordering::SeqCst);
        since = Instant::now();
    }
}

/// Runs `part` on `0..tasks`, the second half on the helper, when the plan being run has two
/// threads or more and the helper is free; returns false, having run nothing, otherwise.
pub(super) fn split(tasks: usize, part: &(dyn Fn(Range<usize>) + Sync)) -> bool {
    use tract_linalg::multithread::{current_tract_executor, Executor};
    static CALLER: Mutex<()> = Mutex::new(());
    let threads = match current_tract_executor() {
        Executor::MultiThread(pool) => pool.current_num_threads(),
        _ => 1,
    };
    if threads < 2 || tasks < 2 {
        return false;
    }
    let Ok(_caller) = CALLER.try_lock() else {
        return false;
    };
    let Some(helper) = helper() else {
        return false;
    };
    let half = tasks / 2;
    let job = Job {
        part,
        range: half..tasks,
    };
    helper.done.store(false, Ordering::Relaxed);
    // SAFETY (the lifetime): the helper drops its reference before it sets `done`, and this
    // function returns only after `done`.
    let job_ptr = &job as *const Job as *mut Job<'static>;
    helper.job.store(job_ptr, Ordering::SeqCst);
    if helper.sleeping.load(Ordering::SeqCst) {
        helper.thread.unpark();
    }
    let mine = catch_unwind(AssertUnwindSafe(|| part(0..half)));
    while !helper.done.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    if helper.panicked.swap(false, Ordering::Relaxed) {
        panic!("a product's half panicked on glance's helper thread");
    }
    if let Err(panic) = mine {
        std::panic::resume_unwind(panic);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_linalg::multithread::{multithread_tract_scope, Executor};

    #[test]
    fn every_task_runs_once_and_only_with_threads() {
        let seen = Mutex::new(Vec::new());
        let part = |r: Range<usize>| seen.lock().unwrap().push(r);
        // One thread: nothing runs, the caller goes on alone.
        assert!(!split(10, &part));
        assert!(seen.lock().unwrap().is_empty());
        // Two: halves, many times over (the helper spins, parks, wakes).
        let two = Executor::multithread(2);
        for round in 0..200 {
            let ran = multithread_tract_scope(two.clone(), || split(10, &part));
            if !ran {
                // Another test holds the helper: then nothing ran.
                assert!(seen.lock().unwrap().is_empty());
                continue;
            }
            let mut got = std::mem::take(&mut *seen.lock().unwrap());
            got.sort_by_key(|r| r.start);
            assert_eq!(got, [0..5, 5..10], "round {round}");
            if round % 50 == 0 {
                std::thread::sleep(SPIN * 2);
            }
        }
    }
}
