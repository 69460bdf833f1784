//! Image processors as transformers 4.57 runs them with PIL (the "slow" processors), read from
//! `preprocessor_config.json`: ViT / DeiT / TrOCR (resize, centre crop, rescale, normalise) and
//! Donut (align long axis, shortest-edge resize, thumbnail, centred pad, rescale, normalise).

use std::path::Path;

use super::image::Rgb8;
use super::pil_resize::{resize, resize_with, Filter, ResizeOptions};
use super::PixelValues;
use crate::error::{Error, Result};
use crate::model::json::JsonFile;

/// Height and width in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub height: usize,
    pub width: usize,
}

/// The largest side a preprocessor config may ask for; beyond it the file is wrong.
pub const MAX_SIDE: usize = 16384;

#[derive(Debug, Clone, PartialEq)]
enum Steps {
    /// ViTImageProcessor, DeiTImageProcessor, and their feature-extractor aliases.
    Vit {
        resize: Option<Size>,
        center_crop: Option<Size>,
    },
    /// DonutImageProcessor.
    Donut {
        size: Size,
        align_long_axis: bool,
        resize: bool,
        thumbnail: bool,
        pad: bool,
    },
}

/// A model's image processor.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    steps: Steps,
    resample: Filter,
    rescale: Option<f64>,
    /// Per-channel mean and standard deviation.
    normalize: Option<([f32; 3], [f32; 3])>,
}

