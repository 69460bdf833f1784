//! A model directory: its configs, its graphs, and the tract plans made from them.

pub mod attention;
pub mod compute;
pub mod encoder;
pub mod external;
pub mod graph;
pub mod hoist;
pub mod json;
pub mod layout;
pub mod matmul;
pub mod names;
pub mod position;
pub mod qmatmul;
pub mod surgery;

use std::path::{Path, PathBuf};
use tract_onnx::pb::ModelProto;

pub use self::compute::Compute;
pub use self::encoder::Encoder;
use self::graph::{Graph, Shapes};
use self::json::JsonFile;
use self::layout::{DecoderFiles, DecoderForm, Dtype, GraphFiles};
use self::surgery::Branch;
use crate::decode::session::{Decoder, Steps};
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
    /// The arithmetic of quantized and fp16 graphs (default: what this CPU runs fastest).
    pub compute: Compute,
    /// The largest image, in pixels, that [`crate::Model`] decodes or takes (`None`:
    /// [`crate::vision::image::DEFAULT_MAX_PIXELS`]). Files whose header claims more are refused
    /// before any pixel is allocated (decompression bombs).
    pub max_image_pixels: Option<u64>,
}

/// How graphs are prepared: the parts of [`OpenOptions`] every graph needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Runtime {
    pub threads: usize,
    pub compute: Compute,
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
    /// What config.json says about the decoder's sizes.
    pub decoder: DecoderSizes,
    pub files: GraphFiles,
}

/// The decoder sizes config.json gives, checked against the graph at load and against the
/// requested length before each generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderSizes {
    /// `vocab_size`: must equal the width of the decoder's logits.
    pub vocab_size: Option<usize>,
    /// The rows of a learned or precomputed position table (`max_position_embeddings`,
    /// GPT-2's `n_positions`): the longest sequence the decoder can run on. Past it the
    /// graph's Gather would index outside the table.
    pub positions: Option<usize>,
}

impl DecoderSizes {
    fn read(config: &JsonFile) -> Result<DecoderSizes> {
        let Some(dec) = config.section("decoder")? else {
            return Ok(DecoderSizes::default());
        };
        let positive = |key: &str| -> Result<Option<usize>> {
            match dec.usize(key, usize::MAX)? {
                Some(0) => Err(dec.error(format!("\"{key}\" is 0"))),
                other => Ok(other),
            }
        };
        let positions = match positive("max_position_embeddings")? {
            Some(n) => Some(n),
            None => positive("n_positions")?,
        };
        Ok(DecoderSizes {
            vocab_size: positive("vocab_size")?,
            positions,
        })
    }
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
        let decoder = DecoderSizes::read(&config)?;
        let files = layout::find_graphs(root, options.dtype, options.decoder)?;
        Ok(ModelDir {
            root: root.to_path_buf(),
            config,
            generation,
            encoder_type,
            decoder,
            files,
        })
    }

    /// Donut checkpoints use a task prompt as the whole decoder prompt (no start token).
    pub fn prompt_is_whole_prefix(&self) -> bool {
        self.encoder_type.contains("donut")
    }
}

/// Edits every graph needs before tract parses it: tract-hf-recipes.md's rewrites, and the
/// arithmetic `compute` asks for.
fn prepare_proto(proto: &mut ModelProto, path: &Path, compute: Compute) -> Result<()> {
    let Some(g) = proto.graph.as_mut() else {
        return Ok(());
    };
    surgery::gemm_to_matmul(g);
    surgery::small_powers_as_products(g);
    let bytes: &compute::Bytes = &|t| graph::tensor_bytes(t, path);
    if !compute.keeps_f16() {
        compute::f16_to_f32(g, bytes)?;
    }
    compute.integers().prepare(g, bytes)?;
    if matmul::claims() {
        let claimed = matmul::claim(g);
        log::debug!(
            "f32 products on glance's kernel: {} with their bias, {} alone",
            claimed.with_bias,
            claimed.alone
        );
    }
    Ok(())
}

/// What a decoder graph is loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The whole prefix from nothing (`decoder_model`, the merged file's no-cache branch).
    First,
    /// New tokens against a KV cache.
    WithPast,
    /// Only the cross-attention cache (`present.*.encoder.*`), cut out of a first-step graph.
    CrossCache,
}

