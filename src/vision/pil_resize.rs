//! Bit-exact port of Pillow's `Image.resize`, `Image.reduce` and `Image.thumbnail`
//! for 8-bit images (modes L, LA, RGB, RGBA), std only.
//!
//! Verified byte-for-byte against the Pillow 10.4.0, 11.3.0, 12.1.1, 12.2.0 and 13.0.0
//! wheels (x86-64 Linux); the versions differ only where [`PillowVersion`] says.
//! What is reproduced, and where it lives in Pillow:
//! * `src/PIL/Image.py` `Image.resize` / `reduce` / `thumbnail` / `_get_safe_box`: the
//!   Python-level decisions (early copy, LA/RGBA premultiplication, `reducing_gap`);
//! * `src/_imaging.c` `_resize`: crop fast path, NEAREST goes to the affine scaler,
//!   the box reaches C as `float`;
//! * `src/libImaging/Resample.c`: convolution kernels (antialiased: the kernel is
//!   stretched by the downscale factor), 22-bit fixed point, two separable passes;
//! * `src/libImaging/Geometry.c` `ImagingScaleAffine`: NEAREST;
//! * `src/libImaging/Reduce.c`: `Image.reduce`, used by `reducing_gap`;
//! * `src/libImaging/Convert.c` `rgbA2rgba`/`rgba2rgbA`/`lA2la`/`la2lA`.
//!
//! Images are interleaved, row-major, `channels` bytes per pixel: 1 = L, 2 = LA,
//! 3 = RGB, 4 = RGBA. Channels 2 and 4 carry straight (not premultiplied) alpha in
//! the last channel, exactly like PIL's "LA"/"RGBA"; for any filter but NEAREST PIL
//! resamples them premultiplied and un-premultiplies after (lossy for small alpha).
//!
//! Floating-point note: Hamming and Lanczos call `sin`/`cos`. Rust's `f64::sin` calls
//! the platform libm, as Pillow does, so on glibc the coefficients are identical. The
//! 22-bit quantisation hides almost any 1-ulp libm difference, but not provably all
//! (e.g. musl vs glibc, or aarch64 Pillow builds where GCC may fuse the bicubic
//! polynomial into FMAs); only x86-64 glibc was tested.

/// PIL resampling filters. Discriminants are PIL's integer codes (`Image.Resampling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Filter {
    Nearest = 0,
    Lanczos = 1,
    Bilinear = 2,
    Bicubic = 3,
    Box = 4,
    Hamming = 5,
    /// Magic Kernel Sharp 2013 (Pillow >= 13 only).
    Mks2013 = 6,
    /// Magic Kernel Sharp 2021 (Pillow >= 13 only).
    Mks2021 = 7,
}

impl Filter {
    /// Maps PIL's resample code (`Image.Resampling.*`, also what HF configs store
    /// as `resample`) to a filter.
    pub fn from_pil_code(code: u32) -> Option<Filter> {
        Some(match code {
            0 => Filter::Nearest,
            1 => Filter::Lanczos,
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            4 => Filter::Box,
            5 => Filter::Hamming,
            6 => Filter::Mks2013,
            7 => Filter::Mks2021,
            _ => return None,
        })
    }

    pub fn pil_code(self) -> u32 {
        self as u32
    }

    /// Kernel radius in source pixels at scale 1 (`struct filter.support` in
    /// Resample.c, `_filters_support` in Image.py). NEAREST has none.
    fn support(self) -> f64 {
        match self {
            Filter::Nearest => 0.0,
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
            Filter::Mks2013 => 2.5,
            Filter::Mks2021 => 4.5,
        }
    }

