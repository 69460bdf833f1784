//! A model directory: its configs, its graphs, and the tract plans made from them.

pub mod graph;
pub mod json;
pub mod layout;
pub mod names;
pub mod surgery;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use self::graph::{Graph, Shapes};
use self::json::JsonFile;
use self::layout::{DecoderFiles, DecoderForm, Dtype, GraphFiles};
use self::surgery::Branch;
use crate::decode::session::Decoder;
use crate::decode::GenerationOptions;
use crate::error::{Error, Result};
use crate::vision::{PixelValues, Size};

/// How to open a model directory.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Which graph files to use (`None`: fp32 when present).
    pub dtype: Option<Dtype>,
    /// Which decoder export to use when several are present (`None`: split, then merged, then no-past).
    pub decoder: Option<DecoderForm>,
    /// Threads for tract's matrix products; 0 or 1 runs on the calling thread.
    pub threads: usize,
}

/// A model directory whose configs were read and whose graph files were found.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub root: PathBuf,
    pub config: JsonFile,
    /// The generation settings the model's files give (generation_config.json, or config.json
    /// for models saved without one).
    pub generation: GenerationOptions,
    /// The encoder's `model_type` (`vit`, `deit`, `donut-swin`, …).
    pub encoder_type: String,
    pub files: GraphFiles,
}

impl ModelDir {
    pub fn open(root: &Path, options: &OpenOptions) -> Result<ModelDir> {
        if !root.is_dir() {
            return Err(Error::layout(root, "not a directory"));
        }
        let config_path = root.join("config.json");
        if !config_path.is_file() {
            return Err(Error::config(
                &config_path,
                "missing: a model directory needs its config.json",
            ));
        }
        let config = JsonFile::read(&config_path)?;
        let encoder_type = match config.section("encoder")? {
            Some(enc) => enc.string("model_type")?.unwrap_or_default(),
            None => String::new(),
        };
        let generation = match JsonFile::read_optional(&root.join("generation_config.json"))? {
            Some(file) => GenerationOptions::from_json(&file)?,
            None => GenerationOptions::from_model_config(&config)?,
        };
        let files = layout::find_graphs(root, options.dtype, options.decoder)?;
        Ok(ModelDir {
            root: root.to_path_buf(),
            config,
            generation,
            encoder_type,
            files,
        })
    }

    /// Donut checkpoints use a task prompt as the whole decoder prompt (no start token).
    pub fn prompt_is_whole_prefix(&self) -> bool {
        self.encoder_type.contains("donut")
    }
}

/// The encoder graph, with one plan per input size (a ViT only takes its training size; a
/// Swin encoder takes any multiple of its window).
#[derive(Debug)]
pub struct Encoder {
    path: PathBuf,
    threads: usize,
    plans: Mutex<Vec<(Size, Graph)>>,
}

impl Encoder {
    fn load(path: &Path, size: Option<Size>, threads: usize) -> Result<Encoder> {
        let encoder = Encoder {
            path: path.to_path_buf(),
            threads,
            plans: Mutex::new(Vec::new()),
        };
        if let Some(size) = size {
            encoder.plan(size)?;
        }
        Ok(encoder)
    }