/// Edits one decoder graph of `proto` for its role (`branch`: which side of a merged file).
fn edit_decoder(
    path: &Path,
    mut proto: ModelProto,
    branch: Option<Branch>,
    role: Role,
) -> Result<ModelProto> {
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
    match role {
        // Optimum's cache step returns empty placeholders for the cross-attention cache.
        Role::WithPast => surgery::drop_outputs(g, names::is_cross_attention_present),
        Role::CrossCache => {
            surgery::drop_outputs(g, |name| !names::is_cross_attention_present(name));
            // Only the cross-attention projections stay: the rest of the weights are never read.
            surgery::prune_dead(g);
        }
        Role::First => {}
    }
    surgery::prune_inputs(g);
    Ok(proto)
}

/// Whether a decoder graph runs at every step, so that what it computes from the inputs fixed
/// for a generation is worth hoisting out ([`hoist`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runs {
    EveryStep,
    Once,
}

/// Makes the tract plan of an edited decoder graph.
fn plan_decoder(path: &Path, mut proto: ModelProto, rt: Runtime, runs: Runs) -> Result<Graph> {
    prepare_proto(&mut proto, path, rt.compute)?;
    // A step graph's attention over the cache runs on glance's kernel, which lets beams share
    // the cross-attention cache ([`attention`]); f16 graphs keep tract's.
    let claim = |g: &mut tract_onnx::pb::GraphProto| match runs {
        Runs::EveryStep if !rt.compute.keeps_f16() => attention::claim_decoder(g),
        _ => None,
    };
    attention::plan_claimed(&mut proto, path, "attentions", claim, |proto| {
        plan_prepared(path, proto, rt, runs)
    })
}

/// [`plan_decoder`] after the edits.
fn plan_prepared(path: &Path, proto: &ModelProto, rt: Runtime, runs: Runs) -> Result<Graph> {
    let fixed = match runs {
        Runs::EveryStep => names::is_fixed_for_generation,
        Runs::Once => |_: &str| false,
    };
    let prepare = |shapes: &Shapes| Graph::prepare_step(path, proto, shapes, rt.threads, fixed);
    match prepare(&Shapes::default()) {
        Ok(g) => Ok(g),
        // Some GPT-2 graphs only type with a concrete batch (tract-hf-recipes.md item 6):
        // fall back to running rows one at a time.
        Err(first) => {
            let one = Shapes {
                batch_of_one: true,
                ..Shapes::default()
            };
            prepare(&one).map_err(|_| first)
        }
    }
}

fn prepare_decoder(
    path: &Path,
    proto: ModelProto,
    branch: Option<Branch>,
    role: Role,
    rt: Runtime,
    runs: Runs,
) -> Result<Graph> {
    plan_decoder(path, edit_decoder(path, proto, branch, role)?, rt, runs)
}

