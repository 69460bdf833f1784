//! Reading images as transformers' `load_image` gives them to an image processor: decoded,
//! EXIF orientation applied, converted to 8-bit RGB.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader};

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
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::decode(&bytes, path, DEFAULT_MAX_PIXELS)
    }

    /// Decodes an encoded image (PNG, JPEG, …) held in memory.
    pub fn decode(bytes: &[u8], name: &Path, max_pixels: u64) -> Result<Rgb8> {
        if bytes.is_empty() {
            return Err(Error::image(name, "the file is empty"));
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
        if w as u64 * h as u64 > max_pixels {
            return Err(Error::image(
                name,
                format!("{w}x{h} is more than the limit of {max_pixels} pixels"),
            ));
        }
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

    /// The image turned 90° clockwise (numpy's `rot90(k=3)`), as Donut's `align_long_axis` does.
    pub fn rotate_clockwise(&self) -> Rgb8 {
        let (w, h) = (self.width, self.height);
        let mut data = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                // Source (x, y) lands at column h-1-y of row x.
                let dst = (x * h + (h - 1 - y)) * 3;
                let src = (y * w + x) * 3;
                data[dst..dst + 3].copy_from_slice(&self.data[src..src + 3]);
            }
        }
        Rgb8::new(h, w, data)
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn empty_and_garbage_are_errors() {
        let name = Path::new("x.png");
        assert!(Rgb8::decode(&[], name, DEFAULT_MAX_PIXELS)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(Rgb8::decode(b"hello", name, DEFAULT_MAX_PIXELS).is_err());
    }
}
