//! The image side of a model: an optional visual tokenizer, then the encoder. Each is a graph
//! with one tract plan per input shape, made on first use.
//!
//! Three arrangements:
//! - `pixel_values -> encoder`, the usual export. A ViT-style encoder's position-embedding
//!   initializer is resampled for each patch grid ([`super::position`]), so it takes other sizes.
//! - continuous visual tokenizer: `visual_tokenizer.onnx` turns pixels into token embeddings
//!   (class tokens first, no position embeddings); glance adds `position_embeddings.npy`,
//!   resampled for the grid, and feeds the encoder's `inputs_embeds`.
//! - discrete visual tokenizer: `visual_tokenizer.onnx` gives one latent vector per patch;
//!   glance replaces each by the index of the nearest codebook vector and feeds the grid of ids
//!   to the encoder's `input_ids`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tract_onnx::pb::{ModelProto, ValueInfoProto};
use tract_onnx::prelude::*;

use super::graph::{self, Graph, NodeTime, Shapes};
use super::position::{InGraph, PositionEmbeddings};
use super::{attention, names, prepare_proto, surgery, ModelDir, Runtime};
use crate::error::{Error, Result};
use crate::vision::npy;
use crate::vision::{PixelValues, Size};

/// The most patches an input may have: attention costs grow with the square of it, and a
/// 64 x 64 grid is already far beyond what these models are trained on.
pub const MAX_PATCHES: usize = 4096;
/// The largest side, in pixels, of an input to an encoder without a patch grid.
pub const MAX_SIDE: usize = 4096;

const INPUTS_EMBEDS: &str = "inputs_embeds";
const ATTENTION_MASK: &str = "attention_mask";
const POSITION_FILE: &str = "position_embeddings.npy";
const CODEBOOK_FILE: &str = "codebook.npy";
const CODEBOOK_INITIALIZER: &str = "codebook";

/// Which input sizes an encoder takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputSizes {
    /// A grid of whole patches (ViT, DeiT: position embeddings resampled per grid).
    Patches { patch: Size, native: Size },
    /// Any multiple of `unit` (Swin pads its windows itself; a convolutional tokenizer).
    Multiple { unit: usize },
    /// Only the size the graph was exported for, where known.
    Native(Option<Size>),
}

impl InputSizes {
    /// A clear error for a size the encoder cannot take.
    pub fn check(&self, size: Size) -> Result<()> {
        let Size { height, width } = size;
        let bad = |why: String| Err(Error::Option(format!("input size {height}x{width}: {why}")));
        if height == 0 || width == 0 {
            return bad("a side is zero".into());
        }
        match *self {
            InputSizes::Patches { patch, .. } => {
                if height % patch.height != 0 || width % patch.width != 0 {
                    return bad(format!(
                        "not a multiple of the {}x{} patch",
                        patch.height, patch.width
                    ));
                }
                let patches = (height / patch.height) * (width / patch.width);
                if patches > MAX_PATCHES {
                    return bad(format!(
                        "{patches} patches, more than the limit of {MAX_PATCHES}"
                    ));
                }
            }
            InputSizes::Multiple { unit } => {
                if height % unit != 0 || width % unit != 0 {
                    return bad(format!("not a multiple of {unit}"));
                }
                if height.max(width) > MAX_SIDE {
                    return bad(format!("a side is larger than the limit of {MAX_SIDE}"));
                }
            }
            InputSizes::Native(Some(native)) if native != size => {
                return bad(format!(
                    "this encoder only takes {}x{}",
                    native.height, native.width
                ));
            }
            InputSizes::Native(_) => {}
        }
        Ok(())
    }

