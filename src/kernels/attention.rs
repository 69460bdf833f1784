//! `softmax(q k^T) v` for decoder steps whose keys and values are shared by groups of query
//! rows: the beams of one image read the same cross-attention cache.
//!
//! Why glance has its own: the exports compute cross-attention as one matrix-vector product per
//! row and head, so at four beams the same keys and values are read from memory four times per
//! step (4.0 of 8.5 ms of a TrOCR-small beam step was that, in tract). Here the rows of a group
//! are the rows of one small matrix product per head: each key and value is read once per
//! step, whatever the number of beams.
//!
//! The same product serves an encoder's self-attention, hundreds of queries per head against
//! as many keys: there the rows of a head are computed in tiles whose sums stay in registers,
//! and the softmax runs between the two products. On an AVX2 CPU (Zen 3) tract's attention
//! products, their packing and its softmax took 280 of the TrOCR-small q8 encoder's 640 ms,
//! 23 ms a layer; this kernel's AVX2 code takes 7.3 ms a layer on Zen 4.
//!
//! Layouts (row-major): queries and the output `[groups * per_group, heads, queries, depth]`
//! (what the exports reshape to `[rows * heads, queries, depth]`); keys and values `[groups,
//! heads, keys, depth]`. The query rows of group `g` are rows `g * per_group ..`.

use std::ops::Range;

/// The sizes of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Groups of rows that share keys and values (images).
    pub groups: usize,
    /// Rows per group (beams).
    pub per_group: usize,
    pub heads: usize,
    /// Query positions per row (1 at a decoding step, the prompt's length at the first).
    pub queries: usize,
    /// Key positions (the encoder's sequence).
    pub keys: usize,
    /// Values per head.
    pub depth: usize,
}

impl Dims {
    fn query_len(&self) -> usize {
        self.groups * self.per_group * self.heads * self.queries * self.depth
    }
    fn key_len(&self) -> usize {
        self.groups * self.heads * self.keys * self.depth
    }

    /// Query rows per group and head: beams times query positions.
    fn rows(&self) -> usize {
        self.per_group * self.queries
    }

    fn blocked(&self) -> bool {
        self.rows() >= BLOCKED_ROWS
    }

    /// Tasks per group and head.
    fn chunks(&self) -> usize {
        if self.blocked() {
            self.rows().div_ceil(CHUNK_ROWS)
        } else {
            1
        }
    }
}

/// The keys, in one of two layouts.
#[derive(Debug, Clone, Copy)]
pub enum Keys<'a> {
    /// `[groups, heads, keys, depth]`, the values' layout.
    Rows(&'a [f32]),
    /// `[groups, heads, depth, keys]`: GPT-2's cross-attention keys, cut from the step graph
    /// where the export had transposed them for its product.
    Transposed(&'a [f32]),
}

impl<'a> Keys<'a> {
    fn values(&self) -> &'a [f32] {
        match *self {
            Keys::Rows(k) | Keys::Transposed(k) => k,
        }
    }

    /// The same layout over `range` of the values (a group and head's).
    fn part(&self, range: Range<usize>) -> Keys<'a> {
        match *self {
            Keys::Rows(k) => Keys::Rows(&k[range]),
            Keys::Transposed(k) => Keys::Transposed(&k[range]),
        }
    }
}

/// Values added to the scores before the softmax (an attention mask: 0 where a key is seen, a
/// large negative number where not), broadcast over rows, heads and query positions: the
/// scores of `(row, head, query)` get the `keys` values from `row * strides[0] + head *
/// strides[1] + query * strides[2]` on.
#[derive(Debug, Clone, Copy)]
pub struct Mask<'a> {
    pub values: &'a [f32],
    pub strides: [usize; 3],
}

impl Mask<'_> {
    /// Where the keys' values of row `row`, head `head`, query `query` start.
    fn at(&self, row: usize, head: usize, query: usize) -> usize {
        row * self.strides[0] + head * self.strides[1] + query * self.strides[2]
    }
}

/// Below this many multiply-adds a call runs on one thread: waking a pool costs more. A
/// ViT-GPT2 greedy step's cross-attention (12 heads, 197 keys: 0.3 M) took 1.0-1.7 ms of the
/// step on two threads and 0.7-0.8 ms on one (`glance bench --profile`, Zen 4).
const PARALLEL_MACS: usize = 1 << 21;

