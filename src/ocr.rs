//! Page mode for OCR: a document image becomes text lines in reading order, each cut into chunks
//! that fit the line model's input, each chunk drawn on the model's "line canvas".
//!
//! The steps are classical and cheap (a Raspberry Pi spends its time in the model, not here):
//! grayscale, Sauvola's local threshold, small-skew correction by the sharpest row profile, lines from the
//! row profile, chunks at word gaps.

use crate::vision::Rgb8;

/// An 8-bit grayscale image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gray8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// A rectangle in page pixels: `x`, `y` of the top-left corner, width and height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// One text line of a page: where it is, and the chunks the model reads one by one.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub bbox: Rect,
    pub chunks: Vec<Rect>,
}

/// The widest chunk, as width over height, for models without a line canvas (12 is glance's OCR
/// model canvas, 384 x 32).
pub const DEFAULT_MAX_ASPECT: f64 = 12.0;

impl Gray8 {
    /// PIL's `convert("L")`: ITU-R 601-2 luma in 16-bit fixed point, rounded.
    pub fn from_rgb(img: &Rgb8) -> Gray8 {
        let data = img
            .data
            .chunks_exact(3)
            .map(|p| {
                ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16)
                    as u8
            })
            .collect();
        Gray8 {
            width: img.width,
            height: img.height,
            data,
        }
    }

    pub fn to_rgb(&self) -> Rgb8 {
        Rgb8::new(
            self.width,
            self.height,
            self.data.iter().flat_map(|&v| [v, v, v]).collect(),
        )
    }

    fn at(&self, x: usize, y: usize) -> u8 {
        self.data[y * self.width + x]
    }

    /// The median of the pixels along the four edges: the background, for most images.
    fn border_median(&self) -> u8 {
        let (w, h) = (self.width, self.height);
        if w == 0 || h == 0 {
            return 255;
        }
        let mut edge: Vec<u8> = (0..w)
            .flat_map(|x| [self.at(x, 0), self.at(x, h - 1)])
            .chain((0..h).flat_map(|y| [self.at(0, y), self.at(w - 1, y)]))
            .collect();
        let middle = edge.len() / 2;
        *edge.select_nth_unstable(middle).1
    }

    pub fn crop(&self, r: Rect) -> Gray8 {
        let mut data = Vec::with_capacity(r.width * r.height);
        for y in r.y..r.y + r.height {
            data.extend_from_slice(
                &self.data[y * self.width + r.x..y * self.width + r.x + r.width],
            );
        }
        Gray8 {
            width: r.width,
            height: r.height,
            data,
        }
    }

    /// Rotated by `degrees` counter-clockwise about the centre, bilinear, white outside.
    pub fn rotate(&self, degrees: f64) -> Gray8 {
        let (s, c) = degrees.to_radians().sin_cos();
        let (cx, cy) = (self.width as f64 / 2.0, self.height as f64 / 2.0);
        let mut data = vec![255u8; self.data.len()];
        for y in 0..self.height {
            for x in 0..self.width {
                let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                // Inverse rotation: where this output pixel comes from.
                let sx = c * dx - s * dy + cx - 0.5;
                let sy = s * dx + c * dy + cy - 0.5;
                data[y * self.width + x] = self.bilinear(sx, sy);
            }
        }
        Gray8 {
            width: self.width,
            height: self.height,
            data,
        }
    }

    fn bilinear(&self, x: f64, y: f64) -> u8 {
        if x < -0.5 || y < -0.5 || x > self.width as f64 - 0.5 || y > self.height as f64 - 0.5 {
            return 255;
        }
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = (x - x0, y - y0);
        let px = |xi: f64, yi: f64| -> f64 {
            let xi = xi.clamp(0.0, self.width as f64 - 1.0) as usize;
            let yi = yi.clamp(0.0, self.height as f64 - 1.0) as usize;
            self.at(xi, yi) as f64
        };
        let top = px(x0, y0) * (1.0 - fx) + px(x0 + 1.0, y0) * fx;
        let bottom = px(x0, y0 + 1.0) * (1.0 - fx) + px(x0 + 1.0, y0 + 1.0) * fx;
        (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8
    }

    /// Half the size, by averaging 2x2 blocks (for the skew search).
    fn half(&self) -> Gray8 {
        let (w, h) = ((self.width / 2).max(1), (self.height / 2).max(1));
        let mut data = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                let mut sum = 0u32;
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    sum += self.at(
                        (2 * x + dx).min(self.width - 1),
                        (2 * y + dy).min(self.height - 1),
                    ) as u32;
                }
                data.push(((sum + 2) / 4) as u8);
            }
        }
        Gray8 {
            width: w,
            height: h,
            data,
        }
    }
}

