//! `MatMulInteger` by constant weights: `c[m, n] = sum_k (a[m, k] - a0) * (b[k, n] - b0[n])`,
//! exact in i32 like the ONNX operator.
//!
//! Why glance has its own: tract 0.23's int8 kernel for x86 CPUs without VNNI runs at about
//! 1 GOP/s (`glance matmul`), so quantized models used to be widened to f32 there, which
//! costs four times the weights' memory and runs at f32 speed. This kernel widens 8-bit values
//! to i16 and multiplies pairs with AVX2's `vpmaddwd`: twice the multiply-adds of an f32 FMA per
//! instruction, exact (no `vpmaddubsw` saturation), and weights read as bytes.
//!
//! Layout: the weights are packed once, at load, in tiles of [`TILE`] columns; within a tile,
//! each pair of rows `(2j, 2j+1)` is 32 bytes, two halves of [`NR`] columns with column `c`'s
//! two values at `2c` and `2c + 1` of its half. One `vpmovsxbw`/`vpmovzxbw` load of a half
//! makes the 16 i16 lanes that `vpmaddwd` multiplies by a broadcast pair of activations, giving
//! 8 columns' partial sums. A tile is one sequential stream of bytes, prefetched ahead: at a
//! decoding step (one to a few rows) the product only streams the weights from memory, and two
//! interleaved streams per tile ran at half the bandwidth. Activations are packed per
//! call into such pairs, zero point subtracted. Weight zero points are applied at the end:
//! `sum (a - a0) * b - b0 * sum (a - a0)`. i32 sums wrap like the reference operator's.
//!
//! On CPUs with VNNI (AVX-512 VNNI, AVX-VNNI), `vpdpbusd` multiplies unsigned by signed bytes
//! and adds four products into each i32 lane, exact too (`vpdpbusds` is the saturating one): one
//! instruction for what takes a widening load and a `vpmaddwd` per row pair. There the weights
//! are laid out in row quads, as int8 (uint8 weights less 128, and their zero points), the
//! activations stay unsigned bytes, and their zero point is applied at the end through each
//! column's sum of weights: `sum a * b' - a0 * sum b' - b0' * sum (a - a0)`.

use std::ops::Range;

/// Columns per half tile: one AVX2 register of i32 sums.
const NR: usize = 8;
/// Columns per tile.
const TILE: usize = 2 * NR;
/// Bytes per row pair of a tile.
const PAIR_BYTES: usize = 2 * TILE;
/// Bytes per row quad of a tile (VNNI): two halves of [`NR`] columns, each column's four
/// values contiguous.
const QUAD_BYTES: usize = 4 * TILE;
/// Rows per micro-tile: 4 rows x 2 halves = 8 accumulators, plus 2 weight and 1 activation
/// registers, within AVX2's 16.
const MR: usize = 4;
/// Bytes of packed activations a block of rows may take, so a block stays in L1 while a
/// weight tile streams past it.
const A_BLOCK_BYTES: usize = 32 * 1024;

/// 8-bit values and whether they are signed (int8) or not (uint8).
#[derive(Debug, Clone, Copy)]
pub struct Bytes<'a> {
    pub values: &'a [u8],
    pub signed: bool,
}

impl Bytes<'_> {
    fn get(&self, i: usize) -> i32 {
        if self.signed {
            self.values[i] as i8 as i32
        } else {
            self.values[i] as i32
        }
    }
}

/// Constant `[k, n]` weights packed for [`matmul`].
#[derive(Debug, Clone)]
pub struct PackedB {
    k: usize,
    n: usize,
    signed: bool,
    /// Per-column zero points; `None` when all are zero (symmetric quantization).
    zero: Option<Vec<i32>>,
    /// `n / TILE` tiles (rounded up) of `k / 2` row pairs (rounded up) of `PAIR_BYTES`, or
    /// with VNNI of `k / 4` row quads of `QUAD_BYTES`; padding is 0.
    tiles: Vec<u8>,
    /// With VNNI: the instructions, and each column's sum of its (int8) weights.
    quads: Option<Quads>,
}

#[derive(Debug, Clone)]
struct Quads {
    // Read by the x86 micro-kernels only; elsewhere `vnni()` finds none.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    vnni: Vnni,
    column_sums: Vec<i32>,
}

/// Which `vpdpbusd` this CPU has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Vnni {
    /// AVX-512 VNNI with 256-bit registers (AVX-512 VL).
    Avx512,
    /// AVX-VNNI (the VEX encoding, on CPUs without AVX-512).
    Avx,
}