/// From this many query rows per head on (an encoder's self-attention, hundreds of rows), the
/// keys are copied transposed for a blocked product: the copy costs one read of them, which
/// only a few rows (beams at a decoding step) do not earn back.
const BLOCKED_ROWS: usize = 16;
/// Rows of one task when blocked (a multiple of [`TILE_ROWS`]), so that the rows of a head
/// spread over the pool's threads.
const CHUNK_ROWS: usize = 60;
/// A blocked tile: six rows by sixteen keys (or values) of sums, twelve of the sixteen AVX
/// registers (four rows left the multiply-adds waiting on each other's latency).
const TILE_ROWS: usize = 6;
const TILE_COLS: usize = 16;
const _: () = assert!(CHUNK_ROWS.is_multiple_of(TILE_ROWS));

/// `out = softmax(q (key_scale k)^T + mask) v` for every row and head.
pub fn attend(
    q: &[f32],
    key_scale: f32,
    keys: Keys,
    v: &[f32],
    mask: Option<Mask>,
    dims: Dims,
    out: &mut [f32],
) -> Result<(), String> {
    if q.len() != dims.query_len() || out.len() != q.len() {
        return Err(format!(
            "attention of {} query values (output {}) for {dims:?}",
            q.len(),
            out.len()
        ));
    }
    let k = keys.values();
    if k.len() != dims.key_len() || v.len() != k.len() {
        return Err(format!(
            "attention over {} keys and {} values for {dims:?}",
            k.len(),
            v.len()
        ));
    }
    let rows = dims.groups * dims.per_group;
    if let Some(mask) = mask.filter(|_| rows * dims.heads * dims.queries > 0) {
        let last = mask.at(rows - 1, dims.heads - 1, dims.queries - 1) + dims.keys;
        if last > mask.values.len() {
            return Err(format!(
                "a mask of {} values with strides {:?} for {dims:?}",
                mask.values.len(),
                mask.strides
            ));
        }
    }
    if dims.keys == 0 || dims.depth == 0 || q.is_empty() {
        // Softmax over no keys is undefined; the exports never ask for it.
        return if q.is_empty() {
            Ok(())
        } else {
            Err(format!("attention over no keys: {dims:?}"))
        };
    }
    let macs = 2 * dims.query_len() * dims.keys;
    let parallel = macs >= PARALLEL_MACS;
    let operands = Operands {
        q,
        key_scale,
        keys,
        v,
        mask,
        packed: None,
        dims,
    };
    if !dims.blocked() {
        run_tasks(&operands, out, parallel);
        return Ok(());
    }
    // Laid out once per call, since the chunks of a head all read it, into a buffer kept like
    // `Scratch` (a fresh one each layer was faulted in again each time).
    reused(&PACKED, |buffer| {
        let packed = Packed::new(keys, v, dims, buffer, parallel);
        let operands = Operands {
            packed: Some(&packed),
            ..operands
        };
        run_tasks(&operands, out, parallel);
    });
    Ok(())
}

/// Every task of a call, each a group and head and a chunk of its rows.
fn run_tasks(operands: &Operands, out: &mut [f32], parallel: bool) {
    let dims = operands.dims;
    let tasks = dims.groups * dims.heads * dims.chunks();
    let out_at = Shared(out.as_mut_ptr());
    let part = |range: Range<usize>| {
        let out_at = &out_at;
        let run = |scratch: &mut Scratch| {
            for task in range.clone() {
                // SAFETY: task `(g, h, chunk)` writes only the output rows of group g's rows
                // in the chunk at head h, which no other task writes; `out` has the queries'
                // length (checked by `attend`).
                unsafe { run_task(operands, task, out_at.0, scratch) }
            }
        };
        reused(&SCRATCH, run)
    };
    super::split(tasks, parallel, part);
}

/// A buffer's pointer, shared by tasks that write disjoint parts of it.
struct Shared(*mut f32);
// SAFETY: tasks write disjoint parts of the buffer (see `run_tasks` and `Packed::new`).
unsafe impl Sync for Shared {}

/// Per-thread buffers: the task's queries gathered contiguous, scores, outputs. Kept from call
/// to call (an encoder calls once per layer), so that they are not allocated and their pages
/// faulted in again each time.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    scores: Vec<f32>,
    out: Vec<f32>,
    /// The mask's values for the task's rows, `[rows, keys]`.
    mask: Vec<f32>,
}

