//! Compute kernels glance brings itself, where tract's are slow on a CPU people use.

pub mod attention;
pub mod int8;

/// Runs `part` on all of `0..tasks`: in contiguous ranges on tract's thread pool when the work
/// is worth waking it (`parallel`) and the plan being run has one (`RunOptions::executor`, the
/// threads the user asked for), else in one call.
fn split(tasks: usize, parallel: bool, part: impl Fn(std::ops::Range<usize>) + Sync) {
    use tract_linalg::multithread::{current_tract_executor, Executor};
    match current_tract_executor() {
        Executor::MultiThread(pool) if parallel && tasks > 1 => {
            let parts = pool.current_num_threads().min(tasks);
            pool.scope(|s| {
                for i in 0..parts {
                    let range = tasks * i / parts..tasks * (i + 1) / parts;
                    let part = &part;
                    s.spawn(move |_| part(range));
                }
            });
        }
        _ => part(0..tasks),
    }
}

/// `e^x` for `x <= 0` in f32 (softmax after its maximum is subtracted), within about one unit
/// in the last place: Cephes' `expf` polynomial, written so the compiler can vectorise it
/// (libm's `expf` is a call per value, and was most of a softmax over a 578-position row).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // ln of f32's smallest normal number: below it, e^x is 0 for softmax's purposes (and 2^n
    // below would not be a normal number), so it is clamped there.
    let x = x.max(-87.336_54);
    // Round to nearest with the 1.5 * 2^23 trick (no rounding instruction needed).
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    // x - n ln 2 in two parts, so the reduction loses nothing.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from its exponent bits: n is in -126..=0 here.
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tract_linalg::multithread::{multithread_tract_scope, Executor};

    /// The ranges `split` runs, sorted: each task exactly once.
    fn ranges(tasks: usize, parallel: bool) -> Vec<std::ops::Range<usize>> {
        let seen = Mutex::new(Vec::new());
        split(tasks, parallel, |r| seen.lock().unwrap().push(r));
        let mut seen = seen.into_inner().unwrap();
        seen.sort_by_key(|r| r.start);
        seen
    }

    #[test]
    fn split_runs_every_task_once() {
        // One range, all of the tasks.
        let whole = |tasks: usize| {
            let all = 0..tasks;
            vec![all]
        };
        assert_eq!(ranges(10, true), whole(10));
        let pooled = multithread_tract_scope(Executor::multithread(3), || {
            (
                ranges(10, true),
                ranges(2, true),
                ranges(10, false),
                ranges(0, true),
            )
        });
        assert_eq!(pooled.0, [0..3, 3..6, 6..10]);
        assert_eq!(pooled.1, [0..1, 1..2]);
        assert_eq!(pooled.2, whole(10));
        assert_eq!(pooled.3, whole(0));
    }

    #[test]
    fn exp_is_close_to_libm() {
        let mut worst = 0f32;
        for i in 0..=100_000 {
            let x = -90.0 * i as f32 / 100_000.0;
            let (got, want) = (exp(x), x.exp());
            if want > f32::MIN_POSITIVE {
                worst = worst.max((got - want).abs() / want);
            } else {
                assert!(got <= f32::MIN_POSITIVE * 2.0, "e^{x}: {got}");
            }
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
    }
}