    /// The kernels, transcribed operation by operation from Resample.c so that the
    /// double results are the same bits (no algebraic simplification!).
    fn kernel(self, x: f64) -> f64 {
        use std::f64::consts::PI;
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                return 1.0;
            }
            let x = x * PI;
            x.sin() / x
        }
        match self {
            Filter::Nearest => unreachable!("NEAREST does not convolve"),
            // Half-open on the left so that exactly one of two adjacent taps wins a tie.
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    return 1.0;
                }
                if x >= 1.0 {
                    return 0.0;
                }
                let x = x * PI;
                // C writes `0.54f + 0.46f * cos(x)`: the constants are *float*
                // literals promoted to double, i.e. not exactly 0.54 / 0.46.
                x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
            // `pow(x, 2)` in C, which GCC compiles to exactly `x * x`.
            Filter::Mks2013 => {
                let x = x.abs();
                if x < 0.5 {
                    17.0 / 16.0 - 7.0 / 4.0 * (x * x)
                } else if x < 1.5 {
                    (1.0 - x) * (7.0 / 4.0 - x)
                } else if x < 2.5 {
                    -1.0 / 8.0 * ((x - 5.0 / 2.0) * (x - 5.0 / 2.0))
                } else {
                    0.0
                }
            }
            Filter::Mks2021 => {
                let x = x.abs();
                if x < 0.5 {
                    577.0 / 576.0 - 239.0 / 144.0 * (x * x)
                } else if x < 1.5 {
                    35.0 / 36.0 * (x - 1.0) * (x - 239.0 / 140.0)
                } else if x < 2.5 {
                    1.0 / 6.0 * (x - 2.0) * (65.0 / 24.0 - x)
                } else if x < 3.5 {
                    1.0 / 36.0 * (x - 3.0) * (x - 15.0 / 4.0)
                } else if x < 4.5 {
                    -1.0 / 288.0 * ((x - 9.0 / 2.0) * (x - 9.0 / 2.0))
                } else {
                    0.0
                }
            }
        }
    }
}

/// Which Pillow release to imitate. The arithmetic is the same in all of them; what
/// changed is (a) the order of the two separable passes, which changes the rounding
/// of the intermediate 8-bit image (several levels with sharp kernels), and (b) two
/// LA/RGBA details. Getting the version wrong breaks exactness for ~10% of cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PillowVersion {
    /// Pillow <= 12.1 (tested 10.4, 11.3, 12.1): always horizontal pass, then
    /// vertical; LA/RGBA ignore `reducing_gap`; `reduce((1, 1), box)` on LA/RGBA
    /// round-trips through premultiplied alpha.
    Pre12_2,
    /// Pillow 12.2 / 12.3: as `Pre12_2`, except that images more than 100x taller
    /// than wide whose height shrinks are resized in two C calls, vertical first.
    V12_2,
    /// Pillow >= 13.0: vertical pass first when the height loses more than twice as
    /// many pixels as the width (e.g. 120x80 -> 241x26, 33x200 -> 1x1); LA/RGBA honour
    /// `reducing_gap`; `reduce((1, 1), box)` is a plain crop.
    #[default]
    V13,
}

/// The optional arguments of `Image.resize`, plus the Pillow version to imitate.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct ResizeOptions {
    /// `box`: `(left, top, right, bottom)` source region in pixels, `None` = whole
    /// image. Python floats; PIL narrows them to C `float` at the C boundary (so do we).
    pub box_: Option<[f64; 4]>,
    /// `reducing_gap`: first shrink by an integer factor with `Image.reduce`, then
    /// resample the remaining (>= `reducing_gap` times) change. `None` in
    /// `Image.resize`, `Some(2.0)` in `Image.thumbnail`.
    pub reducing_gap: Option<f64>,
    pub pillow: PillowVersion,
}

impl ResizeOptions {
    /// `Image.thumbnail`'s defaults (`reducing_gap=2.0`), latest Pillow.
    pub const THUMBNAIL: ResizeOptions = ResizeOptions {
        box_: None,
        reducing_gap: Some(2.0),
        pillow: PillowVersion::V13,
    };
}

/// `Image.resize((new_width, new_height), filter)` with PIL's defaults
/// (`box=None`, `reducing_gap=None`), Pillow >= 13 pass order.
/// Returns `new_width * new_height * channels` bytes.
pub fn resize(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    new_width: usize,
    new_height: usize,
    filter: Filter,
) -> Vec<u8> {
    let opts = ResizeOptions::default();
    resize_with(
        src, width, height, channels, new_width, new_height, filter, &opts,
    )
}