/// Runs `f` on this thread's `buffer`, kept from call to call; a thread already inside such a
/// call (it never is, but a pool thread could run a nested one) takes a new buffer instead.
fn reused<T: Default, R>(
    buffer: &'static std::thread::LocalKey<std::cell::RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    buffer.with(|cell| match cell.try_borrow_mut() {
        Ok(mut kept) => f(&mut kept),
        Err(_) => f(&mut T::default()),
    })
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
    /// The calling thread's buffer for [`Packed`].
    static PACKED: std::cell::RefCell<Vec<f32>> = std::cell::RefCell::default();
}

/// What every task of a call reads.
struct Operands<'a> {
    q: &'a [f32],
    key_scale: f32,
    keys: Keys<'a>,
    v: &'a [f32],
    mask: Option<Mask<'a>>,
    /// For the blocked product.
    packed: Option<&'a Packed<'a>>,
    dims: Dims,
}

/// The keys and values of every group and head laid out in tiles of [`TILE_COLS`] for the
/// blocked product, each tile one contiguous stream, padded with zeros: keys `[keys /
/// TILE_COLS][d][TILE_COLS]` (transposed), values `[d / TILE_COLS][keys][TILE_COLS]`.
struct Packed<'a> {
    keys_t: &'a [f32],
    values: &'a [f32],
    /// Values of one head in each.
    keys_len: usize,
    values_len: usize,
}

impl<'a> Packed<'a> {
    /// Lays out `k` and `v` in `buffer`, the heads on the thread pool when `parallel`.
    fn new(keys_in: Keys, v: &[f32], dims: Dims, buffer: &'a mut Vec<f32>, parallel: bool) -> Self {
        let (keys, d) = (dims.keys, dims.depth);
        let keys_len = keys.div_ceil(TILE_COLS) * d * TILE_COLS;
        let values_len = d.div_ceil(TILE_COLS) * TILE_COLS * keys;
        let heads = dims.groups * dims.heads;
        // Every value is written below (padding included), so the old contents may stay.
        buffer.resize(buffer.len().max(heads * (keys_len + values_len)), 0.0);
        let (keys_t, rest) = buffer.split_at_mut(heads * keys_len);
        let values = &mut rest[..heads * values_len];
        let at = (Shared(keys_t.as_mut_ptr()), Shared(values.as_mut_ptr()));
        super::split(heads, parallel, |range| {
            let at = &at;
            for h in range {
                let head = h * keys * d..(h + 1) * keys * d;
                let (k, v) = (keys_in.part(head.clone()), &v[head]);
                // SAFETY: head h's parts of the two buffers, which no other head writes.
                let (keys_t, values) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(at.0 .0.add(h * keys_len), keys_len),
                        std::slice::from_raw_parts_mut(at.1 .0.add(h * values_len), values_len),
                    )
                };
                pack_head(k, v, d, keys_t, values);
            }
        });
        Packed {
            keys_t,
            values,
            keys_len,
            values_len,
        }
    }

    /// Group and head `at` (`group * heads + head`).
    fn head(&self, at: usize) -> (&[f32], &[f32]) {
        (
            &self.keys_t[at * self.keys_len..(at + 1) * self.keys_len],
            &self.values[at * self.values_len..(at + 1) * self.values_len],
        )
    }
}

/// One head's keys and values (`[keys, d]`) in [`Packed`]'s layout.
fn pack_head(k: Keys, v: &[f32], d: usize, keys_t: &mut [f32], values: &mut [f32]) {
    let keys = v.len() / d;
    if !keys.is_multiple_of(TILE_COLS) {
        let last = keys_t.len() - d * TILE_COLS;
        keys_t[last..].fill(0.0);
    }
    if !d.is_multiple_of(TILE_COLS) {
        let last = values.len() - keys * TILE_COLS;
        values[last..].fill(0.0);
    }
    // Where key j's value c goes.
    let slot = |j: usize, c: usize| ((j / TILE_COLS) * d + c) * TILE_COLS + j % TILE_COLS;
    match k {
        Keys::Rows(k) => {
            for (j, key) in k.chunks_exact(d).enumerate() {
                for (c, &value) in key.iter().enumerate() {
                    keys_t[slot(j, c)] = value;
                }
            }
        }
        Keys::Transposed(k) => {
            for (c, depth) in k.chunks_exact(keys).enumerate() {
                for (j, &value) in depth.iter().enumerate() {
                    keys_t[slot(j, c)] = value;
                }
            }
        }
    }
    for (j, value) in v.chunks_exact(d).enumerate() {
        for (c, &x) in value.iter().enumerate() {
            values[((c / TILE_COLS) * keys + j) * TILE_COLS + c % TILE_COLS] = x;
        }
    }
}

