//! Reading images as transformers' `load_image` gives them to an image processor: decoded,
//! EXIF orientation applied, converted to 8-bit RGB.

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader};

use super::pil_jpeg;
use super::stream::MAX_FRAME_BYTES;

use crate::error::{Error, Result};

/// An 8-bit RGB image, rows top to bottom, pixels interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// The largest image glance decodes by default: 100 megapixels (a 10000 x 10000 scan).
/// A file whose header claims more is refused before any pixel is allocated.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// An image over the pixel limit. Every place that checks a size against the limit (a file's
/// header, a caller's buffer, a decoded image) refuses with this, so the message is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyPixels {
    pub width: u64,
    pub height: u64,
    pub max_pixels: u64,
}

impl TooManyPixels {
    /// `Ok` when `width x height` is at most `max_pixels` (no overflow: the product saturates).
    pub fn check(width: u64, height: u64, max_pixels: u64) -> std::result::Result<(), Self> {
        if width.saturating_mul(height) > max_pixels {
            return Err(TooManyPixels {
                width,
                height,
                max_pixels,
            });
        }
        Ok(())
    }
}

impl std::fmt::Display for TooManyPixels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let TooManyPixels {
            width,
            height,
            max_pixels,
        } = self;
        write!(
            f,
            "{width}x{height} pixels, more than the limit of {max_pixels}"
        )
    }
}

/// Reads an encoded image file, refusing one larger than a stream frame may be
/// ([`MAX_FRAME_BYTES`]): a device file or a huge file must not fill memory.
pub fn read_encoded(path: &Path) -> Result<Vec<u8>> {
    let too_big = || {
        Error::image(
            path,
            format!(
                "the file is larger than the limit of {} MiB",
                MAX_FRAME_BYTES >> 20
            ),
        )
    };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    if file
        .metadata()
        .is_ok_and(|m| m.len() > MAX_FRAME_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FRAME_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(too_big());
    }
    Ok(bytes)
}

impl Rgb8 {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Rgb8 {
        debug_assert_eq!(data.len(), width * height * 3);
        Rgb8 {
            width,
            height,
            data,
        }
    }

    /// Decodes an image file. `path` is only used to name the image in errors and to guess
    /// the format when the content does not tell.
    pub fn open(path: &Path) -> Result<Rgb8> {
        Self::open_within(path, DEFAULT_MAX_PIXELS)
    }

    /// [`Rgb8::open`] for images of at most `max_pixels` pixels.
    pub fn open_within(path: &Path, max_pixels: u64) -> Result<Rgb8> {
        Self::decode(&read_encoded(path)?, path, max_pixels)
    }

