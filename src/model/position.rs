//! Learned position embeddings of ViT-style encoders, and their resampling to other patch grids.
//!
//! A ViT or DeiT export only accepts its training size because its position embeddings are one
//! constant `[1, K + n*n, D]` (K leading tokens: the class token, and DeiT's distillation token)
//! added to the patch sequence. Resampling that table to another `rows x cols` grid exactly as
//! Hugging Face's `interpolate_pos_encoding` does (PyTorch bicubic) lets one model serve other
//! input shapes with the outputs transformers would give.

use std::path::Path;

use half::f16;
use tract_onnx::pb::{tensor_proto::DataType, GraphProto};

/// A position-embedding table: `leading` tokens kept apart, then a `rows x cols` patch grid
/// (square for Hugging Face's models; glance also resamples the non-square grids of encoders
/// trained on text lines).
#[derive(Debug, Clone, PartialEq)]
pub struct PositionEmbeddings {
    pub leading: usize,
    pub rows: usize,
    pub cols: usize,
    pub dim: usize,
    /// `[leading + rows * cols, dim]`, row-major.
    pub data: Vec<f32>,
}

/// Where a table was found in a graph: the initializer to rewrite per grid.
#[derive(Debug, Clone)]
pub struct InGraph {
    pub initializer: String,
    pub table: PositionEmbeddings,
    /// The initializer's element type, kept when it is rewritten (fp16 exports store it in f16).
    dtype: DataType,
}

impl PositionEmbeddings {
    /// A table `[1, tokens, dim]` (or `[tokens, dim]`) whose patch part is a `grid.0 x grid.1`
    /// grid.
    pub fn new(
        shape: &[usize],
        data: Vec<f32>,
        (rows, cols): (usize, usize),
    ) -> std::result::Result<Self, String> {
        let (tokens, dim) = match shape {
            [1, t, d] | [t, d] => (*t, *d),
            _ => return Err(format!("expected shape [1, tokens, dim], found {shape:?}")),
        };
        let leading = tokens
            .checked_sub(rows * cols)
            .filter(|k| (1..=2).contains(k))
            .ok_or_else(|| {
                format!(
                    "{tokens} positions are not 1 or 2 leading tokens plus a {rows}x{cols} patch grid"
                )
            })?;
        if data.len() != tokens * dim || dim == 0 {
            return Err(format!("{} values for shape {shape:?}", data.len()));
        }
        Ok(PositionEmbeddings {
            leading,
            rows,
            cols,
            dim,
            data,
        })
    }

    /// The table for a `rows x cols` grid, `[leading + rows * cols, dim]`, as transformers'
    /// `interpolate_pos_encoding` computes it: the leading tokens unchanged, the grid resampled
    /// with `F.interpolate(size=(rows, cols), mode="bicubic", align_corners=False)`. The native
    /// grid is returned as is, as transformers does.
    pub fn for_grid(&self, rows: usize, cols: usize) -> Vec<f32> {
        let (d, k, n) = (self.dim, self.leading, self.cols);
        if rows == self.rows && cols == self.cols {
            return self.data.clone();
        }
        let mut out = Vec::with_capacity((k + rows * cols) * d);
        out.extend_from_slice(&self.data[..k * d]);
        let grid = &self.data[k * d..];
        let ys = taps(self.rows, rows);
        let xs = taps(self.cols, cols);
        for (yi, yw) in &ys {
            for (xi, xw) in &xs {
                for c in 0..d {
                    // PyTorch's order of operations, in f32: the sum over the four rows of the
                    // weighted sums over the four columns.
                    let at = |y: usize, x: usize| grid[(y * n + x) * d + c];
                    let across = |y: usize| {
                        (1..4).fold(at(y, xi[0]) * xw[0], |t, i| t + at(y, xi[i]) * xw[i])
                    };
                    let v = (1..4).fold(across(yi[0]) * yw[0], |t, j| t + across(yi[j]) * yw[j]);
                    out.push(v);
                }
            }
        }
        out
    }
}

/// For each output index of a resize from `input` to `output` samples: the four source indices
/// (clamped to the border) and their weights, as PyTorch's CPU bicubic kernel computes them.
fn taps(input: usize, output: usize) -> Vec<([usize; 4], [f32; 4])> {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            // Half-pixel centres, not clamped at 0 for cubic.
            let src = scale * (o as f32 + 0.5) - 0.5;
            let base = (src.floor() as i64).min(input as i64 - 1);
            let t = (src - base as f32).clamp(0.0, 1.0);
            let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
            let index = |j: i64| (base - 1 + j).clamp(0, input as i64 - 1) as usize;
            ([index(0), index(1), index(2), index(3)], weights)
        })
        .collect()
}