/// Group and head `task / chunks`, rows of chunk `task % chunks`.
///
/// # Safety
/// `out` points at `dims.query_len()` values; no other thread writes this task's rows.
unsafe fn run_task(operands: &Operands, task: usize, out: *mut f32, scratch: &mut Scratch) {
    let Operands {
        q,
        key_scale,
        keys,
        v,
        mask,
        packed,
        dims,
    } = *operands;
    let chunks = dims.chunks();
    let (group_head, chunk) = (task / chunks, task % chunks);
    let (group, head) = (group_head / dims.heads, group_head % dims.heads);
    let d = dims.depth;
    let rows = if chunks == 1 {
        0..dims.rows()
    } else {
        chunk * CHUNK_ROWS..((chunk + 1) * CHUNK_ROWS).min(dims.rows())
    };
    // The group's row `i`: beam `i / queries` (a row of the whole call), query `i % queries`.
    let row_of = |i: usize| (group * dims.per_group + i / dims.queries, i % dims.queries);
    // Where row `i` keeps this head's query.
    let at = |i: usize| {
        let (beam, query) = row_of(i);
        ((beam * dims.heads + head) * dims.queries + query) * d
    };
    scratch.q.clear();
    for i in rows.clone() {
        scratch.q.extend_from_slice(&q[at(i)..at(i) + d]);
    }
    if key_scale != 1.0 {
        // q . (c k) as (c q) . k: the keys are read as they are.
        scratch.q.iter_mut().for_each(|x| *x *= key_scale);
    }
    scratch.mask.clear();
    if let Some(mask) = mask {
        for i in rows.clone() {
            let (beam, query) = row_of(i);
            let at = mask.at(beam, head, query);
            scratch
                .mask
                .extend_from_slice(&mask.values[at..at + dims.keys]);
        }
    }
    // Values per row of `scratch.out`.
    let stride = if let Some(packed) = packed {
        let (keys_t, values) = packed.head(group_head);
        blocked(keys_t, values, rows.len(), dims.keys, d, scratch)
    } else {
        let kv = group_head * dims.keys * d..(group_head + 1) * dims.keys * d;
        let (k, v) = (keys.part(kv.clone()), &v[kv]);
        head_attention(k, v, rows.len(), d, scratch);
        d
    };
    for (n, i) in rows.enumerate() {
        let from = &scratch.out[n * stride..n * stride + d];
        // SAFETY: see the function's contract.
        unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), out.add(at(i)), d) };
    }
}

/// One head: the `rows` queries of `s.q` (`d` values each) against keys `k` and values `v`
/// (`[keys, d]`), `s.mask` (`[rows, keys]`, or empty) added to the scores; the outputs in
/// `s.out`.
fn head_attention(k: Keys, v: &[f32], rows: usize, d: usize, s: &mut Scratch) {
    let keys = v.len() / d;
    s.scores.resize(rows * keys, 0.0);
    s.out.resize(rows * d, 0.0);
    #[cfg(target_arch = "x86_64")]
    if super::avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2::head_attention(k, v, rows, d, s) };
    }
    head_attention_any(k, v, rows, d, s)
}

/// The code of [`head_attention`], compiled again with AVX2 enabled where the CPU has it:
/// plain loops that the compiler vectorises for whichever instructions it may use.
#[inline(always)]
fn head_attention_any(k: Keys, v: &[f32], rows: usize, d: usize, s: &mut Scratch) {
    let Scratch {
        q,
        scores,
        out,
        mask,
    } = s;
    let keys = v.len() / d;
    match k {
        Keys::Rows(k) => {
            // Keys outermost: each key is read once for all rows of the group.
            for (s, key) in k.chunks_exact(d).enumerate() {
                for r in 0..rows {
                    scores[r * keys + s] = dot(&q[r * d..(r + 1) * d], key);
                }
            }
        }
        Keys::Transposed(k) => {
            // Depth outermost, a row of keys at a time: sums over the keys in vector lanes.
            scores[..rows * keys].fill(0.0);
            for (c, depth) in k.chunks_exact(keys).enumerate() {
                for (r, row) in scores[..rows * keys].chunks_exact_mut(keys).enumerate() {
                    let a = q[r * d + c];
                    for (s, &x) in row.iter_mut().zip(depth) {
                        *s += a * x;
                    }
                }
            }
        }
    }
    for (s, m) in scores[..rows * keys].iter_mut().zip(mask.iter()) {
        *s += m;
    }
    for row in scores[..rows * keys].chunks_exact_mut(keys) {
        softmax(row);
    }
    out[..rows * d].fill(0.0);
    for (s, value) in v.chunks_exact(d).enumerate() {
        for r in 0..rows {
            let p = scores[r * keys + s];
            for (o, &x) in out[r * d..(r + 1) * d].iter_mut().zip(value) {
                *o += p * x;
            }
        }
    }
}

