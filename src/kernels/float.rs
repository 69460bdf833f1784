//! f32 matrix products by constant weights: `c[m, n] = a[m, k] x b[k, n] (+ bias[n])`.
//!
//! Why glance has its own: on x86 (Zen 4, `glance matmul`, one thread) tract 0.23's f32
//! kernel ran an encoder's products at 74-102 GFLOP/s, where onnxruntime's reach 104-110 and
//! this one 110-115; and a decoding step's LM head (one row by 64044 columns) at 9.4 GFLOP/s,
//! where this one streams the weights at about 14. On aarch64 and armv7 tract's hand-written
//! kernels stay in charge (see `model::matmul`).
//!
//! Layout: the weights are packed once, at load, in panels of [`TILE`] columns, each panel
//! `[k, TILE]` row after row: one sequential stream, which a decoding step reads once from
//! memory and an encoder's rows read from L1 (a 384-deep panel is 24 KiB). A micro-tile is
//! [`MR`] rows of `a`, read where they are (row-major, no packing), by one panel: 12 AVX2
//! registers of sums, two of weights and one broadcast value, within AVX2's 16. Each output
//! is one sum in `k` order, the bias added after it, as the exported `MatMul` then `Add` do.

use std::ops::Range;

/// Columns per panel: two AVX2 registers.
const TILE: usize = 16;
/// Rows per micro-tile.
const MR: usize = 6;
/// Rows per block: the block's rows of `a` (96 x 384 values, 144 KiB) stay in L2 while every
/// panel passes over them.
const BLOCK_ROWS: usize = 16 * MR;

/// Weights `[k, n]` packed in panels of [`TILE`] columns (the last one padded with zeros).
#[derive(Debug)]
pub struct PackedWeights {
    k: usize,
    n: usize,
    panels: Vec<f32>,
}

impl PackedWeights {
    /// Packs row-major `b: [k, n]`.
    pub fn new(b: &[f32], k: usize, n: usize) -> Result<PackedWeights, String> {
        if b.len() != k * n || k == 0 || n == 0 {
            return Err(format!("{} weights for [{k}, {n}]", b.len()));
        }
        let mut panels = vec![0f32; n.div_ceil(TILE) * k * TILE];
        for (j, panel) in panels.chunks_exact_mut(k * TILE).enumerate() {
            let cols = j * TILE..((j + 1) * TILE).min(n);
            for (row, packed) in b.chunks_exact(n).zip(panel.chunks_exact_mut(TILE)) {
                packed[..cols.len()].copy_from_slice(&row[cols.clone()]);
            }
        }
        Ok(PackedWeights { k, n, panels })
    }

    fn panel(&self, j: usize) -> &[f32] {
        &self.panels[j * self.k * TILE..][..self.k * TILE]
    }

    fn panel_count(&self) -> usize {
        self.n.div_ceil(TILE)
    }
}

/// `c = a x b + bias` for row-major `a: [m, k]` and `c: [m, n]`; `bias`: `[n]` or empty.
pub fn matmul(
    a: &[f32],
    m: usize,
    b: &PackedWeights,
    bias: &[f32],
    c: &mut [f32],
) -> Result<(), String> {
    let (k, n) = (b.k, b.n);
    if a.len() != m * k || c.len() != m * n {
        return Err(format!(
            "activations of {} values and output of {} for [{m}, {k}] x [{k}, {n}]",
            a.len(),
            c.len()
        ));
    }
    if !bias.is_empty() && bias.len() != n {
        return Err(format!("a bias of {} values for {n} columns", bias.len()));
    }
    let out = Out(c.as_mut_ptr());
    let part = |panels: Range<usize>| {
        // SAFETY: `c` holds `m * n` values (checked above); each call writes the columns of
        // its own panels only.
        unsafe { panels_of(a, m, b, bias, panels, out) }
    };
    let work = super::Product {
        rows: m,
        tile_rows: MR,
        macs: m * k * n,
        weight_bytes: 4 * k * n,
    };
    super::split_product(b.panel_count(), work, part);
    Ok(())
}