impl ImageProcessor {
    pub fn from_config(file: &JsonFile) -> Result<ImageProcessor> {
        let class = file
            .string("image_processor_type")?
            .or(file.string("feature_extractor_type")?)
            .ok_or_else(|| file.error("names no image_processor_type"))?;
        let class = class.trim_end_matches("Fast");
        let resample = match file.usize("resample", 255)? {
            None => Filter::Bilinear,
            Some(code) => Filter::from_pil_code(code as u32).ok_or_else(|| {
                file.error(format!("\"resample\" {code} is not a PIL filter code"))
            })?,
        };
        let steps = match class {
            "ViTImageProcessor" | "ViTFeatureExtractor" | "DeiTImageProcessor" | "DeiTFeatureExtractor" => {
                let deit = class.starts_with("DeiT");
                let resize = if file.bool("do_resize")?.unwrap_or(true) {
                    Some(size_field(file, "size")?.unwrap_or(if deit { square(256) } else { square(224) }))
                } else {
                    None
                };
                let center_crop = if file.bool("do_center_crop")?.unwrap_or(deit) {
                    Some(size_field(file, "crop_size")?.unwrap_or(square(224)))
                } else {
                    None
                };
                Steps::Vit { resize, center_crop }
            }
            "DonutImageProcessor" | "DonutFeatureExtractor" => Steps::Donut {
                size: size_field(file, "size")?.unwrap_or(Size { height: 2560, width: 1920 }),
                align_long_axis: file.bool("do_align_long_axis")?.unwrap_or(false),
                resize: file.bool("do_resize")?.unwrap_or(true),
                thumbnail: file.bool("do_thumbnail")?.unwrap_or(true),
                pad: file.bool("do_pad")?.unwrap_or(true),
            },
            other => {
                return Err(file.error(format!(
                    "image processor {other} is not supported (glance knows ViT, DeiT and Donut processors)"
                )))
            }
        };
        let rescale = if file.bool("do_rescale")?.unwrap_or(true) {
            Some(match file.get("rescale_factor") {
                None => 1.0 / 255.0,
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| file.error("\"rescale_factor\" must be a number"))?,
            })
        } else {
            None
        };
        let normalize = if file.bool("do_normalize")?.unwrap_or(true) {
            let channels = |key: &str, default: f32| -> Result<[f32; 3]> {
                match file.f32s(key)? {
                    None => Ok([default; 3]),
                    Some(v) if v.len() == 1 => Ok([v[0]; 3]),
                    Some(v) if v.len() == 3 => Ok([v[0], v[1], v[2]]),
                    Some(v) => {
                        Err(file.error(format!("\"{key}\" must have 3 values, not {}", v.len())))
                    }
                }
            };
            let std = channels("image_std", 0.5)?;
            if std.contains(&0.0) {
                return Err(file.error("\"image_std\" must not be 0"));
            }
            Some((channels("image_mean", 0.5)?, std))
        } else {
            None
        };
        Ok(ImageProcessor {
            steps,
            resample,
            rescale,
            normalize,
        })
    }

    /// The size of the pixel values this processor produces, where it is fixed.
    pub fn output_size(&self) -> Option<Size> {
        match &self.steps {
            Steps::Vit {
                center_crop: Some(s),
                ..
            }
            | Steps::Vit {
                resize: Some(s),
                center_crop: None,
            } => Some(*s),
            Steps::Vit { .. } => None,
            Steps::Donut {
                size, pad: true, ..
            } => Some(*size),
            Steps::Donut { .. } => None,
        }
    }

    /// The 8-bit image after every geometric step, before rescaling and normalisation (the
    /// stage at which parity with PIL is measured).
    pub fn geometry(&self, image: &Rgb8) -> Rgb8 {
        match &self.steps {
            Steps::Vit {
                resize: size,
                center_crop,
            } => {
                let mut img = match size {
                    Some(s) => resized(image, *s, self.resample),
                    None => image.clone(),
                };
                if let Some(c) = center_crop {
                    img = center_cropped(&img, *c);
                }
                img
            }
            Steps::Donut {
                size,
                align_long_axis,
                resize,
                thumbnail,
                pad,
            } => {
                let mut img = image.clone();
                let (ih, iw, oh, ow) = (img.height, img.width, size.height, size.width);
                if *align_long_axis && ((ow < oh && iw > ih) || (ow > oh && iw < ih)) {
                    img = img.rotate_clockwise();
                }
                if *resize {
                    img = resized(&img, shortest_edge_size(&img, oh.min(ow)), self.resample);
                }
                if *thumbnail {
                    img = thumbnailed(&img, *size);
                }
                if *pad {
                    let top = size.height.saturating_sub(img.height) / 2;
                    let left = size.width.saturating_sub(img.width) / 2;
                    img = img.pad(
                        top,
                        left,
                        size.height.max(img.height),
                        size.width.max(img.width),
                    );
                }
                img
            }
        }
    }

    /// `pixel_values` `[1, 3, H, W]` for one image.
    pub fn preprocess(&self, image: &Rgb8) -> PixelValues {
        self.to_pixel_values(&self.geometry(image))
    }

    /// This processor bringing images to `size` instead of its configured size (`--size`): a
    /// ViT processor resizes to exactly `size` (no centre crop); Donut's fits and pads to it.
    pub fn with_size(&self, size: Size) -> ImageProcessor {
        let steps = match &self.steps {
            Steps::Vit { .. } => Steps::Vit {
                resize: Some(size),
                center_crop: None,
            },
            Steps::Donut {
                align_long_axis,
                resize,
                thumbnail,
                ..
            } => Steps::Donut {
                size,
                align_long_axis: *align_long_axis,
                resize: *resize,
                thumbnail: *thumbnail,
                pad: true,
            },
        };
        ImageProcessor {
            steps,
            ..self.clone()
        }
    }

    /// `--keep-aspect`: the image resized to `content` with this processor's filter, rescaled
    /// and normalised, at the top left of a `canvas` of zeros. Zero is the normalisation mean:
    /// the most neutral value an encoder can be shown for the padding.
    pub fn preprocess_fitted(&self, image: &Rgb8, canvas: Size, content: Size) -> PixelValues {
        let inner = self.to_pixel_values(&resized(image, content, self.resample));
        let (h, w) = (canvas.height, canvas.width);
        let mut data = vec![0f32; 3 * h * w];
        for c in 0..3 {
            for y in 0..content.height.min(h) {
                let from = (c * content.height + y) * content.width;
                let to = (c * h + y) * w;
                let n = content.width.min(w);
                data[to..to + n].copy_from_slice(&inner.data[from..from + n]);
            }
        }
        PixelValues {
            shape: [1, 3, h, w],
            data,
        }
    }

    /// Rescale and normalise, as transformers does: `f32(f64(x) * factor)`, then
    /// `(x - mean) / std` in f32.
    pub fn to_pixel_values(&self, img: &Rgb8) -> PixelValues {
        let plane = img.width * img.height;
        let mut data = vec![0f32; 3 * plane];
        for (i, px) in img.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let mut v = match self.rescale {
                    Some(f) => (px[c] as f64 * f) as f32,
                    None => px[c] as f32,
                };
                if let Some((mean, std)) = &self.normalize {
                    v = (v - mean[c]) / std[c];
                }
                data[c * plane + i] = v;
            }
        }
        PixelValues {
            shape: [1, 3, img.height, img.width],
            data,
        }
    }

    /// Maps pixel values back to the 8-bit scale (for comparing with a reference before
    /// rescaling and normalisation).
    pub fn to_8bit_scale(&self, channel: usize, v: f32) -> f64 {
        let mut v = v as f64;
        if let Some((mean, std)) = &self.normalize {
            v = v * std[channel] as f64 + mean[channel] as f64;
        }
        match self.rescale {
            Some(f) => v / f,
            None => v,
        }
    }
}