/// Softmax as torch computes it: exponentials of the scores less their maximum, divided by
/// their sum, before the values are weighted. Maxima and sums in eight lanes: one running sum
/// would wait on each addition (three cycles a score, most of a 578-key softmax).
#[inline(always)]
fn softmax(row: &mut [f32]) {
    let max = super::max(row);
    if max == f32::NEG_INFINITY {
        // Every key masked: zeros, as the exports' NaN guard after their softmax makes them.
        row.fill(0.0);
        return;
    }
    let (whole, rest) = row.split_at_mut(row.len() / 8 * 8);
    let mut sums = [0f32; 8];
    for chunk in whole.chunks_exact_mut(8) {
        for (s, x) in sums.iter_mut().zip(chunk) {
            *x = super::exp(*x - max);
            *s += *x;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in rest.iter_mut() {
        *x = super::exp(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    // One loop over the row: the two parts chained were not vectorised.
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// The blocked product for many rows against one head's keys and values laid out by
/// [`Packed`]: pads the queries to whole tiles of rows, then runs [`blocked_tiles`]. Returns the
/// stride of the output rows: the depth padded to whole tiles.
fn blocked(
    keys_t: &[f32],
    values: &[f32],
    rows: usize,
    keys: usize,
    d: usize,
    s: &mut Scratch,
) -> usize {
    let d_padded = d.next_multiple_of(TILE_COLS);
    let rows_padded = rows.next_multiple_of(TILE_ROWS);
    s.q.resize(rows_padded * d, 0.0);
    s.scores
        .resize(TILE_ROWS * keys.next_multiple_of(TILE_COLS), 0.0);
    s.out.resize(rows_padded * d_padded, 0.0);
    let tiles = Tiles {
        q: &s.q,
        keys_t,
        values,
        mask: &s.mask,
        keys,
        d,
    };
    let (scores, out) = (&mut s.scores, &mut s.out);
    #[cfg(target_arch = "x86_64")]
    if super::avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        unsafe { avx2::blocked_tiles(tiles, scores, out) };
        return d_padded;
    }
    // Every aarch64 CPU fuses multiply-adds; elsewhere `mul_add` without the instruction
    // would be a library call per product.
    blocked_tiles(
        tiles,
        scores,
        out,
        tile_any::<{ cfg!(target_arch = "aarch64") }>,
    );
    d_padded
}

/// Whether the blocked product runs on vector instructions that were measured against tract's
/// here: x86 with AVX2 and FMA (on an AVX-512 CPU, where tract uses AVX-512, the TrOCR-small
/// encoder took the same time either way). aarch64 and armv7 get tract's hand-written f32
/// kernels until this one is measured on a board.
pub fn blocked_is_fast() -> bool {
    super::avx2_fma()
}

/// The operands of [`blocked_tiles`]: `keys_t` and `values` as [`Packed`] lays them out.
#[derive(Clone, Copy)]
struct Tiles<'a> {
    /// `[rows, d]`, rows a multiple of [`TILE_ROWS`].
    q: &'a [f32],
    keys_t: &'a [f32],
    values: &'a [f32],
    /// Added to the scores: `[rows, keys]` (rows not padded), or empty.
    mask: &'a [f32],
    keys: usize,
    d: usize,
}

/// `a * b + c`, fused where the CPU does it in one instruction (`FMA`): a quarter faster here.
#[inline(always)]
fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Per tile of [`TILE_ROWS`] rows: their scores against each tile of [`TILE_COLS`] keys,
/// softmax, then their outputs for each tile of [`TILE_COLS`] values; both products are calls
/// of `tile` (see [`tile_any`]). `scores`: [`TILE_ROWS`] rows of the keys padded to whole
/// tiles; `out`: `[rows, d padded to whole tiles]`.
#[inline(always)]
fn blocked_tiles(
    t: Tiles,
    scores: &mut [f32],
    out: &mut [f32],
    tile: impl Fn(&[f32], usize, &[f32], &mut [f32], usize),
) {
    let (d, keys) = (t.d, t.keys);
    let keys_padded = scores.len() / TILE_ROWS;
    let d_padded = d.next_multiple_of(TILE_COLS);
    let out_tiles = out.chunks_exact_mut(TILE_ROWS * d_padded);
    let mut masks = t.mask.chunks(TILE_ROWS * keys);
    for (q, out) in t.q.chunks_exact(TILE_ROWS * d).zip(out_tiles) {
        for (j, keys_t) in t.keys_t.chunks_exact(d * TILE_COLS).enumerate() {
            tile(q, d, keys_t, &mut scores[j * TILE_COLS..], keys_padded);
        }
        // The last tile's mask has only the rows that are not padding.
        let mask = masks.next().unwrap_or_default().chunks_exact(keys);
        for (row, mask) in scores.chunks_exact_mut(keys_padded).zip(mask) {
            for (s, m) in row.iter_mut().zip(mask) {
                *s += m;
            }
        }
        for row in scores.chunks_exact_mut(keys_padded) {
            softmax(&mut row[..keys]);
        }
        for (j, values) in t.values.chunks_exact(keys * TILE_COLS).enumerate() {
            tile(
                scores,
                keys_padded,
                values,
                &mut out[j * TILE_COLS..],
                d_padded,
            );
        }
    }
}

/// One tile of either product: `c[r * ldc + x] = sum over p of a[r * lda + p] * b[p *
/// TILE_COLS + x]` for [`TILE_ROWS`] rows `r` and [`TILE_COLS`] columns `x`, `p` over `b`'s
/// rows. The sums are arrays of known length, read and written whole, so that the compiler
/// keeps them in vector registers: indexing one by a length known only at run time (a slice of
/// the tile, `&sum[..n]`) made it keep them in memory, five times slower.
#[inline(always)]
fn tile_any<const FMA: bool>(a: &[f32], lda: usize, b: &[f32], c: &mut [f32], ldc: usize) {
    let mut sums = [[0f32; TILE_COLS]; TILE_ROWS];
    for (p, b) in b.chunks_exact(TILE_COLS).enumerate() {
        let Some(b) = b.first_chunk::<TILE_COLS>() else {
            continue;
        };
        for (r, sum) in sums.iter_mut().enumerate() {
            let x = a[r * lda + p];
            for i in 0..TILE_COLS {
                sum[i] = mul_add::<FMA>(x, b[i], sum[i]);
            }
        }
    }
    for (r, sum) in sums.iter().enumerate() {
        c[r * ldc..][..TILE_COLS].copy_from_slice(sum);
    }
}

/// A dot product in eight lanes, which the compiler keeps in vector registers.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    /// [`super::head_attention_any`] with AVX2.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn head_attention(
        k: super::Keys,
        v: &[f32],
        rows: usize,
        d: usize,
        s: &mut super::Scratch,
    ) {
        super::head_attention_any(k, v, rows, d, s)
    }

    /// [`super::blocked_tiles`] with AVX2 and fused multiply-adds, on [`tile`].
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn blocked_tiles(t: super::Tiles, scores: &mut [f32], out: &mut [f32]) {
        // SAFETY: this function's own contract.
        super::blocked_tiles(t, scores, out, |a, lda, b, c, ldc| unsafe {
            tile(a, lda, b, c, ldc)
        })
    }

    /// [`super::tile_any`] written with AVX2 instructions: the compiler's own vectorisation of
    /// it kept bounds checks, stack reloads and constants of the softmax in the inner loop
    /// (35 instructions for 8 multiply-adds).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile(a: &[f32], lda: usize, b: &[f32], c: &mut [f32], ldc: usize) {
        use super::{TILE_COLS, TILE_ROWS};
        use std::arch::x86_64::*;
        let k = b.len() / TILE_COLS;
        assert!(
            a.len() >= (TILE_ROWS - 1) * lda + k,
            "tile rows past the operand"
        );
        assert!(
            c.len() >= (TILE_ROWS - 1) * ldc + TILE_COLS,
            "tile past the output"
        );
        let rows: [*const f32; TILE_ROWS] = std::array::from_fn(|r| a[r * lda..].as_ptr());
        let mut sums = [[_mm256_setzero_ps(); 2]; TILE_ROWS];
        let mut b = b.as_ptr();
        for p in 0..k {
            // SAFETY: row p of b is within it (p < k); a's rows hold k values each (asserted).
            unsafe {
                let (b0, b1) = (_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8)));
                for r in 0..TILE_ROWS {
                    let x = _mm256_broadcast_ss(&*rows[r].add(p));
                    sums[r][0] = _mm256_fmadd_ps(x, b0, sums[r][0]);
                    sums[r][1] = _mm256_fmadd_ps(x, b1, sums[r][1]);
                }
                b = b.add(TILE_COLS);
            }
        }
        for (r, sum) in sums.iter().enumerate() {
            let c = c[r * ldc..][..TILE_COLS].as_mut_ptr();
            // SAFETY: 16 values from c, in bounds by the slice above.
            unsafe {
                _mm256_storeu_ps(c, sum[0]);
                _mm256_storeu_ps(c.add(8), sum[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(q: &[f32], c: f32, k: &[f32], v: &[f32], dims: Dims) -> Vec<f32> {
        masked_reference(q, c, k, v, None, dims)
    }

    fn masked_reference(
        q: &[f32],
        c: f32,
        k: &[f32],
        v: &[f32],
        mask: Option<Mask>,
        dims: Dims,
    ) -> Vec<f32> {
        let d = dims.depth;
        let mut out = vec![0f32; q.len()];
        for row in 0..dims.groups * dims.per_group {
            let g = row / dims.per_group;
            for h in 0..dims.heads {
                for t in 0..dims.queries {
                    let qa = ((row * dims.heads + h) * dims.queries + t) * d;
                    let kv = (g * dims.heads + h) * dims.keys * d;
                    let added =
                        |s: usize| mask.map_or(0.0, |m| m.values[m.at(row, h, t) + s] as f64);
                    let scores: Vec<f64> = (0..dims.keys)
                        .map(|s| {
                            (0..d)
                                .map(|i| q[qa + i] as f64 * (c * k[kv + s * d + i]) as f64)
                                .sum::<f64>()
                                + added(s)
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for i in 0..d {
                        let x: f64 = (0..dims.keys)
                            .map(|s| e[s] * v[kv + s * d + i] as f64)
                            .sum();
                        out[qa + i] = (x / sum) as f32;
                    }
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_for_shared_and_per_row_keys() {
        for dims in [
            // Four beams of one image, one new token; depth not a multiple of 8.
            Dims {
                groups: 1,
                per_group: 4,
                heads: 3,
                queries: 1,
                keys: 37,
                depth: 12,
            },
            // Two images of two beams.
            Dims {
                groups: 2,
                per_group: 2,
                heads: 2,
                queries: 1,
                keys: 20,
                depth: 32,
            },
            // Greedy: every row its own keys; a prompt of three tokens.
            Dims {
                groups: 3,
                per_group: 1,
                heads: 4,
                queries: 3,
                keys: 9,
                depth: 8,
            },
            // Many beams of one image (blocked, in two chunks).
            Dims {
                groups: 1,
                per_group: 70,
                heads: 1,
                queries: 1,
                keys: 5,
                depth: 4,
            },
            // An encoder's self-attention: blocked, rows and keys not whole tiles, depth
            // neither a whole tile nor of eight.
            Dims {
                groups: 2,
                per_group: 1,
                heads: 3,
                queries: 70,
                keys: 70,
                depth: 12,
            },
            // Blocked with whole tiles, depth of several tiles.
            Dims {
                groups: 1,
                per_group: 1,
                heads: 2,
                queries: 18,
                keys: 32,
                depth: 64,
            },
            // Blocked over beams with several query positions each (a first step over a
            // prompt at four beams).
            Dims {
                groups: 2,
                per_group: 4,
                heads: 2,
                queries: 5,
                keys: 19,
                depth: 8,
            },
        ] {
            let q = values(dims.query_len(), 1);
            let k: Vec<f32> = values(dims.key_len(), 2).iter().map(|x| 4.0 * x).collect();
            let v = values(dims.key_len(), 3);
            for c in [1.0, 0.35] {
                let want = reference(&q, c, &k, &v, dims);
                crate::kernels::tests::portable_then_native(|path| {
                    let mut got = vec![f32::NAN; q.len()];
                    attend(&q, c, Keys::Rows(&k), &v, None, dims, &mut got).unwrap();
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-5,
                            "{path}: {dims:?} x {c} at {i}: {g} vs {w}"
                        );
                    }
                });
            }
        }
    }

    #[test]
    fn masks_are_added_and_transposed_keys_read() {
        for dims in [
            // Beams at a step, and beams over a prompt of three positions.
            Dims {
                groups: 2,
                per_group: 2,
                heads: 3,
                queries: 3,
                keys: 11,
                depth: 8,
            },
            // Blocked: rows not whole tiles, keys not whole tiles.
            Dims {
                groups: 1,
                per_group: 1,
                heads: 2,
                queries: 70,
                keys: 37,
                depth: 16,
            },
        ] {
            let rows = dims.groups * dims.per_group;
            let (q, k, v) = (
                values(dims.query_len(), 4),
                values(dims.key_len(), 5),
                values(dims.key_len(), 6),
            );
            // Per row and query position, the same for every head; some keys hidden with
            // torch's finfo(float32).min, as the exports do.
            let mut m: Vec<f32> = values(rows * dims.queries * dims.keys, 7)
                .iter()
                .map(|x| 2.0 * x)
                .collect();
            for x in m.iter_mut().step_by(5) {
                *x = f32::MIN;
            }
            let mask = Mask {
                values: &m,
                strides: [dims.queries * dims.keys, 0, dims.keys],
            };
            let want = masked_reference(&q, 0.5, &k, &v, Some(mask), dims);
            // Keys as they are, and transposed per head (GPT-2's cut cache).
            let k_t: Vec<f32> = k
                .chunks_exact(dims.keys * dims.depth)
                .flat_map(|head| {
                    (0..dims.depth)
                        .flat_map(move |c| (0..dims.keys).map(move |j| head[j * dims.depth + c]))
                })
                .collect();
            for keys in [Keys::Rows(&k), Keys::Transposed(&k_t)] {
                crate::kernels::tests::portable_then_native(|path| {
                    let mut got = vec![f32::NAN; q.len()];
                    attend(&q, 0.5, keys, &v, Some(mask), dims, &mut got).unwrap();
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-5,
                            "{path} {keys:?}: {dims:?} at {i}: {g} vs {w}"
                        );
                    }
                });
            }
            let short = Mask {
                values: &m[1..],
                ..mask
            };
            let mut out = vec![0.0; q.len()];
            assert!(attend(&q, 0.5, Keys::Rows(&k), &v, Some(short), dims, &mut out).is_err());
        }
    }

    #[test]
    fn threads_give_the_same_result() {
        let same_on_two_threads = |dims: Dims, scale: f32| {
            use tract_linalg::multithread::{multithread_tract_scope, Executor};
            let (q, k, v) = (
                values(dims.query_len(), 7),
                values(dims.key_len(), 8),
                values(dims.key_len(), 9),
            );
            let run = || {
                let mut out = vec![0f32; q.len()];
                attend(&q, scale, Keys::Rows(&k), &v, None, dims, &mut out).unwrap();
                out
            };
            let alone = run();
            assert_eq!(
                multithread_tract_scope(Executor::multithread(2), run),
                alone,
                "{dims:?}"
            );
        };
        // TrOCR-small's step at eight beams: enough work to split over the pool.
        let step = Dims {
            groups: 1,
            per_group: 8,
            heads: 8,
            queries: 1,
            keys: 578,
            depth: 32,
        };
        same_on_two_threads(step, 1.0);
        // TrOCR-small's encoder: 578 rows per head in ten chunks.
        let encoder = Dims {
            groups: 1,
            per_group: 1,
            heads: 2,
            queries: 578,
            keys: 578,
            depth: 64,
        };
        same_on_two_threads(encoder, 0.125);
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let dims = Dims {
            groups: 1,
            per_group: 2,
            heads: 1,
            queries: 1,
            keys: 3,
            depth: 2,
        };
        let fails = |q: &[f32], k: &[f32], v: &[f32], dims: Dims| {
            let mut out = vec![0.0; 4];
            attend(q, 1.0, Keys::Rows(k), v, None, dims, &mut out).is_err()
        };
        assert!(fails(&[0.0; 4], &[0.0; 5], &[0.0; 6], dims));
        assert!(fails(&[0.0; 3], &[0.0; 6], &[0.0; 6], dims));
        assert!(fails(&[0.0; 4], &[], &[], Dims { keys: 0, ..dims }));
    }
}
