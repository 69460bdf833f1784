//! A model directory: its configs, its graphs, and the tract plans made from them.

pub mod encoder;
pub mod external;
pub mod graph;
pub mod json;
pub mod layout;
pub mod names;
pub mod position;
pub mod surgery;

use std::path::{Path, PathBuf};
use tract_onnx::pb::ModelProto;

pub use self::encoder::Encoder;
use self::graph::{Graph, Shapes};
use self::json::JsonFile;
use self::layout::{DecoderFiles, DecoderForm, Dtype, GraphFiles};
use self::surgery::Branch;
use crate::decode::session::Decoder;
use crate::decode::GenerationOptions;
use crate::error::{Error, Result};
use crate::vision::Size;

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
        let encoder = Encoder::load(dir, encoder_size, threads)?;
        let decoder = load_decoder(&dir.files.decoder, threads)?;
        Ok(Graphs { encoder, decoder })
    }
}