/// Full `Image.resize(size, resample, box, reducing_gap)`.
#[allow(clippy::too_many_arguments)]
pub fn resize_with(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    new_width: usize,
    new_height: usize,
    filter: Filter,
    opts: &ResizeOptions,
) -> Vec<u8> {
    check_image(src, width, height, channels);
    assert!(
        new_width >= 1 && new_height >= 1,
        "height and width must be > 0"
    );
    if let Some(g) = opts.reducing_gap {
        assert!(g >= 1.0, "reducing_gap must be 1.0 or greater");
    }
    let full = [0.0, 0.0, width as f64, height as f64];
    let b = opts.box_.unwrap_or(full);
    if (width, height) == (new_width, new_height) && b == full {
        return src.to_vec();
    }

    // Image.py: LA/RGBA are resampled premultiplied ("La"/"RGBa") so that transparent
    // pixels' colours don't bleed into their neighbours; NEAREST copies pixels as is.
    let size = (new_width, new_height);
    if has_alpha(channels) && filter != Filter::Nearest {
        let img = Owned {
            data: premultiply(src, channels),
            width,
            height,
        };
        // Before Pillow 13 the recursive call dropped `reducing_gap` for LA/RGBA.
        let inner = match opts.pillow {
            PillowVersion::V13 => *opts,
            _ => ResizeOptions {
                reducing_gap: None,
                ..*opts
            },
        };
        return unpremultiply(
            resize_plain(img, channels, size, filter, b, &inner),
            channels,
        );
    }
    let img = Owned {
        data: src.to_vec(),
        width,
        height,
    };
    resize_plain(img, channels, size, filter, b, opts)
}

/// The rest of `Image.resize` once the mode is settled: optional `reduce` step,
/// then `_imaging.c::_resize`.
fn resize_plain(
    mut img: Owned,
    c: usize,
    (new_width, new_height): (usize, usize),
    filter: Filter,
    mut b: [f64; 4],
    opts: &ResizeOptions,
) -> Vec<u8> {
    if let (Some(gap), true) = (opts.reducing_gap, filter != Filter::Nearest) {
        // Python: int(x) truncates, `or 1` maps 0 to 1.
        let factor_x = (((b[2] - b[0]) / new_width as f64 / gap) as i64).max(1) as usize;
        let factor_y = (((b[3] - b[1]) / new_height as f64 / gap) as i64).max(1) as usize;
        if factor_x > 1 || factor_y > 1 {
            let rb = safe_box(img.width, img.height, new_width, new_height, filter, b);
            img = reduce_plain(&img, c, factor_x, factor_y, rb);
            b = [
                (b[0] - rb[0] as f64) / factor_x as f64,
                (b[1] - rb[1] as f64) / factor_y as f64,
                (b[2] - rb[0] as f64) / factor_x as f64,
                (b[3] - rb[1] as f64) / factor_y as f64,
            ];
        }
    }
    let v = opts.pillow;
    if v == PillowVersion::V12_2 && img.height > img.width * 100 && new_height < img.height {
        // Pillow 12.2/12.3 Image.py: resize tall images in two calls, vertical first.
        let (w, h) = (img.width, new_height);
        let tmp = core_resize(&img, c, w, h, filter, [0.0, b[1], w as f64, b[3]], v);
        let tmp = Owned {
            data: tmp,
            width: w,
            height: h,
        };
        return core_resize(
            &tmp,
            c,
            new_width,
            h,
            filter,
            [b[0], 0.0, b[2], h as f64],
            v,
        );
    }
    core_resize(&img, c, new_width, new_height, filter, b, v)
}

/// `Image.reduce((factor_x, factor_y), box)`: each output pixel is the rounded mean
/// of a `factor_x` x `factor_y` block (partial blocks at the right/bottom edges).
/// `box_` is an integer `(left, top, right, bottom)`. Returns `(data, width, height)`.
pub fn reduce(
    src: &[u8],
    (width, height): (usize, usize),
    channels: usize,
    (factor_x, factor_y): (usize, usize),
    box_: Option<[usize; 4]>,
    pillow: PillowVersion,
) -> (Vec<u8>, usize, usize) {
    check_image(src, width, height, channels);
    assert!(factor_x >= 1 && factor_y >= 1, "scale must be > 0");
    let full = [0, 0, width, height];
    let rb = box_.unwrap_or(full);
    assert!(rb[0] < rb[2] && rb[1] < rb[3], "box can't be empty");
    assert!(
        rb[2] <= width && rb[3] <= height,
        "box can't exceed original image size"
    );
    // Pillow 13 crops for factor (1, 1); older versions only short-circuit the full
    // box and otherwise take the (lossy) premultiply round trip for LA/RGBA too.
    let identity = (factor_x, factor_y) == (1, 1) && (pillow == PillowVersion::V13 || rb == full);
    let out = if has_alpha(channels) && !identity {
        let img = Owned {
            data: premultiply(src, channels),
            width,
            height,
        };
        let r = reduce_plain(&img, channels, factor_x, factor_y, rb);
        Owned {
            data: unpremultiply(r.data, channels),
            ..r
        }
    } else {
        let img = Owned {
            data: src.to_vec(),
            width,
            height,
        };
        reduce_plain(&img, channels, factor_x, factor_y, rb)
    };
    (out.data, out.width, out.height)
}