    /// Decodes an encoded image (PNG, JPEG, …) held in memory.
    ///
    /// JPEG goes through glance's own decoder, which gives libjpeg-turbo's pixels as Pillow
    /// decodes them (the `image` crate's differs by up to 3 levels); the rare JPEG kinds it does
    /// not handle (CMYK, arithmetic coding, 12-bit) fall back to the `image` crate.
    pub fn decode(bytes: &[u8], name: &Path, max_pixels: u64) -> Result<Rgb8> {
        if bytes.is_empty() {
            return Err(Error::image(name, "the file is empty"));
        }
        if bytes.starts_with(&[0xFF, 0xD8]) {
            match pil_jpeg::decode(bytes, max_pixels) {
                Ok(decoded) => {
                    let decoded = decoded.into_rgb();
                    let img = Rgb8::new(decoded.width, decoded.height, decoded.data);
                    return Ok(match decoded.exif_orientation {
                        Some(o) => img.oriented(o),
                        None => img,
                    });
                }
                Err(pil_jpeg::JpegError::Unsupported(what)) => {
                    log::info!("{}: {what}; decoding with the image crate", name.display());
                }
                Err(pil_jpeg::JpegError::TooLarge(e)) => {
                    return Err(Error::image(name, e.to_string()))
                }
                Err(e) => return Err(Error::image(name, format!("cannot decode: {e}"))),
            }
        }
        // A PNG's size is in its header; the png crate refuses a size whose buffer overflows
        // usize (a 32-bit board) before glance could name its own limit.
        if let Some((w, h)) = png_size(bytes) {
            check_pixels(name, w, h, max_pixels)?;
        }
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| Error::image(name, format!("cannot read: {e}")))?;
        if reader.format().is_none() {
            return Err(Error::image(name, "not an image format glance can read"));
        }
        let mut decoder = reader
            .into_decoder()
            .map_err(|e| Error::image(name, format!("cannot decode: {e}")))?;
        let (w, h) = decoder.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::image(name, format!("the image is empty ({w}x{h})")));
        }
        check_pixels(name, w, h, max_pixels)?;
        let orientation = decoder.orientation().ok();
        let mut img = DynamicImage::from_decoder(decoder)
            .map_err(|e| Error::image(name, format!("cannot decode: {e}")))?;
        if let Some(o) = orientation {
            img.apply_orientation(o);
        }
        Ok(Self::from_dynamic(img))
    }

    /// PIL's `convert("RGB")`: gray is replicated, alpha is dropped (not composited). 16-bit
    /// samples keep their high byte (`v >> 8`): PIL itself clips 16-bit values above 255, which
    /// turns most 16-bit images white, so glance's references scale them this way instead.
    pub fn from_dynamic(img: DynamicImage) -> Rgb8 {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let data = match img {
            DynamicImage::ImageRgb8(rgb) => rgb.into_raw(),
            DynamicImage::ImageLuma16(_)
            | DynamicImage::ImageLumaA16(_)
            | DynamicImage::ImageRgb16(_)
            | DynamicImage::ImageRgba16(_) => img
                .to_rgb16()
                .into_raw()
                .into_iter()
                .map(|v| (v >> 8) as u8)
                .collect(),
            other => other.to_rgb8().into_raw(),
        };
        Rgb8::new(w, h, data)
    }

    /// The image with an EXIF orientation (1-8) applied, as Pillow's `exif_transpose` does.
    pub fn oriented(&self, orientation: u8) -> Rgb8 {
        let (w, h) = (self.width, self.height);
        match orientation {
            2 => self.remap(w, h, |x, y| (w - 1 - x, y)),
            3 => self.remap(w, h, |x, y| (w - 1 - x, h - 1 - y)),
            4 => self.remap(w, h, |x, y| (x, h - 1 - y)),
            5 => self.remap(h, w, |x, y| (y, x)),
            6 => self.remap(h, w, |x, y| (y, h - 1 - x)),
            7 => self.remap(h, w, |x, y| (w - 1 - y, h - 1 - x)),
            8 => self.remap(h, w, |x, y| (w - 1 - y, x)),
            _ => self.clone(),
        }
    }

    /// The image turned 90° clockwise (numpy's `rot90(k=3)`), as Donut's `align_long_axis` does.
    pub fn rotate_clockwise(&self) -> Rgb8 {
        self.oriented(6)
    }

    /// A `out_w` x `out_h` image whose pixel (x, y) is this image's pixel `source(x, y)`.
    fn remap(
        &self,
        out_w: usize,
        out_h: usize,
        source: impl Fn(usize, usize) -> (usize, usize),
    ) -> Rgb8 {
        let mut data = Vec::with_capacity(out_w * out_h * 3);
        for y in 0..out_h {
            for x in 0..out_w {
                let (sx, sy) = source(x, y);
                let at = (sy * self.width + sx) * 3;
                data.extend_from_slice(&self.data[at..at + 3]);
            }
        }
        Rgb8::new(out_w, out_h, data)
    }

    /// A `width` x `height` canvas of zeros with this image at (`left`, `top`).
    pub fn pad(&self, top: usize, left: usize, height: usize, width: usize) -> Rgb8 {
        let mut data = vec![0u8; width * height * 3];
        for y in 0..self.height.min(height.saturating_sub(top)) {
            let n = self.width.min(width.saturating_sub(left)) * 3;
            let src = y * self.width * 3;
            let dst = ((top + y) * width + left) * 3;
            data[dst..dst + n].copy_from_slice(&self.data[src..src + n]);
        }
        Rgb8::new(width, height, data)
    }

    /// The `height` x `width` window starting at (`left`, `top`), zero where it leaves the image.
    pub fn crop(&self, top: isize, left: isize, height: usize, width: usize) -> Rgb8 {
        let mut data = vec![0u8; width * height * 3];
        for y in 0..height {
            let sy = top + y as isize;
            if sy < 0 || sy >= self.height as isize {
                continue;
            }
            for x in 0..width {
                let sx = left + x as isize;
                if sx < 0 || sx >= self.width as isize {
                    continue;
                }
                let src = (sy as usize * self.width + sx as usize) * 3;
                let dst = (y * width + x) * 3;
                data[dst..dst + 3].copy_from_slice(&self.data[src..src + 3]);
            }
        }
        Rgb8::new(width, height, data)
    }
}