/// Otsu's threshold: the gray level that best separates ink from paper.
pub fn otsu(img: &Gray8) -> u8 {
    let mut hist = [0u64; 256];
    for &v in &img.data {
        hist[v as usize] += 1;
    }
    let total = img.data.len() as f64;
    let sum_all: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &n)| i as f64 * n as f64)
        .sum();
    let (mut w0, mut sum0, mut best, mut best_t) = (0f64, 0f64, -1f64, 128u8);
    for (t, &n) in hist.iter().enumerate() {
        w0 += n as f64;
        sum0 += t as f64 * n as f64;
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let (m0, m1) = (sum0 / w0, (sum_all - sum0) / w1);
        let between = w0 * w1 * (m0 - m1) * (m0 - m1);
        if between > best {
            best = between;
            best_t = t as u8;
        }
    }
    best_t
}

/// Sauvola's local threshold: a pixel is ink when it is darker than the mean of its
/// neighbourhood by a margin that grows as the neighbourhood's contrast falls. Unlike one global
/// threshold it copes with uneven lighting and shadows in photographs of pages, and flat areas,
/// light or dark, hold no ink.
pub fn sauvola(img: &Gray8, window: usize) -> Vec<bool> {
    const K: f64 = 0.3;
    const R: f64 = 128.0;
    // Below this local standard deviation there is no text, only lighting: smooth gradients and
    // deep shadow, where Sauvola's relative margin would otherwise mark the darker side as ink.
    const MIN_STD: f64 = 20.0;
    let (w, h) = (img.width, img.height);
    // Integral images of values and squares, with a zero row and column in front.
    let mut sum = vec![0f64; (w + 1) * (h + 1)];
    let mut sq = vec![0f64; (w + 1) * (h + 1)];
    for y in 0..h {
        let (mut row, mut row_sq) = (0f64, 0f64);
        for x in 0..w {
            let v = img.at(x, y) as f64;
            row += v;
            row_sq += v * v;
            sum[(y + 1) * (w + 1) + x + 1] = sum[y * (w + 1) + x + 1] + row;
            sq[(y + 1) * (w + 1) + x + 1] = sq[y * (w + 1) + x + 1] + row_sq;
        }
    }
    let r = window / 2;
    let mut ink = Vec::with_capacity(w * h);
    for y in 0..h {
        let (y0, y1) = (y.saturating_sub(r), (y + r + 1).min(h));
        for x in 0..w {
            let (x0, x1) = (x.saturating_sub(r), (x + r + 1).min(w));
            let n = ((y1 - y0) * (x1 - x0)) as f64;
            let area = |t: &[f64]| {
                t[y1 * (w + 1) + x1] - t[y0 * (w + 1) + x1] - t[y1 * (w + 1) + x0]
                    + t[y0 * (w + 1) + x0]
            };
            let mean = area(&sum) / n;
            let std = (area(&sq) / n - mean * mean).max(0.0).sqrt();
            let threshold = mean * (1.0 + K * (std / R - 1.0));
            ink.push(std >= MIN_STD && (img.at(x, y) as f64) < threshold);
        }
    }
    ink
}

/// Sauvola's window: a few text lines high for ordinary pages (a twelfth of the shorter side,
/// at least 15 pixels, odd).
fn sauvola_window(img: &Gray8) -> usize {
    (img.width.min(img.height) / 12).max(15) | 1
}

/// The page, prepared: light background, deskewed, with its ink mask.
pub struct Page {
    pub gray: Gray8,
    ink: Vec<bool>,
    /// The rotation applied to straighten the page, in degrees.
    pub skew: f64,
}

impl Page {
    /// A document page, straightened.
    pub fn new(img: &Rgb8) -> Page {
        Self::prepare(img, true)
    }

