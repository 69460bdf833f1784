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