/// `_imaging.c::_reduce` + Reduce.c `ImagingReduce` on an 8-bit image.
fn reduce_plain(img: &Owned, c: usize, factor_x: usize, factor_y: usize, rb: [usize; 4]) -> Owned {
    let [l, t, r, bt] = rb;
    if factor_x == 1 && factor_y == 1 {
        let data = crop(img, c, l, t, r, bt);
        return Owned {
            data,
            width: r - l,
            height: bt - t,
        };
    }
    let (ow, oh) = ((r - l).div_ceil(factor_x), (bt - t).div_ceil(factor_y));
    let mut out = vec![0u8; ow * oh * c];
    for oy in 0..oh {
        let y0 = t + oy * factor_y;
        let y1 = (y0 + factor_y).min(bt);
        for ox in 0..ow {
            let x0 = l + ox * factor_x;
            let x1 = (x0 + factor_x).min(r);
            // Reduce.c: out = ((sum + n/2) * multiplier) >> 24 with
            // multiplier = (UINT32)(2^32f / (float)(256 * n)), computed in *float*
            // (division_UINT32), so it is slightly below 2^24/n for most n. The 2x/4x
            // specialisations use shifts, which agree because the multiplier is then an
            // exact power of two. Partial edge blocks use their own pixel count.
            let n = ((x1 - x0) * (y1 - y0)) as u32;
            let mult = (4294967296.0f32 / (256 * n) as f32) as u32;
            for ch in 0..c {
                let mut sum = n / 2;
                for y in y0..y1 {
                    let row = &img.data[y * img.width * c..];
                    for x in x0..x1 {
                        sum += row[x * c + ch] as u32;
                    }
                }
                out[(oy * ow + ox) * c + ch] = (sum.wrapping_mul(mult) >> 24) as u8;
            }
        }
    }
    Owned {
        data: out,
        width: ow,
        height: oh,
    }
}

/// The size `Image.thumbnail((max_width, max_height))` picks: fits inside the box,
/// keeps the aspect ratio (rounding to whichever neighbouring integer gives the closer
/// aspect, ties to floor), never upscales. `None` means PIL leaves the image alone.
pub fn thumbnail_size(
    width: usize,
    height: usize,
    max_width: usize,
    max_height: usize,
) -> Option<(usize, usize)> {
    let (mut x, mut y) = (max_width, max_height);
    if x >= width && y >= height {
        return None;
    }
    // round_aspect: max(min(floor(v), ceil(v), key=key), 1); min() keeps the first
    // (floor) on ties.
    fn round_aspect(v: f64, key: impl Fn(f64) -> f64) -> usize {
        let (f, c) = (v.floor(), v.ceil());
        let pick = if key(c) < key(f) { c } else { f };
        (pick as usize).max(1)
    }
    let aspect = width as f64 / height as f64;
    let (xf, yf) = (x as f64, y as f64);
    if xf / yf >= aspect {
        x = round_aspect(yf * aspect, |n| (aspect - n / yf).abs());
    } else {
        y = round_aspect(xf / aspect, |n| {
            if n == 0.0 {
                0.0
            } else {
                (aspect - xf / n).abs()
            }
        });
    }
    Some((x, y))
}

/// `Image.thumbnail((max_width, max_height), filter, reducing_gap)` on an in-memory
/// image (`draft()` only does something for a still-undecoded JPEG, so it is ignored
/// here). Pass [`ResizeOptions::THUMBNAIL`] for PIL's defaults: its
/// `reducing_gap=2.0` makes thumbnail differ from a plain `resize` for downscales of
/// 4x or more. `opts.box_` must be `None`. Returns `(data, width, height)`.
#[allow(clippy::too_many_arguments)]
pub fn thumbnail(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    max_width: usize,
    max_height: usize,
    filter: Filter,
    opts: &ResizeOptions,
) -> (Vec<u8>, usize, usize) {
    assert!(opts.box_.is_none(), "thumbnail has no box argument");
    match thumbnail_size(width, height, max_width, max_height) {
        Some((w, h)) if (w, h) != (width, height) => (
            resize_with(src, width, height, channels, w, h, filter, opts),
            w,
            h,
        ),
        _ => (src.to_vec(), width, height),
    }
}