impl InGraph {
    /// Finds the position-embedding initializer of a ViT-style encoder: a float initializer
    /// `[1, K + rows*cols, D]` added to the patch sequence.
    pub fn find(graph: &GraphProto, grid: (usize, usize), path: &Path) -> Option<InGraph> {
        let added: Vec<&str> = graph
            .node
            .iter()
            .filter(|n| n.op_type == "Add")
            .flat_map(|n| n.input.iter().map(String::as_str))
            .collect();
        graph
            .initializer
            .iter()
            .filter(|t| added.contains(&t.name.as_str()))
            .find_map(|t| {
                let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
                let leading = match shape[..] {
                    [1, tokens, _] => tokens.checked_sub(grid.0 * grid.1)?,
                    _ => return None,
                };
                if !(1..=2).contains(&leading) {
                    return None;
                }
                // Read only once the shape says this is the table (it may live in the file).
                let bytes = super::graph::tensor_bytes(t, path).ok()?;
                let data = super::graph::floats(t, &bytes)?;
                let dtype = DataType::try_from(t.data_type).ok()?;
                let table = PositionEmbeddings::new(&shape, data, grid).ok()?;
                Some(InGraph {
                    initializer: t.name.clone(),
                    table,
                    dtype,
                })
            })
    }

    /// Rewrites the initializer in `graph` with the table for a `rows x cols` grid.
    pub fn rewrite(&self, graph: &mut GraphProto, rows: usize, cols: usize) {
        let values = self.table.for_grid(rows, cols);
        let Some(t) = graph
            .initializer
            .iter_mut()
            .find(|t| t.name == self.initializer)
        else {
            return;
        };
        t.dims = vec![
            1,
            (self.table.leading + rows * cols) as i64,
            self.table.dim as i64,
        ];
        t.float_data.clear();
        t.int32_data.clear();
        t.external_data.clear();
        t.data_location = None;
        t.raw_data = match self.dtype {
            DataType::Float16 => values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_grid_is_unchanged_and_flat_directions_stay_flat() {
        let data: Vec<f32> = (0..(1 + 9) * 2).map(|v| v as f32).collect();
        let table = PositionEmbeddings::new(&[1, 10, 2], data.clone(), (3, 3)).unwrap();
        assert_eq!(table.for_grid(3, 3), data);
        // A table that only varies across columns, resampled to 6 rows x 3 columns: every row
        // equals the original one (the four row weights sum to one; the column resample is 1:1).
        let flat: Vec<f32> = [7.0, 7.0]
            .into_iter()
            .chain((0..9).flat_map(|i| [(i % 3) as f32, 10.0 * (i % 3) as f32]))
            .collect();
        let table = PositionEmbeddings::new(&[1, 10, 2], flat.clone(), (3, 3)).unwrap();
        let tall = table.for_grid(6, 3);
        assert_eq!(tall.len(), (1 + 18) * 2);
        assert_eq!(tall[..2], flat[..2], "the class token is kept apart");
        for r in 0..6 {
            for c in 0..3 {
                for d in 0..2 {
                    let got = tall[(1 + r * 3 + c) * 2 + d];
                    let want = flat[(1 + c) * 2 + d];
                    assert!(
                        (got - want).abs() < 1e-5,
                        "row {r} col {c}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn taps_match_pytorch_for_upscale_by_two() {
        // F.interpolate of 2 -> 4 samples: src = 0.5 * (o + 0.5) - 0.5 = -0.25, 0.25, 0.75, 1.25.
        let t = taps(2, 4);
        assert_eq!(t[0].0, [0, 0, 0, 1]);
        assert_eq!(t[1].0, [0, 0, 1, 1]);
        let sum: f32 = t[0].1.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rejects_tables_that_are_not_a_square_grid() {
        assert!(PositionEmbeddings::new(&[1, 12, 2], vec![0.0; 24], (3, 3)).is_err());
        assert!(PositionEmbeddings::new(&[1, 11, 2], vec![0.0; 22], (3, 3)).is_ok());
        assert!(PositionEmbeddings::new(&[1, 11, 2], vec![0.0; 20], (3, 3)).is_err());
    }
}