    /// An image holding one text line, as it is: a single line gives the skew search little
    /// to go on, and rotating a tight crop tilts its borders into the text; the model was
    /// trained on lines tilted by up to 2 degrees.
    pub fn of_line(img: &Rgb8) -> Page {
        Self::prepare(img, false)
    }

    fn prepare(img: &Rgb8, straighten: bool) -> Page {
        let mut gray = Gray8::from_rgb(img);
        // Light text on a dark background: invert, so that ink is always dark. Both the border
        // and most of the image must be dark: a line on grey paper pasted on white, or a page
        // photographed on a dark table, keeps its polarity.
        let threshold = otsu(&gray);
        let dark = gray.data.iter().filter(|&&v| v <= threshold).count();
        if dark * 2 > gray.data.len() && gray.border_median() < threshold {
            gray.data.iter_mut().for_each(|v| *v = 255 - *v);
        }
        let window = sauvola_window(&gray);
        let skew = if straighten {
            estimate_skew(&gray, window)
        } else {
            0.0
        };
        if skew != 0.0 {
            gray = gray.rotate(skew);
        }
        let ink = sauvola(&gray, window);
        Page { gray, ink, skew }
    }

    fn ink(&self, x: usize, y: usize) -> bool {
        self.ink[y * self.gray.width + x]
    }

    /// Text lines, top to bottom, each cut into chunks at word gaps so that no chunk is wider
    /// than `max_aspect` times its height (and so is not squashed on the canvas).
    pub fn lines(&self, max_aspect: f64) -> Vec<Line> {
        let (w, h) = (self.gray.width, self.gray.height);
        let counts: Vec<usize> = (0..h)
            .map(|y| (0..w).filter(|&x| self.ink(x, y)).count())
            .collect();
        let max = counts.iter().copied().max().unwrap_or(0);
        if max == 0 {
            return Vec::new();
        }
        // Rows with a little ink are not text rows (thin strokes touching between lines).
        let min_ink = ((0.03 * max as f64) as usize).max(1);
        let mut bands: Vec<(usize, usize)> = Vec::new();
        let mut y = 0;
        while y < h {
            if counts[y] > min_ink {
                let top = y;
                while y < h && counts[y] > min_ink {
                    y += 1;
                }
                bands.push((top, y));
            }
            y += 1;
        }
        merge_accents(bands)
            .into_iter()
            .filter(|(top, bottom)| bottom - top >= 6)
            .filter_map(|band| self.line(band, &counts, max_aspect, &|x, y| self.ink(x, y)))
            .collect()
    }

    /// The whole image as one line: its ink, framed and chunked as a line of a page is.
    pub fn single_line(&self, max_aspect: f64) -> Option<Line> {
        let (w, h) = (self.gray.width, self.gray.height);
        // One line is lit evenly enough for one global threshold, which also finds the ink of
        // blurred or faint lines that the local threshold (made for pages) rejects as flat.
        let threshold = otsu(&self.gray);
        let ink = |x: usize, y: usize| self.gray.at(x, y) <= threshold;
        let counts: Vec<usize> = (0..h)
            .map(|y| (0..w).filter(|&x| ink(x, y)).count())
            .collect();
        let band = counts
            .iter()
            .position(|&c| c > 0)
            .zip(counts.iter().rposition(|&c| c > 0));
        match band {
            Some((top, bottom)) => self.line((top, bottom + 1), &counts, max_aspect, &ink),
            // The caller says this is a line: with no ink at all, read the whole image rather
            // than nothing.
            None if w > 0 && h > 0 => {
                let all = Rect {
                    x: 0,
                    y: 0,
                    width: w,
                    height: h,
                };
                Some(Line {
                    bbox: all,
                    chunks: vec![all],
                })
            }
            None => None,
        }
    }