    /// For `--keep-aspect`: the input size (a grid of whole patches within the encoder's patch
    /// budget, the number of patches of its native size) and the size the image is resized to
    /// inside it, keeping its aspect ratio, as large as the budget allows; the rest is padding
    /// (less than a patch on each axis). `None` where the encoder has no patch grid.
    pub fn keep_aspect(&self, image: Size) -> Option<(Size, Size)> {
        let InputSizes::Patches { patch, native } = *self else {
            return None;
        };
        let budget = (native.height / patch.height) * (native.width / patch.width);
        let (h, w) = (image.height.max(1) as f64, image.width.max(1) as f64);
        let (ph, pw) = (patch.height as f64, patch.width as f64);
        let cells = |extent: f64, p: f64| ((extent / p) - 1e-9).ceil().max(1.0) as usize;
        // For each number of rows, the largest scale whose grid fits the budget.
        let scale = (1..=budget)
            .map(|rows| {
                let by_rows = rows as f64 * ph / h;
                let cols = budget / rows;
                by_rows.min(cols as f64 * pw / w)
            })
            .fold(0.0, f64::max);
        let (rows, cols) = (cells(scale * h, ph), cells(scale * w, pw));
        let canvas = Size {
            height: rows * patch.height,
            width: cols * patch.width,
        };
        let content = Size {
            height: ((scale * h).round() as usize).clamp(1, canvas.height),
            width: ((scale * w).round() as usize).clamp(1, canvas.width),
        };
        Some((canvas, content))
    }
}

/// A codebook `[entries, dim]` of a discrete visual tokenizer.
#[derive(Debug, Clone)]
pub struct Codebook {
    dim: usize,
    data: Vec<f32>,
}

impl Codebook {
    fn new(shape: &[usize], data: Vec<f32>) -> std::result::Result<Codebook, String> {
        match shape {
            [entries, dim] if *entries > 0 && *dim > 0 && data.len() == entries * dim => {
                Ok(Codebook { dim: *dim, data })
            }
            _ => Err(format!(
                "a codebook must be [entries, dim], found shape {shape:?}"
            )),
        }
    }

    /// The index of the entry nearest to `v` in squared L2 distance (the first on a tie, as
    /// `argmin` returns it).
    fn nearest(&self, v: &[f32]) -> i64 {
        let mut best = (f32::INFINITY, 0);
        for (i, entry) in self.data.chunks_exact(self.dim).enumerate() {
            let d: f32 = entry.iter().zip(v).map(|(c, x)| (x - c) * (x - c)).sum();
            if d < best.0 {
                best = (d, i);
            }
        }
        best.1 as i64
    }
}

/// A grid of visual-word ids from a discrete tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdGrid {
    pub rows: usize,
    pub cols: usize,
    /// Row-major, `rows * cols` ids.
    pub ids: Vec<i64>,
}

/// One graph file with a plan per input shape.
#[derive(Debug)]
struct Plans {
    path: PathBuf,
    input: &'static str,
    rt: Runtime,
    /// A ViT's own position table and its patch size: rewritten for each grid.
    position: Option<(InGraph, Size)>,
    made: Mutex<Vec<(Vec<usize>, Graph)>>,
}

impl Plans {
    fn new(path: &Path, input: &'static str, rt: Runtime) -> Plans {
        Plans {
            path: path.to_path_buf(),
            input,
            rt,
            position: None,
            made: Mutex::new(Vec::new()),
        }
    }