/// Width and height from a PNG's IHDR chunk, if `bytes` start like a PNG.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || !bytes.starts_with(b"\x89PNG\r\n\x1a\n") || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    Some((be(16), be(20)))
}

fn check_pixels(name: &Path, w: u32, h: u32, max_pixels: u64) -> Result<()> {
    TooManyPixels::check(w.into(), h.into(), max_pixels)
        .map_err(|e| Error::image(name, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pixel_limit_is_inclusive_and_cannot_overflow() {
        assert!(TooManyPixels::check(10, 10, 100).is_ok());
        let e = TooManyPixels::check(10, 11, 100).unwrap_err();
        assert_eq!(e.to_string(), "10x11 pixels, more than the limit of 100");
        assert!(TooManyPixels::check(u64::MAX, u64::MAX, u64::MAX - 1).is_err());
    }

    #[test]
    fn rotation_is_clockwise() {
        // 2x1: red, green → 1x2: red on top of... clockwise puts the left pixel on top.
        let img = Rgb8::new(2, 1, vec![255, 0, 0, 0, 255, 0]);
        let r = img.rotate_clockwise();
        assert_eq!((r.width, r.height), (1, 2));
        assert_eq!(r.data, vec![255, 0, 0, 0, 255, 0]);
        // 1x2 (top red, bottom green) → 2x1 with green on the left.
        let img = Rgb8::new(1, 2, vec![255, 0, 0, 0, 255, 0]);
        assert_eq!(img.rotate_clockwise().data, vec![0, 255, 0, 255, 0, 0]);
    }

    #[test]
    fn orientations_match_pillow_transposes() {
        // 3x2, pixels numbered 0..6 in the red channel.
        let img = Rgb8::new(3, 2, (0..6u8).flat_map(|v| [v, 0, 0]).collect());
        let red = |o: u8| -> Vec<u8> { img.oriented(o).data.chunks(3).map(|p| p[0]).collect() };
        assert_eq!(red(1), [0, 1, 2, 3, 4, 5]);
        assert_eq!(red(2), [2, 1, 0, 5, 4, 3]); // FLIP_LEFT_RIGHT
        assert_eq!(red(3), [5, 4, 3, 2, 1, 0]); // ROTATE_180
        assert_eq!(red(4), [3, 4, 5, 0, 1, 2]); // FLIP_TOP_BOTTOM
        assert_eq!(red(5), [0, 3, 1, 4, 2, 5]); // TRANSPOSE
        assert_eq!(red(6), [3, 0, 4, 1, 5, 2]); // ROTATE_270 (90 clockwise)
        assert_eq!(red(7), [5, 2, 4, 1, 3, 0]); // TRANSVERSE
        assert_eq!(red(8), [2, 5, 1, 4, 0, 3]); // ROTATE_90 (90 counter-clockwise)
    }

    #[test]
    fn empty_and_garbage_are_errors() {
        let name = Path::new("x.png");
        assert!(Rgb8::decode(&[], name, DEFAULT_MAX_PIXELS)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(Rgb8::decode(b"hello", name, DEFAULT_MAX_PIXELS).is_err());
    }
}