// ---------------------------------------------------------------------------------
// internals

struct Owned {
    data: Vec<u8>,
    width: usize,
    height: usize,
}

/// LA and RGBA: PIL resamples these premultiplied.
fn has_alpha(channels: usize) -> bool {
    channels == 2 || channels == 4
}

fn check_image(src: &[u8], width: usize, height: usize, channels: usize) {
    assert!((1..=4).contains(&channels), "channels must be 1..=4");
    assert!(width >= 1 && height >= 1, "empty image");
    assert_eq!(src.len(), width * height * channels, "buffer size mismatch");
}

/// `_imaging.c::_resize` after the Python layer: validation, crop fast path,
/// NEAREST via the affine scaler, everything else via `ImagingResample`.
fn core_resize(
    img: &Owned,
    c: usize,
    xsize: usize,
    ysize: usize,
    filter: Filter,
    b: [f64; 4],
    version: PillowVersion,
) -> Vec<u8> {
    let b = b.map(|v| v as f32); // PyArg_ParseTuple "(ffff)": C float
    assert!(b[0] >= 0.0 && b[1] >= 0.0, "box offset can't be negative");
    assert!(
        b[2] <= img.width as f32 && b[3] <= img.height as f32,
        "box can't exceed original image size"
    );
    assert!(
        b[2] - b[0] >= 0.0 && b[3] - b[1] >= 0.0,
        "box can't be empty"
    );
    // "If box's coordinates are int and box size matches requested size" -> plain crop.
    if b[0].fract() == 0.0
        && b[2] - b[0] == xsize as f32
        && b[1].fract() == 0.0
        && b[3] - b[1] == ysize as f32
    {
        let (l, t) = (b[0] as usize, b[1] as usize);
        return crop(img, c, l, t, b[2] as usize, b[3] as usize);
    }
    if filter == Filter::Nearest {
        return nearest(img, c, xsize, ysize, b);
    }
    resample(img, c, xsize, ysize, filter, b, version)
}

fn crop(img: &Owned, c: usize, l: usize, t: usize, r: usize, b: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity((r - l) * (b - t) * c);
    for y in t..b {
        let row = y * img.width * c;
        out.extend_from_slice(&img.data[row + l * c..row + r * c]);
    }
    out
}

/// Geometry.c `ImagingScaleAffine` (what `resize(..., NEAREST)` runs): the source
/// coordinate is *accumulated* (`xo += a[0]`), not recomputed as `(x + 0.5) * scale`,
/// and then truncated; the accumulated rounding error is part of the result, so we
/// reproduce it operation for operation. Out-of-range pixels are filled with 0.
fn nearest(img: &Owned, c: usize, xsize: usize, ysize: usize, b: [f32; 4]) -> Vec<u8> {
    // COORD(v): negative -> -1 (out of range), else truncate.
    let coord = |v: f64| if v < 0.0 { -1i64 } else { v as i64 };
    // a[0] = (double)(box[2] - box[0]) / xsize: the subtraction is in float.
    let a0 = (b[2] - b[0]) as f64 / xsize as f64;
    let a4 = (b[3] - b[1]) as f64 / ysize as f64;
    let (a2, a5) = (b[0] as f64, b[1] as f64);

    let mut xintab = vec![0usize; xsize]; // calloc'ed in C
    let (mut xmin, mut xmax) = (xsize, 0);
    let mut xo = a2 + a0 * 0.5;
    for (x, slot) in xintab.iter_mut().enumerate() {
        let xin = coord(xo);
        if xin >= 0 && (xin as usize) < img.width {
            xmax = x + 1;
            xmin = xmin.min(x);
            *slot = xin as usize;
        }
        xo += a0;
    }
    let mut out = vec![0u8; xsize * ysize * c];
    let mut yo = a5 + a4 * 0.5;
    for y in 0..ysize {
        let yi = coord(yo);
        if yi >= 0 && (yi as usize) < img.height {
            let row_in = &img.data[yi as usize * img.width * c..];
            let row_out = &mut out[y * xsize * c..];
            for x in xmin..xmax {
                let s = xintab[x] * c;
                row_out[x * c..x * c + c].copy_from_slice(&row_in[s..s + c]);
            }
        }
        yo += a4;
    }
    out
}