    /// The line around a band of text rows: the band grown into its faint neighbouring rows,
    /// framed with a margin, cut into chunks.
    fn line(
        &self,
        (top, bottom): (usize, usize),
        counts: &[usize],
        max_aspect: f64,
        ink: &dyn Fn(usize, usize) -> bool,
    ) -> Option<Line> {
        let (w, h) = (self.gray.width, self.gray.height);
        let height = bottom - top;
        // Take in the faint rows next to the band: thin parts of ascenders and descenders.
        let (mut t, mut b) = (top, bottom);
        while t > 0 && counts[t - 1] > 0 && top - t < 3 * height / 10 {
            t -= 1;
        }
        while b < h && counts[b] > 0 && b - bottom < 3 * height / 10 {
            b += 1;
        }
        let height = b - t;
        let cols: Vec<bool> = (0..w).map(|x| (t..b).any(|y| ink(x, y))).collect();
        let first = cols.iter().position(|&c| c)?;
        let last = cols.iter().rposition(|&c| c).unwrap_or(first);
        // The margin the model saw in training around its lines.
        let pad = (height * 15 / 100).max(2);
        let (left, right) = (first.saturating_sub(pad), (last + 1 + pad).min(w));
        let (top, bottom) = (t.saturating_sub(pad), (b + pad).min(h));
        let bbox = Rect {
            x: left,
            y: top,
            width: right - left,
            height: bottom - top,
        };
        let chunks = chunk_at_gaps(
            &cols,
            (first, last),
            (left, right),
            height,
            bbox,
            max_aspect,
        );
        Some(Line { bbox, chunks })
    }
}

/// Dots and accents form short bands right above or below a line: join them to it.
fn merge_accents(bands: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (top, bottom) in bands {
        if let Some(prev) = merged.last_mut() {
            let (ph, h) = ((prev.1 - prev.0) as f64, (bottom - top) as f64);
            let close = top - prev.1 <= 6;
            if close && (h < 0.35 * ph || ph < 0.35 * h) {
                prev.1 = bottom;
                continue;
            }
        }
        merged.push((top, bottom));
    }
    merged
}

/// Cuts a line into chunks that fit the canvas without squashing, at word gaps (empty column
/// runs at least a quarter of the line height wide). Each cut takes the widest gap in the second
/// half of the room left, so that a gap inside a number ("4.50") loses to a space between words.
/// A single word too long for the canvas stays whole (and is squashed).
fn chunk_at_gaps(
    cols: &[bool],
    (first, last): (usize, usize),
    (left, right): (usize, usize),
    height: usize,
    bbox: Rect,
    max_aspect: f64,
) -> Vec<Rect> {
    let min_gap = (height / 4).max(3);
    // Ink runs (start, end) between empty columns.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut x = first;
    while x <= last {
        let start = x;
        while x <= last && cols[x] {
            x += 1;
        }
        if x > start {
            runs.push((start, x));
        }
        while x <= last && !cols[x] {
            x += 1;
        }
    }
    // Gaps between runs as (middle, rank): wider ranks higher, and a gap next to a narrow run
    // (a period, a comma, a quote) ranks below every other, so "4.50" is cut last.
    let narrow = |r: &(usize, usize)| r.1 - r.0 < height / 4;
    let gaps: Vec<(usize, (bool, usize))> = runs
        .windows(2)
        .filter(|w| w[1].0 - w[0].1 >= min_gap)
        .map(|w| {
            (
                (w[0].1 + w[1].0) / 2,
                (!narrow(&w[0]) && !narrow(&w[1]), w[1].0 - w[0].1),
            )
        })
        .collect();
    let room = (max_aspect * bbox.height as f64) as usize;
    let mut chunks = Vec::new();
    let mut start = left;
    while right - start > room {
        let candidates = gaps
            .iter()
            .filter(|(mid, _)| *mid > start && mid - start <= room);
        // The widest gap in the second half of the room, else the widest anywhere in it, else
        // the first gap after it (a word longer than the canvas).
        let widest = |it: &mut dyn Iterator<Item = &(usize, (bool, usize))>| {
            it.max_by_key(|(mid, rank)| (*rank, *mid)).map(|g| g.0)
        };
        let cut = widest(
            &mut candidates
                .clone()
                .filter(|(mid, _)| mid - start >= room / 2),
        )
        .or_else(|| widest(&mut candidates.clone()))
        .or_else(|| gaps.iter().map(|g| g.0).find(|&mid| mid > start));
        let Some(cut) = cut else { break };
        chunks.push((start, cut));
        start = cut;
    }
    chunks.push((start, right));
    chunks
        .into_iter()
        .filter(|(a, b)| b - a > 2)
        .map(|(a, b)| Rect {
            x: a,
            y: bbox.y,
            width: b - a,
            height: bbox.height,
        })
        .collect()
}