impl PackedB {
    /// Packs row-major `[k, n]` weights; `zero` holds one zero point or one per column.
    pub fn new(b: Bytes, k: usize, n: usize, zero: &[i32]) -> Result<PackedB, String> {
        if b.values.len() != k * n {
            return Err(format!("{} weights for [{k}, {n}]", b.values.len()));
        }
        if k == 0 || n == 0 {
            return Err(format!("empty weights [{k}, {n}]"));
        }
        let zero = match zero.len() {
            0 => None,
            1 => Some(vec![zero[0]; n]),
            len if len == n => Some(zero.to_vec()),
            len => return Err(format!("{len} zero points for {n} columns")),
        }
        .filter(|z| z.iter().any(|&v| v != 0));
        if let Some(vnni) = vnni() {
            return Ok(PackedB::quads(b, k, n, zero, vnni));
        }
        let pairs = k.div_ceil(2);
        // Written in order, one row pair of a tile at a time (the load time of a large LM head).
        let mut tiles = vec![0u8; n.div_ceil(TILE) * pairs * PAIR_BYTES];
        for (at, pair_bytes) in tiles.chunks_exact_mut(PAIR_BYTES).enumerate() {
            let (tile, pair) = (at / pairs, at % pairs);
            let cols = tile * TILE..((tile + 1) * TILE).min(n);
            for parity in 0..2 {
                let row = 2 * pair + parity;
                if row >= k {
                    break;
                }
                let values = &b.values[row * n + cols.start..row * n + cols.end];
                for (c, &v) in values.iter().enumerate() {
                    pair_bytes[2 * c + parity] = v;
                }
            }
        }
        Ok(PackedB {
            k,
            n,
            signed: b.signed,
            zero,
            tiles,
            quads: None,
        })
    }