/// Where the output is; threads write disjoint columns of it.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: see `panels_of`: each thread writes its own columns.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// Columns `TILE * panels` of every row.
///
/// # Safety
/// `out` points at `m * b.n` values; no other thread writes these columns meanwhile.
unsafe fn panels_of(
    a: &[f32],
    m: usize,
    b: &PackedWeights,
    bias: &[f32],
    panels: Range<usize>,
    out: Out,
) {
    for block in (0..m).step_by(BLOCK_ROWS) {
        let rows = block..(block + BLOCK_ROWS).min(m);
        for j in panels.clone() {
            let cols = j * TILE..((j + 1) * TILE).min(b.n);
            let bias = bias.get(cols.clone());
            let mut r = rows.start;
            while r < rows.end {
                let count = (rows.end - r).min(MR);
                let sums = micro(&a[r * b.k..], b.k, count, b.panel(j));
                for (i, sums) in sums.iter().enumerate().take(count) {
                    // SAFETY: row r + i < m, columns within n: inside `out` (the caller's
                    // contract), and only this thread's columns.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(
                            out.0.add((r + i) * b.n + cols.start),
                            cols.len(),
                        )
                    };
                    write(&sums[..cols.len()], bias, row);
                }
                r += count;
            }
        }
    }
}

/// One row's sums, plus the bias if any, to the output.
#[inline(always)]
fn write(sums: &[f32], bias: Option<&[f32]>, row: &mut [f32]) {
    match bias {
        Some(bias) => {
            for ((o, s), b) in row.iter_mut().zip(sums).zip(bias) {
                *o = s + b;
            }
        }
        None => row.copy_from_slice(sums),
    }
}