/// The skew (degrees, within ±3) whose row profile is most peaked: straight lines give rows that
/// are all ink or all paper.
fn estimate_skew(gray: &Gray8, window: usize) -> f64 {
    let small = gray.half();
    let window = (window / 2).max(7) | 1;
    let score = |angle: f64| -> f64 {
        let img = if angle == 0.0 {
            small.clone()
        } else {
            small.rotate(angle)
        };
        let ink = sauvola(&img, window);
        // Sum of squared row counts over the ink total: how concentrated the ink is in rows,
        // whatever the amount of ink (interpolation when rotating thickens strokes).
        let (mut squares, mut total) = (0f64, 0f64);
        for row in ink.chunks(img.width) {
            let n = row.iter().filter(|&&i| i).count() as f64;
            squares += n * n;
            total += n;
        }
        squares / total.max(1.0)
    };
    let mut best = (score(0.0), 0.0);
    for step in -12..=12 {
        let angle = step as f64 * 0.25;
        if angle == 0.0 {
            continue;
        }
        let s = score(angle);
        // Prefer no rotation unless another angle is clearly sharper.
        if s > best.0 * 1.02 {
            best = (s, angle);
        }
    }
    best.1
}

/// scripts/train_ocr.py `line_canvas`: gray, scaled to the canvas height keeping the aspect
/// ratio (squashed only if wider than the canvas), pasted at the left of a white canvas.
pub fn line_canvas(line: &Gray8, height: usize, width: usize) -> Rgb8 {
    use crate::vision::pil_resize::{resize, Filter};
    let new_w =
        ((line.width as f64 * height as f64 / line.height as f64 + 0.5) as usize).clamp(1, width);
    let scaled = if (new_w, height) == (line.width, line.height) {
        line.data.clone()
    } else {
        resize(
            &line.data,
            line.width,
            line.height,
            1,
            new_w,
            height,
            Filter::Bilinear,
        )
    };
    let mut canvas = vec![255u8; width * height];
    for y in 0..height {
        canvas[y * width..y * width + new_w].copy_from_slice(&scaled[y * new_w..(y + 1) * new_w]);
    }
    Gray8 {
        width,
        height,
        data: canvas,
    }
    .to_rgb()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANVAS_HEIGHT: usize = 32;
    const CANVAS_WIDTH: usize = 384;

    /// A white page with dark bars standing for words: `lines` rows of `words` words.
    fn page(lines: usize, words: usize) -> Rgb8 {
        let (w, h) = (400, 40 + lines * 30);
        let mut g = Gray8 {
            width: w,
            height: h,
            data: vec![250; w * h],
        };
        for l in 0..lines {
            for word in 0..words {
                for y in 20 + l * 30..32 + l * 30 {
                    for x in 20 + word * 60..60 + word * 60 {
                        g.data[y * w + x] = 20;
                    }
                }
            }
        }
        g.to_rgb()
    }

    #[test]
    fn finds_lines_in_reading_order() {
        let p = Page::new(&page(3, 3));
        assert_eq!(p.skew, 0.0);
        let lines = p.lines(DEFAULT_MAX_ASPECT);
        assert_eq!(lines.len(), 3);
        assert!(lines.windows(2).all(|l| l[0].bbox.y < l[1].bbox.y));
        // 16 px high boxes, 168 px wide: each line fits the canvas in one chunk.
        assert!(lines.iter().all(|l| l.chunks.len() == 1));
    }

    #[test]
    fn long_lines_are_cut_at_word_gaps() {
        let lines = Page::new(&page(1, 6)).lines(DEFAULT_MAX_ASPECT);
        let l = &lines[0];
        let scale = CANVAS_HEIGHT as f64 / l.bbox.height as f64;
        assert!(l.chunks.len() > 1, "{l:?}");
        assert!(l
            .chunks
            .iter()
            .all(|c| c.width as f64 * scale <= CANVAS_WIDTH as f64 + 0.5));
        assert_eq!(l.chunks.first().unwrap().x, l.bbox.x);
        let end = l.chunks.last().unwrap();
        assert_eq!(end.x + end.width, l.bbox.x + l.bbox.width);
    }

    #[test]
    fn a_line_without_visible_ink_is_read_whole() {
        // A faint, even smear: no window passes the threshold's contrast floor.
        let g = Gray8 {
            width: 120,
            height: 16,
            data: (0..120 * 16).map(|i| 200 + (i % 7) as u8).collect(),
        };
        let line = Page::new(&g.to_rgb())
            .single_line(DEFAULT_MAX_ASPECT)
            .unwrap();
        assert_eq!((line.bbox.width, line.bbox.height), (120, 16));
        assert_eq!(line.chunks, vec![line.bbox]);
    }

    #[test]
    fn a_single_line_is_framed_tightly() {
        // One line of words in the middle of a large white image.
        let mut g = Gray8::from_rgb(&page(1, 2));
        g.data.extend(vec![250; g.width * 100]);
        g.height += 100;
        let line = Page::new(&g.to_rgb())
            .single_line(DEFAULT_MAX_ASPECT)
            .unwrap();
        assert!(line.bbox.height < 20, "{line:?}");
        assert_eq!(line.chunks.len(), 1);
    }

    #[test]
    fn uneven_lighting_does_not_hide_lines() {
        // Three lines on a page whose light falls from left to right and whose bottom is in shadow.
        let mut g = Gray8::from_rgb(&page(3, 3));
        let (w, h) = (g.width, g.height);
        for y in 0..h {
            for x in 0..w {
                let shadow = 0.25 * (y as f64 - (h - 30) as f64).clamp(0.0, 30.0) / 30.0;
                let light = 1.0 - 0.4 * x as f64 / w as f64 - shadow;
                g.data[y * w + x] = (g.data[y * w + x] as f64 * light) as u8;
            }
        }
        let lines = Page::new(&g.to_rgb()).lines(DEFAULT_MAX_ASPECT);
        assert_eq!(lines.len(), 3, "{lines:?}");
    }

    #[test]
    fn dark_pages_are_inverted_and_blank_pages_have_no_lines() {
        let mut img = page(2, 3);
        img.data.iter_mut().for_each(|v| *v = 255 - *v);
        assert_eq!(Page::new(&img).lines(DEFAULT_MAX_ASPECT).len(), 2);
        let blank = Rgb8::new(50, 50, vec![255; 50 * 50 * 3]);
        assert!(Page::new(&blank).lines(DEFAULT_MAX_ASPECT).is_empty());
    }

    #[test]
    fn a_grey_line_pasted_on_white_keeps_its_polarity() {
        // Most pixels are the grey paper (darker than the white margin, at Otsu's threshold),
        // but the border is white: the ink stays dark, the page is not inverted.
        let (w, h) = (384, 32);
        let mut g = Gray8 {
            width: w,
            height: h,
            data: vec![255; w * h],
        };
        for y in 0..h {
            for x in 0..300 {
                g.data[y * w + x] = if (8..24).contains(&y) && x % 20 < 12 {
                    40
                } else {
                    191
                };
            }
        }
        let page = Page::of_line(&g.to_rgb());
        assert_eq!(page.gray.at(5, 0), 191, "not inverted");
        assert_eq!(page.skew, 0.0, "a line is not rotated");
        let line = page.single_line(DEFAULT_MAX_ASPECT).unwrap();
        assert!(line.bbox.x < 20 && line.bbox.width < 330, "{:?}", line.bbox);
    }

    #[test]
    fn skew_is_corrected() {
        let g = Gray8::from_rgb(&page(4, 5)).rotate(-2.0);
        let p = Page::new(&g.to_rgb());
        assert!((p.skew - 2.0).abs() <= 0.5, "skew {}", p.skew);
        assert_eq!(p.lines(DEFAULT_MAX_ASPECT).len(), 4);
    }

    #[test]
    fn canvas_keeps_aspect_and_pads_white() {
        let line = Gray8 {
            width: 64,
            height: 16,
            data: vec![0; 64 * 16],
        };
        let c = line_canvas(&line, CANVAS_HEIGHT, CANVAS_WIDTH);
        assert_eq!((c.width, c.height), (CANVAS_WIDTH, CANVAS_HEIGHT));
        assert_eq!(c.data[(5 * CANVAS_WIDTH + 127) * 3], 0);
        assert_eq!(c.data[(5 * CANVAS_WIDTH + 128) * 3], 255);
    }
}