/// A step graph that takes `encoder_hidden_states` at every step (GPT-2 with cross-attention)
/// recomputes the cross-attention keys and values from them each time: about 2.8 GMAC per token
/// at GPT-2 base size. Those values are cut out into a graph run once per image, whose outputs
/// the step graph then reads like a cross-attention cache (`past_key_values.glance.{j}.encoder.value`).
/// Returns the step graph and the cut, or the step graph alone when there is nothing to cut or
/// the cut graphs do not load.
fn cut_encoder_only(path: &Path, step: ModelProto, rt: Runtime) -> Result<(Graph, Option<Graph>)> {
    let cut = step.graph.as_ref().and_then(|g| {
        surgery::encoder_only(g, names::ENCODER_HIDDEN_STATES, |j| {
            format!("present.glance.{j}.encoder.value")
        })
    });
    let Some(cut) = cut else {
        return Ok((plan_decoder(path, step, rt, Runs::EveryStep)?, None));
    };
    let attempt = |cut: surgery::EncoderOnly| -> Result<(Graph, Graph)> {
        // The cut graph with the step file's header (opsets, IR version), without copying the
        // step graph only to replace it.
        let header = ModelProto {
            graph: None,
            opset_import: step.opset_import.clone(),
            ir_version: step.ir_version,
            functions: step.functions.clone(),
            ..Default::default()
        };
        let cross = plan_decoder(
            path,
            ModelProto {
                graph: Some(cut.graph),
                ..header
            },
            rt,
            Runs::Once,
        )?;
        let renames: Vec<(String, String)> = cut
            .outputs
            .iter()
            .map(|(value, out)| {
                (
                    value.clone(),
                    out.replacen("present.", "past_key_values.", 1),
                )
            })
            .collect();
        let inputs = renames
            .iter()
            .zip(&cut.outputs)
            .map(|((_, input), (_, out))| {
                let port = cross
                    .outputs
                    .iter()
                    .find(|p| &p.name == out)
                    .ok_or_else(|| Error::graph(path, format!("the cut lost {out}")))?;
                Ok(graph::value_info(input, port))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut cut_step = step.clone();
        if let Some(g) = cut_step.graph.as_mut() {
            surgery::read_instead(g, &renames, inputs);
        }
        Ok((plan_decoder(path, cut_step, rt, Runs::EveryStep)?, cross))
    };
    match attempt(cut) {
        Ok((with_past, cross)) => Ok((with_past, Some(cross))),
        Err(e) => {
            log::debug!(
                "{}: keeping the cross-attention in the step graph ({e})",
                path.display()
            );
            Ok((plan_decoder(path, step, rt, Runs::EveryStep)?, None))
        }
    }
}

/// Loads the decoder graphs of any of the three forms.
///
/// With a KV cache, the with-past graph also runs the first step, from an empty
/// self-attention cache, so that the decoder weights are held once; the cross-attention cache
/// it needs comes from a small graph cut out of the first-step graph, or, for GPT-2-style
/// decoders that recompute it from `encoder_hidden_states` at every step, out of the step
/// graph itself ([`cut_encoder_only`]).
fn load_decoder(files: &DecoderFiles, rt: Runtime) -> Result<Decoder> {
    let (step_path, step, first_path, branch) = match files {
        DecoderFiles::NoPast(path) => {
            let g = prepare_decoder(
                path,
                graph::read_proto(path)?,
                None,
                Role::First,
                rt,
                Runs::EveryStep,
            )?;
            return Decoder::new(Steps::NoPast(g));
        }
        DecoderFiles::Split { first, with_past } => (
            with_past,
            edit_decoder(
                with_past,
                graph::read_proto(with_past)?,
                None,
                Role::WithPast,
            )?,
            first,
            None,
        ),
        DecoderFiles::Merged(path) => (
            path,
            edit_decoder(
                path,
                graph::read_proto(path)?,
                Some(Branch::Cache),
                Role::WithPast,
            )?,
            path,
            Some(Branch::NoCache),
        ),
    };
    let takes_states = step.graph.as_ref().is_some_and(|g| {
        g.input
            .iter()
            .any(|i| i.name == names::ENCODER_HIDDEN_STATES)
    });
    let (with_past, cut) = if takes_states {
        cut_encoder_only(step_path, step, rt)?
    } else {
        (plan_decoder(step_path, step, rt, Runs::EveryStep)?, None)
    };
    let first_proto = || graph::read_proto(first_path);
    let needs_cross = with_past
        .inputs
        .iter()
        .any(|p| names::past_key(&p.name).is_some_and(names::is_cross_attention));
    let cross = match cut {
        Some(cut) => Some(cut),
        None if needs_cross => Some(prepare_decoder(
            first_path,
            first_proto()?,
            branch,
            Role::CrossCache,
            rt,
            Runs::Once,
        )?),
        None => None,
    };
    if Steps::can_share(&with_past, cross.as_ref()) {
        return Decoder::new(Steps::Shared { with_past, cross });
    }
    let first = prepare_decoder(
        first_path,
        first_proto()?,
        branch,
        Role::First,
        rt,
        Runs::Once,
    )?;
    Decoder::new(Steps::Split { first, with_past })
}

/// Everything loaded from a model directory that generation needs.
#[derive(Debug)]
pub struct Graphs {
    pub encoder: Encoder,
    pub decoder: Decoder,
}

impl Graphs {
    pub fn load(dir: &ModelDir, encoder_size: Option<Size>, rt: Runtime) -> Result<Graphs> {
        let decoder = load_decoder(&dir.files.decoder, rt)?;
        if let Some(n) = dir.decoder.vocab_size.filter(|&n| n != decoder.vocab_size) {
            return Err(Error::config(
                &dir.config.path,
                format!(
                    "decoder.vocab_size is {n} but the decoder graph's logits have {} entries: the config and the graphs are not from one model",
                    decoder.vocab_size
                ),
            ));
        }
        let encoder = Encoder::load(dir, encoder_size, rt)?;
        Ok(Graphs { encoder, decoder })
    }
}