fn square(n: usize) -> Size {
    Size {
        height: n,
        width: n,
    }
}

/// `size` as transformers' `get_size_dict` reads it: `{"height", "width"}`, `{"shortest_edge"}`
/// (square for these processors), an int, or Donut's legacy `[width, height]` list.
fn size_field(file: &JsonFile, key: &str) -> Result<Option<Size>> {
    let Some(v) = file.get(key) else {
        return Ok(None);
    };
    let side = |v: &serde_json::Value| -> Result<usize> {
        v.as_u64()
            .filter(|&n| n > 0 && n as usize <= MAX_SIDE)
            .map(|n| n as usize)
            .ok_or_else(|| {
                file.error(format!(
                    "\"{key}\" holds {v}, not a size between 1 and {MAX_SIDE}"
                ))
            })
    };
    let size = match v {
        serde_json::Value::Object(map) => match (
            map.get("height"),
            map.get("width"),
            map.get("shortest_edge"),
        ) {
            (Some(h), Some(w), _) => Size {
                height: side(h)?,
                width: side(w)?,
            },
            (_, _, Some(s)) => square(side(s)?),
            _ => return Err(file.error(format!("\"{key}\" needs height and width"))),
        },
        serde_json::Value::Array(items) if items.len() == 2 => Size {
            height: side(&items[1])?,
            width: side(&items[0])?,
        },
        other => square(side(other)?),
    };
    Ok(Some(size))
}

fn resized(img: &Rgb8, to: Size, filter: Filter) -> Rgb8 {
    if to.width == img.width && to.height == img.height {
        return img.clone();
    }
    let data = resize(
        &img.data, img.width, img.height, 3, to.width, to.height, filter,
    );
    Rgb8::new(to.width, to.height, data)
}

/// transformers' `get_resize_output_image_size(default_to_square=False)`.
fn shortest_edge_size(img: &Rgb8, short_target: usize) -> Size {
    let (h, w) = (img.height, img.width);
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (short_target as f64 * long as f64 / short as f64) as usize;
    if w <= h {
        Size {
            height: new_long,
            width: short_target,
        }
    } else {
        Size {
            height: short_target,
            width: new_long,
        }
    }
}

/// Donut's `thumbnail`: shrink to fit, keeping the aspect ratio, with BICUBIC and PIL's
/// `reducing_gap=2.0`.
fn thumbnailed(img: &Rgb8, size: Size) -> Rgb8 {
    let (ih, iw) = (img.height, img.width);
    let mut height = ih.min(size.height);
    let mut width = iw.min(size.width);
    if height == ih && width == iw {
        return img.clone();
    }
    if ih > iw {
        width = (iw as f64 * height as f64 / ih as f64) as usize;
    } else if iw > ih {
        height = (ih as f64 * width as f64 / iw as f64) as usize;
    }
    let (width, height) = (width.max(1), height.max(1));
    let options = ResizeOptions {
        reducing_gap: Some(2.0),
        ..Default::default()
    };
    let data = resize_with(
        &img.data,
        iw,
        ih,
        3,
        width,
        height,
        Filter::Bicubic,
        &options,
    );
    Rgb8::new(width, height, data)
}

/// transformers' `center_crop` on an 8-bit image (zero padding where the crop is larger).
fn center_cropped(img: &Rgb8, to: Size) -> Rgb8 {
    let top = (img.height as isize - to.height as isize).div_euclid(2);
    let left = (img.width as isize - to.width as isize).div_euclid(2);
    img.crop(top, left, to.height, to.width)
}

/// Reads `preprocessor_config.json` from a model directory.
pub fn load(dir: &Path) -> Result<ImageProcessor> {
    let path = dir.join("preprocessor_config.json");
    if !path.is_file() {
        return Err(Error::config(
            &path,
            "missing: glance needs the model's image processor settings",
        ));
    }
    ImageProcessor::from_config(&JsonFile::read(&path)?)
}