/// Resample.c uses 22 fractional bits: a u8 (8 bits) times a coefficient that can be
/// a bit above 1.0 or negative, summed, must fit an `int` with room for overshoot
/// (2 bits) -> 32 - 8 - 2.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per-output-pixel convolution taps along one axis: first source index and the
/// fixed-point weights (`precompute_coeffs` + `normalize_coeffs_8bpc`).
struct Taps {
    start: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn precompute_coeffs(in_size: usize, in0: f32, in1: f32, out_size: usize, filter: Filter) -> Taps {
    // The span is a float subtraction, then widened; the rest is double.
    let scale = (in1 - in0) as f64 / out_size as f64;
    // Antialiasing: when shrinking, the kernel is stretched by the shrink factor.
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let inv_filterscale = 1.0 / filterscale;
    let mut start = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = in0 as f64 + (xx as f64 + 0.5) * scale;
        // `(int)(v + 0.5)` truncates toward zero; negatives are clamped to 0 anyway.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).max(0) as usize;
        let mut k: Vec<f64> = (0..n)
            .map(|x| filter.kernel(((x as i64 + xmin) as f64 - center + 0.5) * inv_filterscale))
            .collect();
        let ww: f64 = k.iter().fold(0.0, |a, &w| a + w); // same left-to-right order as C
        if ww != 0.0 {
            k.iter_mut().for_each(|w| *w /= ww);
        }
        // Round half away from zero, then truncate, into 22-bit fixed point.
        let one = (1u32 << PRECISION_BITS) as f64;
        let fixed = k
            .iter()
            .map(|&w| {
                if w < 0.0 {
                    (-0.5 + w * one) as i32
                } else {
                    (0.5 + w * one) as i32
                }
            })
            .collect();
        start.push(xmin as usize);
        weights.push(fixed);
    }
    Taps { start, weights }
}