/// Sums of rows `0..count` of `a` (`lda` apart) by one panel.
fn micro(a: &[f32], lda: usize, count: usize, panel: &[f32]) -> [[f32; TILE]; MR] {
    let k = panel.len() / TILE;
    assert!(
        a.len() >= (count - 1) * lda + k,
        "micro-tile rows past the activations"
    );
    #[cfg(target_arch = "x86_64")]
    if super::avx2_fma() {
        use avx2::micro as m;
        // SAFETY: AVX2 and FMA were detected; the rows are within `a` (asserted).
        unsafe {
            return match count {
                1 => m::<1>(a, lda, panel),
                2 => m::<2>(a, lda, panel),
                3 => m::<3>(a, lda, panel),
                4 => m::<4>(a, lda, panel),
                5 => m::<5>(a, lda, panel),
                _ => m::<MR>(a, lda, panel),
            };
        }
    }
    let mut sums = [[0f32; TILE]; MR];
    for (p, w) in panel.chunks_exact(TILE).enumerate() {
        for (r, sum) in sums.iter_mut().enumerate().take(count) {
            let x = a[r * lda + p];
            for (s, w) in sum.iter_mut().zip(w) {
                *s += x * w;
            }
        }
    }
    sums
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, TILE};
    use std::arch::x86_64::*;

    /// [`super::micro`] for `R` rows. With one or two rows a single chain of multiply-adds per
    /// register would wait on the previous one's latency (4 cycles, 2 issued per cycle): the
    /// steps over `k` are dealt to `SETS` sets of sums, added at the end.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `a` holds `R` rows of `panel.len() / TILE` values,
    /// `lda` apart.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn micro<const R: usize>(a: &[f32], lda: usize, panel: &[f32]) -> [[f32; TILE]; MR] {
        const MAX_SETS: usize = 4;
        let sets = match R {
            1 => 4,
            2 => 2,
            _ => 1,
        };
        let k = panel.len() / TILE;
        let rows: [*const f32; R] = std::array::from_fn(|r| a[r * lda..].as_ptr());
        let mut acc = [[[_mm256_setzero_ps(); 2]; R]; MAX_SETS];
        let w = panel.as_ptr();
        // SAFETY (both loops): row p of the panel is within it (p < k); each row of `a` holds
        // k values (the caller's contract).
        let step = |acc: &mut [[__m256; 2]; R], p: usize| unsafe {
            let w = w.add(p * TILE);
            let (w0, w1) = (_mm256_loadu_ps(w), _mm256_loadu_ps(w.add(8)));
            for r in 0..R {
                let x = _mm256_broadcast_ss(&*rows[r].add(p));
                acc[r][0] = _mm256_fmadd_ps(x, w0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(x, w1, acc[r][1]);
            }
        };
        let whole = k / sets * sets;
        for p in (0..whole).step_by(sets) {
            for (s, acc) in acc.iter_mut().enumerate().take(sets) {
                step(acc, p + s);
            }
        }
        for p in whole..k {
            step(&mut acc[0], p);
        }
        let mut sums = [[0f32; TILE]; MR];
        for (r, sum) in sums.iter_mut().enumerate().take(R) {
            let mut total = acc[0][r];
            for set in &acc[1..sets] {
                total = [
                    _mm256_add_ps(total[0], set[r][0]),
                    _mm256_add_ps(total[1], set[r][1]),
                ];
            }
            // SAFETY: 16 values, within the row of sums.
            unsafe {
                _mm256_storeu_ps(sum.as_mut_ptr(), total[0]);
                _mm256_storeu_ps(sum.as_mut_ptr().add(8), total[1]);
            }
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::portable_then_native;
    use tract_linalg::multithread::{multithread_tract_scope, Executor};

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104_729) % 1999) as f32 / 999.5 - 1.0)
            .collect()
    }

    /// The definition, in f64.
    fn reference(a: &[f32], m: usize, b: &[f32], k: usize, n: usize, bias: &[f32]) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let sum: f64 = (0..k)
                    .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                    .sum();
                c[i * n + j] = (sum + bias.get(j).map_or(0.0, |&b| b as f64)) as f32;
            }
        }
        c
    }

    #[test]
    fn products_match_the_definition_for_every_edge() {
        portable_then_native(|path| {
            // Rows: one (a greedy step), four (beams), a micro-tile and a tail, more than a
            // block; columns: less than a panel, whole panels, a tail.
            for (m, k, n) in [
                (1, 7, 5),
                (4, 33, 16),
                (6, 64, 48),
                (13, 20, 37),
                (101, 9, 70),
            ] {
                let (a, b) = (values(m * k, 1), values(k * n, 2));
                let packed = PackedWeights::new(&b, k, n).unwrap();
                for bias in [vec![], values(n, 3)] {
                    let mut c = vec![f32::NAN; m * n];
                    matmul(&a, m, &packed, &bias, &mut c).unwrap();
                    let want = reference(&a, m, &b, k, n, &bias);
                    for (i, (got, want)) in c.iter().zip(&want).enumerate() {
                        assert!(
                            (got - want).abs() <= 1e-5 * k as f32,
                            "{path} {m}x{k}x{n} bias {}: [{i}] {got} vs {want}",
                            !bias.is_empty()
                        );
                    }
                }
            }
        });
    }

    #[test]
    fn threads_give_the_same_bits() {
        // Large enough to be split on the pool (`kernels::PARALLEL_MACS`), with a panel tail;
        // and a decoding step's row, split with the helper thread (`kernels::HELPED_BYTES`).
        for (m, k, n) in [(40, 128, 250), (1, 128, 1000)] {
            let (a, b, bias) = (values(m * k, 4), values(k * n, 5), values(n, 6));
            let packed = PackedWeights::new(&b, k, n).unwrap();
            let run = || {
                let mut c = vec![0f32; m * n];
                matmul(&a, m, &packed, &bias, &mut c).unwrap();
                c
            };
            let one = run();
            for threads in [2, 3] {
                let many = multithread_tract_scope(Executor::multithread(threads), run);
                assert_eq!(one, many, "{m}x{k}x{n}, {threads} threads");
            }
        }
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(PackedWeights::new(&[0.0; 6], 2, 4).is_err());
        assert!(PackedWeights::new(&[], 0, 4).is_err());
        let packed = PackedWeights::new(&[1.0; 6], 2, 3).unwrap();
        let mut c = [0f32; 3];
        assert!(matmul(&[1.0; 3], 1, &packed, &[], &mut c).is_err());
        assert!(matmul(&[1.0; 2], 1, &packed, &[0.0; 2], &mut c).is_err());
        assert!(matmul(&[1.0; 2], 1, &packed, &[], &mut [0f32; 4]).is_err());
        matmul(&[1.0; 2], 1, &packed, &[0.5; 3], &mut c).unwrap();
        assert_eq!(c, [2.5; 3]);
    }
}
