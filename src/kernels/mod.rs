//! Compute kernels glance brings itself, where tract's are slow on a CPU people use.

pub mod attention;
pub mod float;
mod helper;
pub mod int8;

/// Whether this CPU has AVX2 (detected once): the int8 kernel's and the attention kernel's
/// x86 code.
pub fn avx2() -> bool {
    #[cfg(test)]
    if tests::PORTABLE.get() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has AVX2 and fused multiply-adds (detected once): the attention kernel's
/// blocked product and the f32 product kernel.
pub fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        avx2() && *DETECTED.get_or_init(|| std::arch::is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Below this many multiply-adds a product runs on one thread: waking a pool costs more.
const PARALLEL_MACS: usize = 1 << 20;
/// A product of at most a micro-tile's rows (a decoding step, greedy or four beams) streams its
/// weights from memory: when the helper thread is busy, it is split over tract's pool only from
/// this many weight bytes on (an LM head). Measured with the int8 kernel, `glance matmul` on Zen
/// 4, one thread against two: 1x768x3072 (2.4 MB) 97.9 against 63.3 GOP/s, 1x256x64044 (16.4
/// MB) 54.5 against 86.3, 1x768x50257 36.2 against 56.8; the ViT-GPT2 q8 step at two threads
/// went from 14.6-20.0 to 13.2-15.1 ms greedy and from 34.6-41.5 to 30.8-31.3 ms at four beams.
const PARALLEL_STREAM_BYTES: usize = 8 << 20;
/// Weight bytes from which a decoding step's product (at most a micro-tile's rows) has the
/// helper thread ([`helper`]) stream half of them. ViT-GPT2 q8, `glance bench --threads 2
/// --num-beams 1`, alternating: without the helper 8.7-10.7 ms a token, from 64 KiB 6.4-6.8,
/// from 256 KiB 6.4-8.0, from 1 MB 7.7-8.0.
const HELPED_BYTES: usize = 256 << 10;

/// The size of a product by constant weights, which decides where [`split_product`] runs it.
struct Product {
    rows: usize,
    /// Rows of the kernel's micro-tile: a product of no more is a decoding step's.
    tile_rows: usize,
    macs: usize,
    weight_bytes: usize,
}

/// Runs a product's `part` on all of `0..tasks` (blocks of columns): a decoding step's with the
/// helper thread from [`HELPED_BYTES`] of weights on, else through [`split`], on the pool when
/// it is large enough ([`PARALLEL_MACS`]; a step's from [`PARALLEL_STREAM_BYTES`] on).
fn split_product(tasks: usize, work: Product, part: impl Fn(std::ops::Range<usize>) + Sync) {
    let step = work.rows <= work.tile_rows;
    if step && work.weight_bytes >= HELPED_BYTES && helper::split(tasks, &part) {
        return;
    }
    let worth = work.macs >= PARALLEL_MACS && (!step || work.weight_bytes >= PARALLEL_STREAM_BYTES);
    split(tasks, worth, part);
}

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

/// The largest value of `xs` (NEG_INFINITY when empty), in eight lanes the compiler
/// vectorises: `f32::max` folded over a row stays scalar (its NaN rule keeps the compiler from
/// reordering it). The rows softmax reads hold no NaN (the session rejects NaN logits).
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let whole = xs.chunks_exact(8);
    let rest = whole.remainder();
    for chunk in whole {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    rest.iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `e^x` for `x <= 0` in f32 (softmax after its maximum is subtracted), within about one unit
/// in the last place: Cephes' `expf` polynomial, written so the compiler can vectorise it
/// (libm's `expf` is a call per value, and was most of a softmax over a 578-position row).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // ln of f32's smallest normal number: below it, e^x is 0 for softmax's purposes (and 2^n
    // below would not be a normal number), so it is clamped there.
    let x = x.max(-87.336_54);
    // Round to nearest with the 1.5 * 2^23 trick (no rounding instruction needed): the low
    // bits of `shifted` then hold n as an integer too.
    const SHIFT: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + SHIFT;
    let n = shifted - SHIFT;
    // x - n ln 2 in two parts, so the reduction loses nothing.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from its exponent bits: n is in -126..=0 here. Read from `shifted`'s bits, not with
    // `n as i32`, whose saturating conversion kept the loops calling this scalar (a third of
    // an encoder's attention time went to its softmax).
    let n_bits = shifted.to_bits().wrapping_sub(SHIFT.to_bits());
    e * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::Cell;
    use std::sync::Mutex;
    use tract_linalg::multithread::{multithread_tract_scope, Executor};

    thread_local! {
        /// Makes [`avx2`] false on this thread, so x86 runs test the portable code too.
        pub static PORTABLE: Cell<bool> = const { Cell::new(false) };
    }

    /// Runs `f` on the portable code, then on this CPU's vector code.
    pub fn portable_then_native(f: impl Fn(&str)) {
        PORTABLE.set(true);
        f("portable");
        PORTABLE.set(false);
        f("native");
    }

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