    /// The VNNI layout: int8 weights in row quads (uint8 ones less 128, their zero points too,
    /// so that `b - b0` is unchanged), with each column's sum.
    fn quads(b: Bytes, k: usize, n: usize, zero: Option<Vec<i32>>, vnni: Vnni) -> PackedB {
        let shift = if b.signed { 0 } else { 128 };
        let weight = |at: usize| (b.get(at) - shift) as i8;
        let zero = if b.signed {
            zero
        } else {
            let zero = zero.unwrap_or_else(|| vec![0; n]);
            Some(zero.iter().map(|z| z - shift).collect())
        };
        let quads = k.div_ceil(4);
        let mut tiles = vec![0u8; n.div_ceil(TILE) * quads * QUAD_BYTES];
        for (at, quad_bytes) in tiles.chunks_exact_mut(QUAD_BYTES).enumerate() {
            let (tile, quad) = (at / quads, at % quads);
            let cols = tile * TILE..((tile + 1) * TILE).min(n);
            for i in 0..4 {
                let row = 4 * quad + i;
                if row >= k {
                    break;
                }
                for (c, col) in cols.clone().enumerate() {
                    quad_bytes[(c / NR) * 4 * NR + (c % NR) * 4 + i] = weight(row * n + col) as u8;
                }
            }
        }
        // Row by row: the weights are row-major.
        let mut column_sums = vec![0i32; n];
        for row in 0..k {
            for (col, sum) in column_sums.iter_mut().enumerate() {
                *sum = sum.wrapping_add(weight(row * n + col) as i32);
            }
        }
        PackedB {
            k,
            n,
            signed: true,
            zero: zero.filter(|z| z.iter().any(|&v| v != 0)),
            tiles,
            quads: Some(Quads { vnni, column_sums }),
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes of one tile.
    fn tile_len(&self) -> usize {
        match self.quads {
            Some(_) => self.k.div_ceil(4) * QUAD_BYTES,
            None => self.k.div_ceil(2) * PAIR_BYTES,
        }
    }

    fn tile(&self, t: usize) -> &[u8] {
        let len = self.tile_len();
        &self.tiles[t * len..(t + 1) * len]
    }

    fn tile_count(&self) -> usize {
        self.n.div_ceil(TILE)
    }
}

/// Activations packed for the weights' layout, with each row's sum of `a - a0` (for the
/// weights' zero points): i16 pairs `(a[2j] - a0) | (a[2j + 1] - a0) << 16`, or for VNNI the
/// unsigned bytes `a[4j..4j + 4]` in each word and their zero point `a0` apart.
struct PackedA {
    /// Words per row.
    words_per_row: usize,
    words: Vec<i32>,
    sums: Vec<i32>,
    /// The zero point of VNNI's unsigned activations (0 for pairs, already subtracted).
    zero: i32,
}

impl PackedA {
    /// For `b`, from row-major `[m, k]` activations as unsigned bytes and their zero point.
    fn new(m: usize, k: usize, b: &PackedB, bytes: &[u8], zero: i32) -> PackedA {
        let quads = b.quads.is_some();
        let words_per_row = k.div_ceil(if quads { 4 } else { 2 });
        let mut words = vec![0i32; m * words_per_row];
        let mut sums = vec![0i32; m];
        let rows = bytes
            .chunks_exact(k)
            .zip(words.chunks_exact_mut(words_per_row));
        for ((row, words), sum) in rows.zip(&mut sums) {
            // `sum (a - a0)` as the wrapping i32 sums of the products wrap.
            let total = row.iter().fold(0u32, |t, &v| t.wrapping_add(v as u32));
            *sum = (total as i32).wrapping_sub((k as i32).wrapping_mul(zero));
            // Whole words in fixed-size pieces (vectorised), then the last one, if partial.
            if quads {
                let (whole, rest) = row.as_chunks::<4>();
                for (word, four) in words.iter_mut().zip(whole) {
                    *word = i32::from_le_bytes(*four);
                }
                if !rest.is_empty() {
                    let mut four = [0u8; 4];
                    four[..rest.len()].copy_from_slice(rest);
                    words[whole.len()] = i32::from_le_bytes(four);
                }
            } else {
                let pair = |lo: u8, hi: i32| ((lo as i32 - zero) as u16 as i32) | (hi << 16);
                let (whole, rest) = row.as_chunks::<2>();
                for (word, &[lo, hi]) in words.iter_mut().zip(whole) {
                    *word = pair(lo, hi as i32 - zero);
                }
                if let [lo] = rest {
                    words[whole.len()] = pair(*lo, 0);
                }
            }
        }
        PackedA {
            words_per_row,
            words,
            sums,
            zero: if quads { zero } else { 0 },
        }
    }

    fn row(&self, r: usize) -> &[i32] {
        &self.words[r * self.words_per_row..(r + 1) * self.words_per_row]
    }
}

/// ONNX `DynamicQuantizeLinear` of `x` (one scale for the whole tensor), packed: returns the
/// quantized values and the scale. The same arithmetic as tract's operator (`x / scale`, ties
/// to even), so the integers are the ones the graph would make.
fn quantize(x: &[f32], m: usize, b: &PackedB) -> (PackedA, f32) {
    let (min, max) = min_max(x);
    let scale = (max - min) / 255.0;
    let zero = (-min / scale).round_ties_even().clamp(0.0, 255.0) as i32;
    let mut q = vec![0u8; x.len()];
    quantize_values(x, scale, zero, &mut q);
    (PackedA::new(m, b.k, b, &q, zero), scale)
}

/// `q[i] = clamp(round_ties_even(x[i] / scale) + zero, 0, 255)`.
fn quantize_values(x: &[f32], scale: f32, zero: i32, q: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if super::avx2() {
        // SAFETY: AVX2 was detected; `q` is as long as `x`.
        return unsafe { avx2::quantize(x, scale, zero, q) };
    }
    for (q, &v) in q.iter_mut().zip(x) {
        *q = quantize_value(v, scale, zero);
    }
}

fn quantize_value(x: f32, scale: f32, zero: i32) -> u8 {
    ((x / scale).round_ties_even() as i32 + zero).clamp(0, 255) as u8
}

/// `(min(0, x), max(0, x))`.
fn min_max(x: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if super::avx2() {
        // SAFETY: AVX2 was detected.
        return unsafe { avx2::min_max(x) };
    }
    x.iter()
        .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Where [`tiles_of`] writes: raw pointers, since threads write disjoint columns.
#[derive(Clone, Copy)]
enum Out<'s> {
    /// The i32 sums.
    I32(*mut i32),
    /// The sums times a scale per column.
    F32(*mut f32, &'s [f32]),
}
// SAFETY: threads write disjoint columns of the output (see `run`).
unsafe impl Send for Out<'_> {}
unsafe impl Sync for Out<'_> {}

/// `c = (a - a0) x (b - b0)` for row-major `a: [m, k]` and `c: [m, n]`.
pub fn matmul(a: Bytes, a0: i32, m: usize, b: &PackedB, c: &mut [i32]) -> Result<(), String> {
    check(a.values.len(), c.len(), m, b)?;
    if !(-255..=255).contains(&a0) {
        return Err(format!("activation zero point {a0} is not 8-bit"));
    }
    // Unsigned bytes and their zero point: `a - a0` is the same.
    let packed = if a.signed {
        let bytes: Vec<u8> = a.values.iter().map(|v| v ^ 0x80).collect();
        PackedA::new(m, b.k, b, &bytes, a0 + 128)
    } else {
        PackedA::new(m, b.k, b, a.values, a0)
    };
    run(&packed, m, b, Out::I32(c.as_mut_ptr()));
    Ok(())
}

/// What a dynamically quantized export computes with `DynamicQuantizeLinear`, `MatMulInteger`,
/// a cast and the rescale, in one pass: `y = f32((q(x) - x0) x (b - b0)) * (x_scale * w_scale)`
/// for `x: [m, k]`, `y: [m, n]`, with `w_scale` per tensor or per column.
pub fn dynamic_matmul(
    x: &[f32],
    m: usize,
    b: &PackedB,
    w_scale: &[f32],
    y: &mut [f32],
) -> Result<(), String> {
    check(x.len(), y.len(), m, b)?;
    if w_scale.len() != 1 && w_scale.len() != b.n {
        return Err(format!(
            "{} weight scales for {} columns",
            w_scale.len(),
            b.n
        ));
    }
    let (packed, x_scale) = quantize(x, m, b);
    // The graph multiplies the two scales first, then the product by the cast sums.
    let scales: Vec<f32> = (0..b.n)
        .map(|col| x_scale * w_scale[if w_scale.len() == 1 { 0 } else { col }])
        .collect();
    run(&packed, m, b, Out::F32(y.as_mut_ptr(), &scales));
    Ok(())
}

fn check(a_len: usize, c_len: usize, m: usize, b: &PackedB) -> Result<(), String> {
    if a_len != m * b.k || c_len != m * b.n {
        return Err(format!(
            "activations of {a_len} values and output of {c_len} for [{m}, {}] x [{}, {}]",
            b.k, b.k, b.n
        ));
    }
    Ok(())
}

/// All tiles, on tract's thread pool (the executor of the plan being run) when the product is
/// large enough, each thread taking a range of columns.
fn run(a: &PackedA, m: usize, b: &PackedB, out: Out) {
    let tiles = b.tile_count();
    let part = |range: Range<usize>| {
        // SAFETY: `out` holds `m * b.n` values (see `check`); each call writes the columns of
        // its own tiles only.
        unsafe { tiles_of(a, m, b, range, out) }
    };
    let work = super::Product {
        rows: m,
        tile_rows: MR,
        macs: m * b.k * b.n,
        weight_bytes: b.k * b.n,
    };
    super::split_product(tiles, work, part);
}

/// Columns `TILE * tiles` of every row.
///
/// # Safety
/// `out` points at `m * b.n` values; no other thread writes these columns meanwhile.
unsafe fn tiles_of(a: &PackedA, m: usize, b: &PackedB, tiles: Range<usize>, out: Out) {
    let block = (A_BLOCK_BYTES / (4 * a.words_per_row)).max(MR) / MR * MR;
    for rows in (0..m).step_by(block) {
        let rows = rows..(rows + block).min(m);
        for tile in tiles.clone() {
            let cols = tile * TILE..((tile + 1) * TILE).min(b.n);
            let zeros = Zeros {
                b0: b.zero.as_deref().map(|z| &z[cols.clone()]),
                column_sums: b.quads.as_ref().filter(|_| a.zero != 0).map(|q| {
                    let sums: &[i32] = &q.column_sums[cols.clone()];
                    (sums, a.zero)
                }),
            };
            let mut r = rows.start;
            while r < rows.end {
                let count = (rows.end - r).min(MR);
                let mut sums = [[0i32; TILE]; MR];
                micro(a, r, count, b, tile, &mut sums);
                for (i, row_sums) in sums.iter().enumerate().take(count) {
                    let row = r + i;
                    write(row_sums, zeros, a.sums[row], out, row * b.n, cols.clone());
                }
                r += count;
            }
        }
    }
}

/// The zero points a tile's sums still need, per column of the tile.
#[derive(Clone, Copy)]
struct Zeros<'a> {
    /// The weights' (`- b0 * sum (a - a0)`, with each row's sum).
    b0: Option<&'a [i32]>,
    /// With VNNI, the activations' (`- a0 * sum b'`): the columns' sums of weights, and `a0`.
    column_sums: Option<(&'a [i32], i32)>,
}

/// Applies the zero points to one row of sums and writes columns `cols` of the output row
/// starting at `row_at`.
///
/// # Safety
/// As [`tiles_of`].
unsafe fn write(
    sums: &[i32; TILE],
    zeros: Zeros,
    row_sum: i32,
    out: Out,
    row_at: usize,
    cols: Range<usize>,
) {
    #[cfg(target_arch = "x86_64")]
    if cols.len() == TILE && super::avx2() {
        return avx2::write(sums, zeros, row_sum, out, row_at, cols.start);
    }
    for (j, col) in cols.enumerate() {
        let mut v = sums[j];
        if let Some((column_sums, a0)) = zeros.column_sums {
            v = v.wrapping_sub(a0.wrapping_mul(column_sums[j]));
        }
        if let Some(b0) = zeros.b0 {
            v = v.wrapping_sub(b0[j].wrapping_mul(row_sum));
        }
        match out {
            Out::I32(c) => *c.add(row_at + col) = v,
            Out::F32(y, scales) => *y.add(row_at + col) = v as f32 * scales[col],
        }
    }
}

/// `sums[i][j]`, `i < count`: row `r + i` of the activations times column `j` of tile `t`,
/// zero points of the weights not applied.
fn micro(a: &PackedA, r: usize, count: usize, b: &PackedB, t: usize, sums: &mut [[i32; TILE]; MR]) {
    let tile = b.tile(t);
    #[cfg(target_arch = "x86_64")]
    if let Some(q) = &b.quads {
        use avx2::{micro_vnni_avx as avx, micro_vnni_avx512 as avx512};
        // SAFETY: the layout was chosen where this VNNI was detected; the tile holds
        // `a.words_per_row` row quads of QUAD_BYTES.
        unsafe {
            match (q.vnni, count) {
                (Vnni::Avx512, 1) => avx512::<1>(a, r, tile, sums),
                (Vnni::Avx512, 2) => avx512::<2>(a, r, tile, sums),
                (Vnni::Avx512, 3) => avx512::<3>(a, r, tile, sums),
                (Vnni::Avx512, _) => avx512::<4>(a, r, tile, sums),
                (Vnni::Avx, 1) => avx::<1>(a, r, tile, sums),
                (Vnni::Avx, 2) => avx::<2>(a, r, tile, sums),
                (Vnni::Avx, 3) => avx::<3>(a, r, tile, sums),
                (Vnni::Avx, _) => avx::<4>(a, r, tile, sums),
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::avx2() {
        use avx2::micro as k;
        // SAFETY: AVX2 was detected; the tile holds `a.words_per_row` row pairs of PAIR_BYTES.
        unsafe {
            match (count, b.signed) {
                (1, true) => k::<1, true>(a, r, tile, sums),
                (2, true) => k::<2, true>(a, r, tile, sums),
                (3, true) => k::<3, true>(a, r, tile, sums),
                (_, true) => k::<4, true>(a, r, tile, sums),
                (1, false) => k::<1, false>(a, r, tile, sums),
                (2, false) => k::<2, false>(a, r, tile, sums),
                (3, false) => k::<3, false>(a, r, tile, sums),
                (_, false) => k::<4, false>(a, r, tile, sums),
            }
        }
        return;
    }
    let weight = |at: usize| {
        if b.signed {
            tile[at] as i8 as i32
        } else {
            tile[at] as i32
        }
    };
    for (i, row_sums) in sums.iter_mut().enumerate().take(count) {
        for (j, &word) in a.row(r + i).iter().enumerate() {
            let (lo, hi) = (word as i16 as i32, (word >> 16) as i16 as i32);
            for (c, sum) in row_sums.iter_mut().enumerate() {
                let at = j * PAIR_BYTES + 2 * c;
                *sum = sum.wrapping_add(lo * weight(at) + hi * weight(at + 1));
            }
        }
    }
}

/// Which VNNI the kernel uses here (detected once), if any.
fn vnni() -> Option<Vnni> {
    #[cfg(test)]
    if super::tests::PORTABLE.get() || tests::NO_VNNI.get() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        static DETECTED: std::sync::OnceLock<Option<Vnni>> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            if has!("avx512vnni") && has!("avx512vl") && has!("avx2") {
                Some(Vnni::Avx512)
            } else if has!("avxvnni") && has!("avx2") {
                Some(Vnni::Avx)
            } else {
                None
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Out, PackedA, Zeros, MR, NR, PAIR_BYTES, QUAD_BYTES, TILE};
    use std::arch::x86_64::*;

    /// How far ahead of its loads the kernel prefetches a tile (measured on the LM head shapes,
    /// 1x256x64044 and 1x768x50257: 512 bytes helped little, 2048 doubled the bandwidth).
    const PREFETCH_BYTES: usize = 2048;

    /// [`super::write`] of all `TILE` columns.
    ///
    /// # Safety
    /// The CPU has AVX2; as [`super::tiles_of`], with `col + TILE` columns in the output.
    #[target_feature(enable = "avx2")]
    pub unsafe fn write(
        sums: &[i32; TILE],
        zeros: Zeros,
        row_sum: i32,
        out: Out,
        row_at: usize,
        col: usize,
    ) {
        let load = |v: &[i32], at: usize| _mm256_loadu_si256(v.as_ptr().add(at) as *const __m256i);
        let mut v = [load(sums, 0), load(sums, NR)];
        if let Some((column_sums, a0)) = zeros.column_sums {
            let a0 = _mm256_set1_epi32(a0);
            for (half, v) in v.iter_mut().enumerate() {
                let c = load(column_sums, half * NR);
                *v = _mm256_sub_epi32(*v, _mm256_mullo_epi32(c, a0));
            }
        }
        if let Some(b0) = zeros.b0 {
            let s = _mm256_set1_epi32(row_sum);
            for (half, v) in v.iter_mut().enumerate() {
                *v = _mm256_sub_epi32(*v, _mm256_mullo_epi32(load(b0, half * NR), s));
            }
        }
        for (half, v) in v.into_iter().enumerate() {
            let at = row_at + col + half * NR;
            match out {
                Out::I32(c) => _mm256_storeu_si256(c.add(at) as *mut __m256i, v),
                Out::F32(y, scales) => {
                    let scale = _mm256_loadu_ps(scales.as_ptr().add(col + half * NR));
                    _mm256_storeu_ps(y.add(at), _mm256_mul_ps(_mm256_cvtepi32_ps(v), scale));
                }
            }
        }
    }

    /// `q[i] = clamp(round_ties_even(x[i] / scale) + zero, 0, 255)`, 32 values at a time.
    ///
    /// # Safety
    /// The CPU has AVX2; `q` is as long as `x`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize(x: &[f32], scale: f32, zero: i32, q: &mut [u8]) {
        let (s, z) = (_mm256_set1_ps(scale), _mm256_set1_epi32(zero));
        let eight = |at: usize| {
            let v = _mm256_div_ps(_mm256_loadu_ps(x.as_ptr().add(at)), s);
            let v = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            // NaN (a tensor of zeros: scale 0) converts to i32::MIN here and to 0 in Rust;
            // the zero point is then 0 and both saturate to 0.
            _mm256_add_epi32(_mm256_cvtps_epi32(v), z)
        };
        // The packs saturate (to i16, then to 0..=255: the clamp) within 128-bit lanes; the
        // permutation puts the four groups of eight back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let whole = x.len() / 32 * 32;
        for i in (0..whole).step_by(32) {
            let low = _mm256_packs_epi32(eight(i), eight(i + 8));
            let high = _mm256_packs_epi32(eight(i + 16), eight(i + 24));
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(low, high), order);
            _mm256_storeu_si256(q.as_mut_ptr().add(i) as *mut __m256i, bytes);
        }
        for i in whole..x.len() {
            q[i] = super::quantize_value(x[i], scale, zero);
        }
    }

    /// `(min(0, x), max(0, x))`.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn min_max(x: &[f32]) -> (f32, f32) {
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let whole = x.len() / 8 * 8;
        for i in (0..whole).step_by(8) {
            let v = _mm256_loadu_ps(x.as_ptr().add(i));
            lo = _mm256_min_ps(lo, v);
            hi = _mm256_max_ps(hi, v);
        }
        let (mut los, mut his) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(los.as_mut_ptr(), lo);
        _mm256_storeu_ps(his.as_mut_ptr(), hi);
        let lanes = los.iter().zip(&his).map(|(&l, &h)| (l, h));
        let tail = x[whole..].iter().map(|&v| (v, v));
        lanes
            .chain(tail)
            .fold((0f32, 0f32), |(lo, hi), (l, h)| (lo.min(l), hi.max(h)))
    }

    /// The portable loop of [`super::micro`] for `R` rows, in AVX2.
    ///
    /// # Safety
    /// The CPU has AVX2; `tile` holds `a.words_per_row` row pairs of `PAIR_BYTES`; rows `r..r + R`
    /// exist in `a`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn micro<const R: usize, const SIGNED: bool>(
        a: &PackedA,
        r: usize,
        tile: &[u8],
        sums: &mut [[i32; TILE]; MR],
    ) {
        let rows: [*const i32; R] = std::array::from_fn(|i| a.row(r + i).as_ptr());
        let b = tile.as_ptr();
        let mut acc0 = [_mm256_setzero_si256(); R];
        let mut acc1 = [_mm256_setzero_si256(); R];
        for j in 0..a.words_per_row {
            let at = j * PAIR_BYTES;
            if j % 2 == 0 {
                // One cache line per two row pairs. A hint: past the end it loads nothing.
                let ahead = b.wrapping_add(at + PREFETCH_BYTES) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(ahead);
            }
            let w0 = _mm_loadu_si128(b.add(at) as *const __m128i);
            let w1 = _mm_loadu_si128(b.add(at + PAIR_BYTES / 2) as *const __m128i);
            let (w0, w1) = if SIGNED {
                (_mm256_cvtepi8_epi16(w0), _mm256_cvtepi8_epi16(w1))
            } else {
                (_mm256_cvtepu8_epi16(w0), _mm256_cvtepu8_epi16(w1))
            };
            for i in 0..R {
                let pair = _mm256_set1_epi32(*rows[i].add(j));
                acc0[i] = _mm256_add_epi32(acc0[i], _mm256_madd_epi16(pair, w0));
                acc1[i] = _mm256_add_epi32(acc1[i], _mm256_madd_epi16(pair, w1));
            }
        }
        for i in 0..R {
            let out = sums[i].as_mut_ptr() as *mut __m256i;
            _mm256_storeu_si256(out, acc0[i]);
            _mm256_storeu_si256(out.add(1), acc1[i]);
        }
    }

    /// [`micro`] for the VNNI layout: per row quad, one `vpdpbusd` per row and half tile.
    /// The same code for both encodings of the instruction.
    macro_rules! micro_vnni {
        ($name:ident, $features:literal, $dpbusd:ident) => {
            /// `R` rows of `a` (unsigned bytes, four per word) times the tile's int8 quads.
            ///
            /// # Safety
            /// The CPU has the VNNI of this name; `tile` holds `a.words_per_row` row quads of
            /// `QUAD_BYTES`; rows `r..r + R` exist in `a`.
            #[target_feature(enable = $features)]
            pub unsafe fn $name<const R: usize>(
                a: &PackedA,
                r: usize,
                tile: &[u8],
                sums: &mut [[i32; TILE]; MR],
            ) {
                let rows: [*const i32; R] = std::array::from_fn(|i| a.row(r + i).as_ptr());
                let b = tile.as_ptr();
                let mut acc0 = [_mm256_setzero_si256(); R];
                let mut acc1 = [_mm256_setzero_si256(); R];
                for j in 0..a.words_per_row {
                    let at = j * QUAD_BYTES;
                    // One cache line per quad.
                    let ahead = b.wrapping_add(at + PREFETCH_BYTES) as *const i8;
                    _mm_prefetch::<_MM_HINT_T0>(ahead);
                    let w0 = _mm256_loadu_si256(b.add(at) as *const __m256i);
                    let w1 = _mm256_loadu_si256(b.add(at + QUAD_BYTES / 2) as *const __m256i);
                    for i in 0..R {
                        let quad = _mm256_set1_epi32(*rows[i].add(j));
                        acc0[i] = $dpbusd(acc0[i], quad, w0);
                        acc1[i] = $dpbusd(acc1[i], quad, w1);
                    }
                }
                for i in 0..R {
                    let out = sums[i].as_mut_ptr() as *mut __m256i;
                    _mm256_storeu_si256(out, acc0[i]);
                    _mm256_storeu_si256(out.add(1), acc1[i]);
                }
            }
        };
    }
    micro_vnni!(
        micro_vnni_avx512,
        "avx2,avx512vnni,avx512vl",
        _mm256_dpbusd_epi32
    );
    micro_vnni!(micro_vnni_avx, "avx2,avxvnni", _mm256_dpbusd_avx_epi32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// Makes [`vnni`] none on this thread, so VNNI CPUs test the AVX2 code too.
        pub static NO_VNNI: Cell<bool> = const { Cell::new(false) };
    }

    /// Runs `f` on the portable code, then (where the CPU has them) on AVX2 and VNNI.
    fn both_paths(f: impl Fn(&str)) {
        crate::kernels::tests::PORTABLE.set(true);
        f("portable");
        crate::kernels::tests::PORTABLE.set(false);
        NO_VNNI.set(true);
        f("avx2 where available");
        NO_VNNI.set(false);
        f("vnni where available");
    }

    fn reference(
        a: Bytes,
        a0: i32,
        m: usize,
        b: Bytes,
        b0: &[i32],
        k: usize,
        n: usize,
    ) -> Vec<i32> {
        let mut c = vec![0i32; m * n];
        for r in 0..m {
            for col in 0..n {
                let zero = if b0.len() == 1 { b0[0] } else { b0[col] };
                c[r * n + col] = (0..k)
                    .map(|i| (a.get(r * k + i) - a0) * (b.get(i * n + col) - zero))
                    .fold(0i32, i32::wrapping_add);
            }
        }
        c
    }

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect()
    }

    #[test]
    fn products_are_exact_for_every_tail_and_signedness() {
        both_paths(products_are_exact);
    }

    fn products_are_exact(path: &str) {
        // Odd k (a padded pair), n not a multiple of a half tile or a tile, m not of a micro-tile.
        for (m, k, n) in [(1, 1, 1), (3, 7, 5), (5, 33, 17), (9, 64, 24), (4, 301, 40)] {
            for (a_signed, b_signed) in [(false, true), (false, false), (true, true), (true, false)]
            {
                let (av, bv) = (bytes(m * k, 1 + k as u64), bytes(k * n, 2 + n as u64));
                let a = Bytes {
                    values: &av,
                    signed: a_signed,
                };
                let b = Bytes {
                    values: &bv,
                    signed: b_signed,
                };
                let zeros: Vec<i32> = (0..n as i32).map(|c| c % 5 - 2).collect();
                for (a0, b0) in [(0, &[0][..]), (117, &[3][..]), (-128, &zeros[..])] {
                    let packed = PackedB::new(b, k, n, b0).unwrap();
                    let mut c = vec![0; m * n];
                    matmul(a, a0, m, &packed, &mut c).unwrap();
                    let want = reference(a, a0, m, b, b0, k, n);
                    assert_eq!(
                        c, want,
                        "{path}: {m}x{k}x{n} a {a_signed} b {b_signed} a0 {a0}"
                    );
                }
            }
        }
    }

    /// Dynamic quantization as the ONNX operator (and tract) does it, then the exact product.
    fn dynamic_reference(x: &[f32], m: usize, k: usize, b: &[u8], n: usize, ws: f32) -> Vec<f32> {
        let (min, max) = x
            .iter()
            .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
        let scale = (max - min) / 255.0;
        let zero = (-min / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        let q: Vec<u8> = x
            .iter()
            .map(|&v| ((v / scale).round_ties_even() as i32 + zero as i32).clamp(0, 255) as u8)
            .collect();
        let a = Bytes {
            values: &q,
            signed: false,
        };
        let b = Bytes {
            values: b,
            signed: true,
        };
        let sums = reference(a, zero as i32, m, b, &[0], k, n);
        sums.iter().map(|&s| s as f32 * (scale * ws)).collect()
    }

    #[test]
    fn dynamic_products_match_quantize_then_multiply() {
        both_paths(|path| {
            // 12 x 19 values: AVX2 quantizes 32 at a time, then a tail of 4.
            let (m, k, n) = (12, 19, 21);
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 60.0) * 0.173)
                .collect();
            let bv = bytes(k * n, 9);
            let b = Bytes {
                values: &bv,
                signed: true,
            };
            let packed = PackedB::new(b, k, n, &[]).unwrap();
            let mut y = vec![0f32; m * n];
            dynamic_matmul(&x, m, &packed, &[0.02], &mut y).unwrap();
            assert_eq!(y, dynamic_reference(&x, m, k, &bv, n, 0.02), "{path}");
            // All zeros: a scale of 0 (x / 0 is NaN), which must quantize to 0, not fail.
            let zeros = vec![0f32; m * k];
            dynamic_matmul(&zeros, m, &packed, &[0.02], &mut y).unwrap();
            assert!(y.iter().all(|&v| v == 0.0), "{path}");
        });
    }

