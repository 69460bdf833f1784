//! From image files to `pixel_values`: decoding, Hugging Face's image processors, PIL-exact
//! resampling, and `.npy` tensors for exchanging pixel values with Python.

pub mod image;
pub mod npy;
pub mod pil_jpeg;
pub mod pil_resize;
pub mod preprocess;
pub mod stream;

pub use self::image::Rgb8;
pub use self::preprocess::{ImageProcessor, Size};

/// A float image tensor `[batch, channels, height, width]`, as an encoder takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    pub shape: [usize; 4],
    pub data: Vec<f32>,
}

impl PixelValues {
    pub fn height(&self) -> usize {
        self.shape[2]
    }
    pub fn width(&self) -> usize {
        self.shape[3]
    }
    pub fn batch(&self) -> usize {
        self.shape[0]
    }

    /// Whether a caller's tensor is one an encoder can take: `[batch >= 1, 3, height, width]`
    /// with as many values as that shape, all finite. Preprocessed images always are; NaN or
    /// infinity can only come from a caller, and inside tract it ends in a kernel's integer
    /// overflow (armv7) or in nonsense.
    pub(crate) fn check(&self) -> crate::Result<()> {
        let len = self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if self.shape[1] != 3 || self.batch() == 0 || len != Some(self.data.len()) {
            return Err(crate::Error::Option(format!(
                "pixel values of shape {:?} are not [batch, 3, height, width]",
                self.shape
            )));
        }
        if let Some((i, v)) = self.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(crate::Error::Option(format!(
                "pixel values hold {v} at index {i}: the encoder takes finite numbers"
            )));
        }
        Ok(())
    }

    /// Image `i` of the batch as a batch of one.
    pub fn item(&self, i: usize) -> PixelValues {
        let n = self.data.len() / self.shape[0].max(1);
        PixelValues {
            shape: [1, self.shape[1], self.shape[2], self.shape[3]],
            data: self.data[i * n..(i + 1) * n].to_vec(),
        }
    }

    /// Stacks images of one size into a batch; `None` when sizes differ or the list is empty.
    pub fn stack(items: &[&PixelValues]) -> Option<PixelValues> {
        let first = items.first()?;
        let [_, c, h, w] = first.shape;
        if items.iter().any(|p| p.shape[1..] != first.shape[1..]) {
            return None;
        }
        let batch = items.iter().map(|p| p.shape[0]).sum();
        let data = items.iter().flat_map(|p| p.data.iter().copied()).collect();
        Some(PixelValues {
            shape: [batch, c, h, w],
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::PixelValues;

    #[test]
    fn caller_tensors_are_checked() {
        let ok = PixelValues {
            shape: [1, 3, 2, 2],
            data: vec![0.5; 12],
        };
        assert!(ok.check().is_ok());
        let err = |p: PixelValues| p.check().unwrap_err().to_string();
        let short = PixelValues {
            data: vec![0.5; 11],
            ..ok.clone()
        };
        assert!(err(short).contains("are not [batch, 3, height, width]"));
        // A shape whose product overflows usize is refused, not multiplied.
        let huge = PixelValues {
            shape: [usize::MAX, 3, usize::MAX, 2],
            ..ok.clone()
        };
        assert!(err(huge).contains("are not [batch, 3, height, width]"));
        let mut nan = ok.clone();
        nan.data[5] = f32::NAN;
        assert!(err(nan).contains("pixel values hold NaN at index 5"));
    }
}