/// Fixed point back to u8: arithmetic shift right, clamp to 0..=255 (the `clip8`
/// lookup table in C, which covers every value an `int >> 22` can take).
#[inline]
fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `ImagingResampleInner`. Each axis is a separate 8-bit pass (the intermediate image
/// is rounded to u8), so the pass order is visible in the output:
/// * Pillow < 13: horizontal first, computed only for the source rows the vertical
///   pass will read, then vertical;
/// * Pillow >= 13: vertical first iff the height shrinks by more than twice as many
///   pixels as the width (`in_h - ysize > 2 * (in_w - xsize)`, with `ysize < in_h`),
///   measured on the whole source image, not the box. This rule was recovered
///   empirically from the Pillow 13.0.0 wheel (398 of 398 random decisive cases);
///   it is not the `xsize >= box_w && ysize < box_h` test of an early draft of
///   Pillow PR #9549, whose final C source we could not read.
///
/// A pass is skipped when its axis is unchanged and the box covers it exactly.
fn resample(
    img: &Owned,
    c: usize,
    xsize: usize,
    ysize: usize,
    filter: Filter,
    b: [f32; 4],
    version: PillowVersion,
) -> Vec<u8> {
    let need_h = xsize != img.width || b[0] != 0.0 || b[2] != xsize as f32;
    let need_v = ysize != img.height || b[1] != 0.0 || b[3] != ysize as f32;
    let (in_w, in_h) = (img.width as i64, img.height as i64);
    let vertical_first = version == PillowVersion::V13
        && (ysize as i64) < in_h
        && in_h - ysize as i64 > 2 * (in_w - xsize as i64);
    let horiz = || precompute_coeffs(img.width, b[0], b[2], xsize, filter);
    let vert = || precompute_coeffs(img.height, b[1], b[3], ysize, filter);

    match (need_h, need_v) {
        (false, false) => img.data.clone(),
        (true, false) => horizontal_pass(&img.data, img.width, c, 0, img.height, &horiz()),
        (false, true) => vertical_pass(&img.data, img.width, c, 0, &vert()),
        (true, true) if vertical_first => {
            let tmp = vertical_pass(&img.data, img.width, c, 0, &vert());
            horizontal_pass(&tmp, img.width, c, 0, ysize, &horiz())
        }
        (true, true) => {
            let vert = vert();
            // Only the source rows some output row reads get the horizontal pass.
            let first = vert.start[0];
            let last = vert.start[ysize - 1] + vert.weights[ysize - 1].len();
            let tmp = horizontal_pass(&img.data, img.width, c, first, last - first, &horiz());
            vertical_pass(&tmp, xsize, c, first, &vert)
        }
    }
}

/// Fixed-point accumulator start: 0.5 in 22-bit fixed point, so the final `>>`
/// rounds half up instead of truncating. The sums are C `int`; we use wrapping i32
/// ops so that no input can panic (real data stays far from overflow).
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// `ImagingResampleHorizontal_8bpc` on rows `first .. first + rows` of `src`
/// (`width` pixels wide); output is `taps.start.len()` pixels wide.
fn horizontal_pass(
    src: &[u8],
    width: usize,
    c: usize,
    first: usize,
    rows: usize,
    taps: &Taps,
) -> Vec<u8> {
    let xsize = taps.start.len();
    let mut out = vec![0u8; xsize * rows * c];
    for (yy, row_out) in out.chunks_exact_mut(xsize * c).enumerate() {
        let row_in = &src[(yy + first) * width * c..(yy + first + 1) * width * c];
        for xx in 0..xsize {
            let (x0, k) = (taps.start[xx], &taps.weights[xx]);
            for ch in 0..c {
                let mut ss = HALF;
                for (i, &kw) in k.iter().enumerate() {
                    ss = ss.wrapping_add((row_in[(x0 + i) * c + ch] as i32).wrapping_mul(kw));
                }
                row_out[xx * c + ch] = clip8(ss);
            }
        }
    }
    out
}

/// `ImagingResampleVertical_8bpc`; `src` holds source rows from `row_offset` on.
fn vertical_pass(src: &[u8], width: usize, c: usize, row_offset: usize, taps: &Taps) -> Vec<u8> {
    let stride = width * c;
    let mut out = vec![0u8; stride * taps.start.len()];
    for (yy, row_out) in out.chunks_exact_mut(stride).enumerate() {
        let (y0, k) = (taps.start[yy] - row_offset, &taps.weights[yy]);
        for (i, px) in row_out.iter_mut().enumerate() {
            let mut ss = HALF;
            for (j, &kw) in k.iter().enumerate() {
                ss = ss.wrapping_add((src[(y0 + j) * stride + i] as i32).wrapping_mul(kw));
            }
            *px = clip8(ss);
        }
    }
    out
}

/// Convert.c `rgbA2rgba` / `lA2la`: c' = round(c * a / 255) via the exact
/// `MULDIV255` trick ((t >> 8) + t) >> 8 with t = c * a + 128.
fn premultiply(src: &[u8], channels: usize) -> Vec<u8> {
    let mut out = src.to_vec();
    for px in out.chunks_exact_mut(channels) {
        let a = px[channels - 1] as u32;
        for v in &mut px[..channels - 1] {
            let t = *v as u32 * a + 128;
            *v = (((t >> 8) + t) >> 8) as u8;
        }
    }
    out
}

/// Convert.c `rgba2rgbA` / `la2lA`: c = min(255, 255 * c' / a) with integer
/// (truncating) division; alpha 0 and 255 leave the colour untouched.
fn unpremultiply(mut out: Vec<u8>, channels: usize) -> Vec<u8> {
    for px in out.chunks_exact_mut(channels) {
        let a = px[channels - 1] as u32;
        if a != 0 && a != 255 {
            for v in &mut px[..channels - 1] {
                *v = (255 * *v as u32 / a).min(255) as u8;
            }
        }
    }
    out
}

/// Image.py `_get_safe_box`: the integer source box `reduce` must keep so that the
/// following resample sees every pixel its (stretched) kernel touches.
fn safe_box(w: usize, h: usize, nw: usize, nh: usize, filter: Filter, b: [f64; 4]) -> [usize; 4] {
    let fs = filter.support() - 0.5;
    let sx = fs * ((b[2] - b[0]) / nw as f64);
    let sy = fs * ((b[3] - b[1]) / nh as f64);
    [
        ((b[0] - sx) as i64).max(0) as usize, // Python int(): truncation
        ((b[1] - sy) as i64).max(0) as usize,
        ((b[2] + sx).ceil() as usize).min(w),
        ((b[3] + sy).ceil() as usize).min(h),
    ]
}

#[cfg(test)]
mod tests {
    //! Small hard-coded Pillow 13.0.0 results; the exhaustive comparison lives in
    //! tests/pillow_refs.rs (data from gen_refs.py).
    use super::*;

    const L6X5: [u8; 30] = [
        0, 37, 74, 111, 148, 185, 91, 128, 165, 202, 239, 20, 182, 219, 0, 37, 74, 111, 17, 54, 91,
        128, 165, 202, 108, 145, 182, 219, 0, 37,
    ];

    #[test]
    fn l_image_all_filters() {
        // (filter, 6x5 -> 4x3, 6x5 -> 9x2): a down-down and an up-down (vertical first
        // in Pillow 13) resize.
        let cases: [(Filter, [u8; 12], [u8; 18]); 6] = [
            (
                Filter::Nearest,
                [0, 74, 111, 185, 182, 0, 37, 111, 108, 182, 219, 37],
                [
                    91, 128, 128, 165, 165, 202, 239, 20, 20, 17, 54, 54, 91, 91, 128, 165, 202,
                    202,
                ],
            ),
            (
                Filter::Box,
                [65, 120, 176, 103, 201, 0, 56, 111, 82, 137, 129, 120],
                [
                    91, 128, 128, 80, 117, 117, 154, 105, 105, 63, 100, 100, 137, 174, 174, 83,
                    120, 120,
                ],
            ),
            (
                Filter::Bilinear,
                [53, 105, 158, 141, 139, 96, 102, 118, 83, 135, 139, 94],
                [
                    79, 98, 112, 99, 114, 138, 163, 135, 101, 87, 106, 120, 107, 122, 132, 103,
                    108, 121,
                ],
            ),
            (
                Filter::Hamming,
                [44, 99, 154, 140, 155, 77, 83, 111, 84, 139, 151, 89],
                [
                    75, 94, 112, 105, 124, 143, 178, 137, 94, 77, 96, 114, 107, 126, 143, 94, 111,
                    128,
                ],
            ),
            (
                Filter::Bicubic,
                [51, 103, 167, 140, 146, 92, 101, 122, 79, 137, 139, 90],
                [
                    77, 98, 115, 92, 105, 136, 172, 139, 99, 89, 110, 127, 104, 123, 136, 94, 101,
                    120,
                ],
            ),
            (
                Filter::Lanczos,
                [52, 105, 171, 135, 151, 90, 100, 130, 72, 140, 135, 90],
                [
                    74, 98, 114, 90, 94, 137, 178, 143, 100, 91, 115, 131, 105, 125, 137, 93, 96,
                    118,
                ],
            ),
        ];
        for (f, down, up) in cases {
            assert_eq!(resize(&L6X5, 6, 5, 1, 4, 3, f), down, "{f:?} 4x3");
            assert_eq!(resize(&L6X5, 6, 5, 1, 9, 2, f), up, "{f:?} 9x2");
        }
    }

    #[test]
    fn rgba_is_resampled_premultiplied() {
        let src: [u8; 36] = [
            0, 0, 200, 0, 50, 0, 200, 128, 100, 0, 200, 255, 0, 80, 200, 128, 50, 80, 200, 255,
            100, 80, 200, 0, 0, 160, 200, 255, 50, 160, 200, 0, 100, 160, 200, 128,
        ];
        let want = [
            33, 50, 198, 91, 80, 14, 199, 174, 11, 128, 199, 174, 88, 142, 200, 75,
        ];
        assert_eq!(resize(&src, 3, 3, 4, 2, 2, Filter::Bicubic), want);
    }

    #[test]
    fn same_size_is_a_copy_and_codes_round_trip() {
        assert_eq!(resize(&L6X5, 6, 5, 1, 6, 5, Filter::Lanczos), L6X5);
        for code in 0..8 {
            assert_eq!(Filter::from_pil_code(code).unwrap().pil_code(), code);
        }
        assert_eq!(Filter::from_pil_code(8), None);
    }

    #[test]
    fn thumbnail_sizes_match_pil() {
        assert_eq!(thumbnail_size(640, 480, 224, 224), Some((224, 168)));
        assert_eq!(thumbnail_size(33, 200, 100, 30), Some((5, 30)));
        assert_eq!(thumbnail_size(500, 40, 50, 50), Some((50, 4)));
        assert_eq!(thumbnail_size(100, 1, 10, 10), Some((10, 1)));
        assert_eq!(thumbnail_size(7, 5, 100, 100), None);
    }
}