    #[test]
    fn a_steps_row_split_with_the_helper_thread_is_exact() {
        use tract_linalg::multithread::{multithread_tract_scope, Executor};
        // One row by 512 KiB of weights (HELPED_BYTES): the helper computes half the tiles.
        let (m, k, n) = (1, 512, 1024);
        let x: Vec<f32> = (0..k)
            .map(|i| ((i * 37 % 101) as f32 - 60.0) * 0.173)
            .collect();
        let bv = bytes(k * n, 11);
        let b = Bytes {
            values: &bv,
            signed: true,
        };
        let packed = PackedB::new(b, k, n, &[]).unwrap();
        let run = || {
            let mut y = vec![0f32; m * n];
            dynamic_matmul(&x, m, &packed, &[0.02], &mut y).unwrap();
            y
        };
        let two = multithread_tract_scope(Executor::multithread(2), run);
        assert_eq!(two, dynamic_reference(&x, m, k, &bv, n, 0.02));
    }

    #[test]
    fn extreme_values_do_not_saturate() {
        // (0 - 255) * (-128) summed over k: vpmaddubsw would saturate at 32767, vpmaddwd does not.
        both_paths(|path| {
            let (m, k, n) = (2, 64, 9);
            let (av, bv) = (vec![0u8; m * k], vec![0x80u8; k * n]);
            let a = Bytes {
                values: &av,
                signed: false,
            };
            let b = Bytes {
                values: &bv,
                signed: true,
            };
            let packed = PackedB::new(b, k, n, &[0]).unwrap();
            let mut c = vec![0; m * n];
            matmul(a, 255, m, &packed, &mut c).unwrap();
            assert!(c.iter().all(|&v| v == 255 * 128 * k as i32), "{path}");
        });
    }

    #[test]
    fn mismatched_sizes_are_errors() {
        let bv = vec![0u8; 6];
        let b = Bytes {
            values: &bv,
            signed: true,
        };
        assert!(PackedB::new(b, 2, 4, &[0]).is_err());
        assert!(PackedB::new(b, 2, 3, &[0, 0]).is_err());
        let packed = PackedB::new(b, 2, 3, &[0]).unwrap();
        let a = Bytes {
            values: &[1, 2, 3],
            signed: false,
        };
        assert!(matmul(a, 0, 1, &packed, &mut [0; 3]).is_err());
        assert!(matmul(a, 300, 1, &packed, &mut [0; 3]).is_err());
    }
}