    /// The plan for inputs of `shape`, made on first use. Every axis is made concrete: tract
    /// needs a ViT's channels and size (tract-hf-recipes.md items 1, 2), and a batch of one
    /// keeps tract 0.23.9 from making the batch the matmul's n axis, which made a quantized ViT
    /// 7x slower (images run one at a time; each already has hundreds of patches).
    fn get(&self, shape: &[usize]) -> Result<Graph> {
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, g)) = made.iter().find(|(s, _)| s == shape) {
            return Ok(g.clone());
        }
        let mut proto = graph::read_proto(&self.path)?;
        self.check_inputs(&proto)?;
        prepare_proto(&mut proto, &self.path, self.rt.compute)?;
        if let (Some((table, patch)), Some(g)) = (&self.position, proto.graph.as_mut()) {
            let grid = (shape[2] / patch.height, shape[3] / patch.width);
            if grid != (table.table.rows, table.table.cols) {
                table.rewrite(g, grid.0, grid.1);
            }
        }
        let shapes = Shapes {
            fixed: shape
                .iter()
                .enumerate()
                .map(|(axis, &n)| (self.input.to_string(), axis, n))
                .collect(),
            batch_of_one: false,
        };
        // Self-attention on glance's kernel ([`attention::claim_encoder`]) where it is fast;
        // f16 graphs keep tract's.
        let claim = |g: &mut tract_onnx::pb::GraphProto| {
            let on = !self.rt.compute.keeps_f16() && attention::claims_encoders();
            on.then(|| attention::claim_encoder(g)).flatten()
        };
        let g = attention::plan_claimed(&mut proto, &self.path, "self-attentions", claim, |p| {
            Graph::prepare(&self.path, p, &shapes, self.rt.threads)
        })?;
        made.push((shape.to_vec(), g.clone()));
        Ok(g)
    }

    /// The graph takes this stage's input (float pixels or embeddings; integer ids), and at most an attention mask
    /// besides: checked before tract analyses the graph, whose errors would not say that the
    /// file has the wrong layout.
    fn check_inputs(&self, proto: &ModelProto) -> Result<()> {
        use tract_onnx::pb::{tensor_proto::DataType, type_proto::Value};
        let inputs = proto
            .graph
            .as_ref()
            .map(surgery::real_inputs)
            .unwrap_or_default();
        let elem_type = |i: &ValueInfoProto| match i.r#type.as_ref().and_then(|t| t.value.as_ref())
        {
            Some(Value::TensorType(t)) => Some(t.elem_type),
            _ => None,
        };
        let expected = if self.input == names::INPUT_IDS {
            [DataType::Int64, DataType::Int32]
        } else {
            [DataType::Float, DataType::Float16]
        }
        .map(|t| t as i32);
        let ours = inputs.iter().find(|i| i.name == self.input);
        let extra = inputs
            .iter()
            .any(|i| i.name != self.input && i.name != ATTENTION_MASK);
        let wrong_type = ours
            .and_then(|i| elem_type(i))
            .is_some_and(|t| !expected.contains(&t));
        if ours.is_none() || extra || wrong_type {
            let found: Vec<String> = inputs
                .iter()
                .map(|i| {
                    let dt = elem_type(i).and_then(|t| DataType::try_from(t).ok());
                    format!("{} ({})", i.name, dt.map_or("?", |t| t.as_str_name()))
                })
                .collect();
            return Err(Error::graph(
                &self.path,
                format!(
                    "this graph must take {} (float pixels or embeddings, integer ids; optionally {ATTENTION_MASK}); found {}",
                    self.input,
                    found.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Runs the plan for `input`'s shape; returns the first output, or the one named `output`.
    fn run(&self, input: Tensor, output: &str) -> Result<Tensor> {
        let plan = self.get(input.shape())?;
        let at = plan.output_index(output).unwrap_or(0);
        // A mask covers the batch and sequence axes: every token is real.
        let mask_shape: Vec<usize> = input.shape().iter().take(2).copied().collect();
        let mut input = Some(input);
        let mut outputs = plan.run(|port| {
            if port.name == ATTENTION_MASK {
                Ok(
                    Tensor::from_shape(&mask_shape, &vec![1i64; mask_shape.iter().product()])
                        .map_err(|e| Error::graph(&self.path, e))?,
                )
            } else {
                input
                    .take()
                    .ok_or_else(|| Error::graph(&self.path, "one input is fed twice"))
            }
        })?;
        Ok(outputs.remove(at).into_tensor())
    }

    fn plans(&self) -> Vec<Graph> {
        let made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        made.iter().map(|(_, g)| g.clone()).collect()
    }
}

/// Rows and columns of patches.
type Grid = (usize, usize);

#[derive(Debug)]
enum Stages {
    Pixels(Plans),
    Continuous {
        tokenizer: Plans,
        position: PositionEmbeddings,
        patch: Size,
        /// Position tables already resampled, per grid.
        tables: Mutex<Vec<(Grid, Arc<Vec<f32>>)>>,
        encoder: Plans,
    },
    Discrete {
        tokenizer: Plans,
        codebook: Codebook,
        encoder: Plans,
    },
}

/// The visual tokenizer (when the model has one) and the encoder.
#[derive(Debug)]
pub struct Encoder {
    stages: Stages,
    sizes: InputSizes,
}

impl Encoder {
    /// Loads the stages of `dir`; `native` is the size its image processor produces, whose plan
    /// is made at once.
    pub fn load(dir: &ModelDir, native: Option<Size>, rt: Runtime) -> Result<Encoder> {
        let geometry = Geometry::read(dir, native)?;
        let (stages, sizes) = match &dir.files.visual_tokenizer {
            None => pixel_stage(dir, &geometry, native, rt)?,
            Some(tokenizer) => tokenizer_stages(dir, tokenizer, &geometry, rt)?,
        };
        let encoder = Encoder { stages, sizes };
        if let Some(size) = native {
            encoder
                .first_stage()
                .get(&[1, 3, size.height, size.width])?;
        }
        Ok(encoder)
    }

    fn first_stage(&self) -> &Plans {
        match &self.stages {
            Stages::Pixels(p) => p,
            Stages::Continuous { tokenizer, .. } | Stages::Discrete { tokenizer, .. } => tokenizer,
        }
    }

    /// The input sizes this encoder takes.
    pub fn sizes(&self) -> InputSizes {
        self.sizes
    }

    /// `[batch, sequence, hidden]` encoder states for a batch of pixel values (run one image at
    /// a time, see `Plans::get`).
    pub fn run(&self, pixels: &PixelValues) -> Result<Tensor> {
        self.sizes.check(Size {
            height: pixels.height(),
            width: pixels.width(),
        })?;
        let mut states = Vec::with_capacity(pixels.batch());
        for i in 0..pixels.batch() {
            states.push(self.run_one(&pixels.item(i))?);
        }
        if states.len() == 1 {
            return Ok(states.remove(0));
        }
        Tensor::stack_tensors(0, &states)
            .map_err(|e| Error::graph(self.first_stage().path.as_path(), e))
    }

    fn run_one(&self, image: &PixelValues) -> Result<Tensor> {
        let path = &self.first_stage().path;
        let pixels =
            Tensor::from_shape(&image.shape, &image.data).map_err(|e| Error::graph(path, e))?;
        match &self.stages {
            Stages::Pixels(encoder) => encoder.run(pixels, names::LAST_HIDDEN_STATE),
            Stages::Continuous {
                tokenizer,
                position,
                patch,
                tables,
                encoder,
            } => {
                let fail = |e: TractError| Error::graph(&tokenizer.path, e);
                let mut embeddings = tokenizer
                    .run(pixels, "embeddings")?
                    .cast_to::<f32>()
                    .map_err(fail)?
                    .into_owned();
                let grid = (image.height() / patch.height, image.width() / patch.width);
                let table = {
                    let mut tables = tables.lock().unwrap_or_else(|e| e.into_inner());
                    match tables.iter().find(|(g, _)| *g == grid) {
                        Some((_, t)) => t.clone(),
                        None => {
                            let t = Arc::new(position.for_grid(grid.0, grid.1));
                            tables.push((grid, t.clone()));
                            t
                        }
                    }
                };
                let expected = [1, table.len() / position.dim, position.dim];
                if embeddings.shape() != expected {
                    return Err(Error::graph(
                        &tokenizer.path,
                        format!(
                            "the tokenizer gave embeddings of shape {:?} where a {}x{} grid needs {expected:?}",
                            embeddings.shape(),
                            grid.0,
                            grid.1
                        ),
                    ));
                }
                let mut view = embeddings.try_as_plain_ram_mut().map_err(fail)?;
                let values = view.as_slice_mut::<f32>().map_err(fail)?;
                values
                    .iter_mut()
                    .zip(table.iter())
                    .for_each(|(v, p)| *v += p);
                encoder.run(embeddings, names::LAST_HIDDEN_STATE)
            }
            Stages::Discrete {
                tokenizer,
                codebook,
                encoder,
            } => {
                let grid = discrete_ids(tokenizer, codebook, pixels)?;
                let ids = Tensor::from_shape(&[1, grid.ids.len()], &grid.ids)
                    .map_err(|e| Error::graph(&encoder.path, e))?;
                encoder.run(ids, names::LAST_HIDDEN_STATE)
            }
        }
    }

    /// The visual-word ids of each image, for a model with a discrete visual tokenizer.
    pub fn tokenize(&self, pixels: &PixelValues) -> Result<Vec<IdGrid>> {
        let Stages::Discrete {
            tokenizer,
            codebook,
            ..
        } = &self.stages
        else {
            return Err(Error::Option(
                "this model has no discrete visual tokenizer (visual_tokenizer.onnx with a codebook)"
                    .into(),
            ));
        };
        (0..pixels.batch())
            .map(|i| {
                let image = pixels.item(i);
                let t = Tensor::from_shape(&image.shape, &image.data)
                    .map_err(|e| Error::graph(&tokenizer.path, e))?;
                discrete_ids(tokenizer, codebook, t)
            })
            .collect()
    }

    /// Times every node of the first stage (the encoder, or the visual tokenizer) on one image.
    pub fn profile(&self, image: &PixelValues) -> Result<Vec<NodeTime>> {
        let stage = self.first_stage();
        let plan = stage.get(&image.shape)?;
        let pixels = Tensor::from_shape(&image.shape, &image.data)
            .map_err(|e| Error::graph(&stage.path, e))?;
        plan.profile(|_| Ok(pixels.clone()))
    }

    /// Every plan made so far, first stage first.
    pub fn plans(&self) -> Vec<Graph> {
        match &self.stages {
            Stages::Pixels(p) => p.plans(),
            Stages::Continuous {
                tokenizer, encoder, ..
            }
            | Stages::Discrete {
                tokenizer, encoder, ..
            } => [tokenizer.plans(), encoder.plans()].concat(),
        }
    }
}

/// The patch geometry the encoder's config gives: patch size, and the training size as a grid
/// of patches.
struct Geometry {
    patch: Option<Size>,
    /// `(patch, image size, (rows, cols))` where the image is a whole number of patches.
    grid: Option<(Size, Size, Grid)>,
    /// Swin: each stage after the first halves the grid (`depths` has one entry per stage).
    stages: Option<usize>,
}

impl Geometry {
    fn read(dir: &ModelDir, native: Option<Size>) -> Result<Geometry> {
        let config = dir.config.section("encoder")?;
        let pair = |key: &str| -> Result<Option<Size>> {
            Ok(match &config {
                Some(c) => c
                    .size_pair(key, MAX_SIDE)?
                    .map(|(height, width)| Size { height, width }),
                None => None,
            })
        };
        let patch = pair("patch_size")?;
        let image = pair("image_size")?.or(native);
        let grid = match (patch, image) {
            (Some(p), Some(i)) if i.height % p.height == 0 && i.width % p.width == 0 => {
                Some((p, i, (i.height / p.height, i.width / p.width)))
            }
            _ => None,
        };
        let stages = config
            .as_ref()
            .and_then(|c| c.get("depths"))
            .and_then(|d| d.as_array())
            .map(Vec::len);
        Ok(Geometry {
            patch,
            grid,
            stages,
        })
    }
}

/// `pixel_values -> encoder`, with the encoder's own position table resampled per grid where
/// it has one.
fn pixel_stage(
    dir: &ModelDir,
    geometry: &Geometry,
    native: Option<Size>,
    rt: Runtime,
) -> Result<(Stages, InputSizes)> {
    let path = &dir.files.encoder;
    let mut plans = Plans::new(path, names::PIXEL_VALUES, rt);
    let mut sizes = InputSizes::Native(native);
    if let Some((patch, image, cells)) = geometry.grid {
        let proto = graph::read_proto(path)?;
        if let Some(found) = proto
            .graph
            .as_ref()
            .and_then(|g| InGraph::find(g, cells, path))
        {
            plans.position = Some((found, patch));
            sizes = InputSizes::Patches {
                patch,
                native: image,
            };
        }
    }
    if dir.encoder_type.contains("swin") {
        if let Some(patch) = geometry.patch {
            // Swin pads its windows itself: any multiple of the last stage's patch works.
            let halvings = geometry.stages.unwrap_or(1).saturating_sub(1).min(8);
            sizes = InputSizes::Multiple {
                unit: patch.height.max(patch.width) << halvings,
            };
        }
    }
    Ok((Stages::Pixels(plans), sizes))
}

/// A visual tokenizer and the encoder after it: continuous when the encoder takes
/// `inputs_embeds`, discrete when it takes `input_ids`.
fn tokenizer_stages(
    dir: &ModelDir,
    tokenizer_path: &Path,
    geometry: &Geometry,
    rt: Runtime,
) -> Result<(Stages, InputSizes)> {
    let files = &dir.files;
    let tokenizer = Plans::new(tokenizer_path, names::PIXEL_VALUES, rt);
    let inputs = graph_inputs(&files.encoder)?;
    if inputs.iter().any(|n| n == INPUTS_EMBEDS) {
        let (patch, image, cells) = geometry.grid.ok_or_else(|| {
            dir.config.error(
                "a continuous visual tokenizer needs the encoder's patch_size and image_size",
            )
        })?;
        // export.py writes one table per dtype (always float32), beside the graphs.
        let suffixed = format!("position_embeddings{}.npy", files.dtype.suffix());
        let path = [
            files.folder.join(&suffixed),
            files.folder.join(POSITION_FILE),
            dir.root.join(POSITION_FILE),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| files.folder.join(POSITION_FILE));
        let array = npy::read(&path)?;
        let position = PositionEmbeddings::new(&array.shape, array.data, cells)
            .map_err(|msg| Error::config(&path, msg))?;
        let stages = Stages::Continuous {
            tokenizer,
            position,
            patch,
            tables: Mutex::new(Vec::new()),
            encoder: Plans::new(&files.encoder, INPUTS_EMBEDS, rt),
        };
        Ok((
            stages,
            InputSizes::Patches {
                patch,
                native: image,
            },
        ))
    } else if inputs.iter().any(|n| n == names::INPUT_IDS) {
        let stages = Stages::Discrete {
            tokenizer,
            codebook: load_codebook(dir, tokenizer_path)?,
            encoder: Plans::new(&files.encoder, names::INPUT_IDS, rt),
        };
        Ok((stages, InputSizes::Multiple { unit: 1 }))
    } else {
        Err(Error::graph(
            &files.encoder,
            format!(
                "after a visual tokenizer the encoder must take {INPUTS_EMBEDS} or {}; it takes {}",
                names::INPUT_IDS,
                inputs.join(", ")
            ),
        ))
    }
}

/// Runs a discrete tokenizer and maps each latent `[1, dim, rows, cols]` to its nearest code.
fn discrete_ids(tokenizer: &Plans, codebook: &Codebook, pixels: Tensor) -> Result<IdGrid> {
    let latents = tokenizer.run(pixels, "latents")?;
    let latents = latents
        .cast_to::<f32>()
        .map_err(|e| Error::graph(&tokenizer.path, e))?;
    let &[1, dim, rows, cols] = latents.shape() else {
        return Err(Error::graph(
            &tokenizer.path,
            format!(
                "latents must be [1, dim, rows, cols], found {:?}",
                latents.shape()
            ),
        ));
    };
    if dim != codebook.dim {
        return Err(Error::graph(
            &tokenizer.path,
            format!(
                "latents have {dim} channels but the codebook's vectors have {}",
                codebook.dim
            ),
        ));
    }
    let view = latents
        .try_as_plain_ram()
        .map_err(|e| Error::graph(&tokenizer.path, e))?;
    let values = view
        .as_slice::<f32>()
        .map_err(|e| Error::graph(&tokenizer.path, e))?;
    let plane = rows * cols;
    let mut v = vec![0f32; dim];
    let ids = (0..plane)
        .map(|at| {
            v.iter_mut()
                .enumerate()
                .for_each(|(c, x)| *x = values[c * plane + at]);
            codebook.nearest(&v)
        })
        .collect();
    Ok(IdGrid { rows, cols, ids })
}

/// The codebook of a discrete tokenizer: `codebook.npy` beside the graphs, or an initializer
/// named `codebook` in the tokenizer graph.
fn load_codebook(dir: &ModelDir, tokenizer: &Path) -> Result<Codebook> {
    for path in [
        dir.files.folder.join(CODEBOOK_FILE),
        dir.root.join(CODEBOOK_FILE),
    ] {
        if path.is_file() {
            let array = npy::read(&path)?;
            return Codebook::new(&array.shape, array.data)
                .map_err(|msg| Error::config(&path, msg));
        }
    }
    let proto = graph::read_proto(tokenizer)?;
    let init = proto
        .graph
        .as_ref()
        .and_then(|g| g.initializer.iter().find(|t| t.name == CODEBOOK_INITIALIZER))
        .ok_or_else(|| {
            Error::layout(
                &dir.root,
                format!(
                    "a discrete visual tokenizer needs {CODEBOOK_FILE} or an initializer named \"{CODEBOOK_INITIALIZER}\" in {}",
                    tokenizer.display()
                ),
            )
        })?;
    let shape: Vec<usize> = init.dims.iter().map(|&d| d.max(0) as usize).collect();
    let data = graph::floats(init, &graph::tensor_bytes(init, tokenizer)?)
        .ok_or_else(|| Error::graph(tokenizer, "the codebook must be f32 or f16"))?;
    Codebook::new(&shape, data).map_err(|msg| Error::graph(tokenizer, msg))
}

/// The names of a graph's real inputs (those that are not initializers).
fn graph_inputs(path: &Path) -> Result<Vec<String>> {
    let proto = graph::read_proto(path)?;
    let g = proto
        .graph
        .as_ref()
        .ok_or_else(|| Error::graph(path, "no graph"))?;
    Ok(surgery::real_inputs(g)
        .into_iter()
        .map(|i| i.name.clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(height: usize, width: usize) -> Size {
        Size { height, width }
    }

    #[test]
    fn patch_sizes_are_checked() {
        let vit = InputSizes::Patches {
            patch: size(16, 16),
            native: size(96, 96),
        };
        assert!(vit.check(size(64, 160)).is_ok());
        for bad in [size(0, 96), size(100, 96), size(96 * 16, 96 * 16)] {
            let e = vit.check(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{}x{}", bad.height, bad.width)), "{e}");
        }
        assert!(InputSizes::Native(Some(size(96, 96)))
            .check(size(64, 64))
            .is_err());
    }

    #[test]
    fn keep_aspect_stays_within_the_patch_budget() {
        let vit = InputSizes::Patches {
            patch: size(16, 16),
            native: size(96, 96),
        };
        for (h, w) in [
            (48, 480),
            (480, 48),
            (300, 400),
            (1, 1),
            (96, 96),
            (7, 1000),
        ] {
            let (canvas, content) = vit.keep_aspect(size(h, w)).unwrap();
            let patches = (canvas.height / 16) * (canvas.width / 16);
            assert!(patches <= 36 && patches > 0, "{h}x{w} -> {canvas:?}");
            assert!(content.height <= canvas.height && content.width <= canvas.width);
            assert!(canvas.height - content.height < 16 && canvas.width - content.width < 16);
        }
        // A 10:1 line: 2 x 18 patches, the image scaled by 0.6.
        assert_eq!(
            vit.keep_aspect(size(48, 480)).unwrap(),
            (size(32, 288), size(29, 288))
        );
        assert_eq!(
            vit.keep_aspect(size(300, 300)).unwrap(),
            (size(96, 96), size(96, 96))
        );
    }

    #[test]
    fn nearest_code_takes_the_first_of_equals() {
        let book = Codebook::new(&[3, 2], vec![0.0, 0.0, 1.0, 1.0, 1.0, 1.0]).unwrap();
        assert_eq!(book.nearest(&[0.9, 1.2]), 1);
        assert_eq!(book.nearest(&[-1.0, 0.0]), 0);
        assert!(Codebook::new(&[3, 2], vec![0.0; 5]).is_err());
    }
}