    /// The plan for one input size, made on first use.
    fn plan(&self, size: Size) -> Result<Graph> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, g)) = plans.iter().find(|(s, _)| *s == size) {
            return Ok(g.clone());
        }
        let mut proto = graph::read_proto(&self.path)?;
        prepare_proto(&mut proto);
        // tract needs the channel count and spatial size concrete (tract-hf-recipes.md items 1, 2).
        // The batch is pinned to one image too: with a symbolic batch tract 0.23.9 makes the batch
        // the matmul's n axis and loops over the patch axis, which made a quantized ViT 7x slower
        // (one image at a time costs nothing: each already has hundreds of patches).
        let shapes = Shapes {
            fixed: vec![
                (names::PIXEL_VALUES.to_string(), 0, 1),
                (names::PIXEL_VALUES.to_string(), 1, 3),
                (names::PIXEL_VALUES.to_string(), 2, size.height),
                (names::PIXEL_VALUES.to_string(), 3, size.width),
            ],
            batch_of_one: false,
        };
        let g = Graph::prepare(&self.path, &proto, &shapes, self.threads)?;
        if g.input(names::PIXEL_VALUES).is_none() || g.inputs.len() != 1 {
            let found: Vec<String> = g.inputs.iter().map(|p| p.describe()).collect();
            return Err(Error::graph(
                &self.path,
                format!(
                    "an encoder must take exactly one input, {}; found {}",
                    names::PIXEL_VALUES,
                    found.join(", ")
                ),
            ));
        }
        plans.push((size, g.clone()));
        Ok(g)
    }

    /// `[batch, sequence, hidden]` encoder states for a batch of pixel values.
    pub fn run(&self, pixels: &PixelValues) -> Result<Tensor> {
        let size = Size {
            height: pixels.height(),
            width: pixels.width(),
        };
        let plan = self.plan(size)?;
        let at = plan.output_index(names::LAST_HIDDEN_STATE).unwrap_or(0);
        // The plan takes one image at a time (see `plan`).
        let mut states = Vec::with_capacity(pixels.batch());
        for i in 0..pixels.batch() {
            let image = pixels.item(i);
            let outputs = plan.run(|_| {
                Tensor::from_shape(&image.shape, &image.data)
                    .map_err(|e| Error::graph(&self.path, e))
            })?;
            states.push(outputs[at].clone().into_tensor());
        }
        if states.len() == 1 {
            return Ok(states.remove(0));
        }
        Tensor::stack_tensors(0, &states).map_err(|e| Error::graph(&self.path, e))
    }

    pub fn plans(&self) -> Vec<Graph> {
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, g)| g.clone())
            .collect()
    }
}

/// Edits every graph needs before tract parses it.
fn prepare_proto(proto: &mut ModelProto) {
    if let Some(g) = proto.graph.as_mut() {
        surgery::gemm_to_matmul(g);
    }
}

/// Loads the decoder graphs of any of the three forms.
fn load_decoder(files: &DecoderFiles, threads: usize) -> Result<Decoder> {
    let shapes = Shapes::default();
    let prepare = |path: &Path, mut proto: ModelProto, branch: Option<Branch>| -> Result<Graph> {
        let g = proto
            .graph
            .as_mut()
            .ok_or_else(|| Error::graph(path, "no graph"))?;
        if let Some(branch) = branch {
            if !surgery::splice_if(g, branch).map_err(|e| Error::graph(path, e))? {
                return Err(Error::graph(
                    path,
                    format!(
                        "a merged decoder must branch on {}",
                        surgery::USE_CACHE_BRANCH
                    ),
                ));
            }
        }
        if branch == Some(Branch::Cache)
            || path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("decoder_with_past"))
        {
            surgery::drop_outputs(g, names::is_cross_attention_present);
        }
        surgery::prune_inputs(g);
        prepare_proto(&mut proto);
        match Graph::prepare(path, &proto, &shapes, threads) {
            Ok(g) => Ok(g),
            // Some GPT-2 graphs only type with a concrete batch (tract-hf-recipes.md item 6):
            // fall back to running rows one at a time.
            Err(first) => {
                let one = Shapes {
                    batch_of_one: true,
                    ..Shapes::default()
                };
                Graph::prepare(path, &proto, &one, threads).map_err(|_| first)
            }
        }
    };
    let (first, with_past) = match files {
        DecoderFiles::Split { first, with_past } => (
            prepare(first, graph::read_proto(first)?, None)?,
            Some(prepare(with_past, graph::read_proto(with_past)?, None)?),
        ),
        DecoderFiles::Merged(path) => {
            let proto = graph::read_proto(path)?;
            (
                prepare(path, proto.clone(), Some(Branch::NoCache))?,
                Some(prepare(path, proto, Some(Branch::Cache))?),
            )
        }
        DecoderFiles::NoPast(path) => (prepare(path, graph::read_proto(path)?, None)?, None),
    };
    Decoder::new(first, with_past)
}

/// Everything loaded from a model directory that generation needs.
#[derive(Debug)]
pub struct Graphs {
    pub encoder: Encoder,
    pub decoder: Decoder,
}

impl Graphs {
    pub fn load(dir: &ModelDir, encoder_size: Option<Size>, threads: usize) -> Result<Graphs> {
        let encoder = Encoder::load(&dir.files.encoder, encoder_size, threads)?;
        let decoder = load_decoder(&dir.files.decoder, threads)?;
        Ok(Graphs { encoder, decoder })
    }
}
