//! `glance bench`: where the time and memory of one image-to-text job go, measured the way a
//! user runs it (open the model, preprocess, encode, decode), as medians over several runs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::Result;
use crate::model::compute::Integers;
use crate::{GenerateOptions, Model, OpenOptions, Resolution, Rgb8};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub open: OpenOptions,
    pub generate: GenerateOptions,
    pub resolution: Resolution,
    /// Measured runs (the median is reported).
    pub runs: usize,
    /// Runs before measuring (they make the plans of sizes not prepared at load).
    pub warmup: usize,
}

/// Medians over the measured runs; memory and load time from the single load.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    pub model: PathBuf,
    pub image: PathBuf,
    /// Bytes of the graph files the model runs (on disk).
    pub weights_bytes: u64,
    /// The process's peak resident memory (VmHWM) after all runs; `None` off Linux.
    pub peak_rss_bytes: Option<u64>,
    /// Resident memory right after loading.
    pub rss_after_load_bytes: Option<u64>,
    pub load_ms: f64,
    pub preprocess_ms: f64,
    pub encode_ms: f64,
    /// From the start of generation (encoder included) to the first token.
    pub first_token_ms: f64,
    /// Decoding time (every decoder step, the first included) per generated token.
    pub decode_ms_per_token: f64,
    /// Preprocessing and generation, image decoded.
    pub total_ms: f64,
    pub tokens_generated: usize,
    pub threads: usize,
    pub runs: usize,
    pub text: String,
}

/// Opens the model and runs it `warmup + runs` times on `image`.
pub fn measure(model_dir: &Path, image: &Path, options: &BenchOptions) -> Result<BenchReport> {
    let start = Instant::now();
    let model = Model::open(model_dir, &options.open)?;
    let load_ms = ms(start);
    let rss_after_load_bytes = memory("VmRSS");
    let weights_bytes = model
        .dir()
        .files
        .paths()
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let decoded = Rgb8::open(image)?;

    let mut samples: Vec<Sample> = Vec::with_capacity(options.runs);
    let mut text = String::new();
    for run in 0..options.warmup + options.runs.max(1) {
        let start = Instant::now();
        let pixels = model.preprocess(&decoded, options.resolution)?;
        let preprocess_ms = ms(start);
        let generate_start = Instant::now();
        let mut first_token_ms = None;
        let mut tokens = 0usize;
        let out = model
            .generate_with(&pixels, &options.generate, |_, _| {
                first_token_ms.get_or_insert_with(|| ms(generate_start));
                tokens += 1;
                true
            })?
            .remove(0);
        let generate_ms = ms(generate_start);
        let first_token_ms = first_token_ms.unwrap_or(generate_ms);
        if run >= options.warmup {
            samples.push(Sample {
                preprocess_ms,
                encode_ms: out.timings.encode_ms,
                first_token_ms,
                // Every decoder step, over the tokens of the returned sequence: the same measure
                // for greedy and beam search (whose tokens are only known at the end).
                decode_ms_per_token: out.timings.decode_ms / tokens.max(1) as f64,
                total_ms: preprocess_ms + generate_ms,
                tokens,
            });
        }
        text = out.text;
    }
    let median = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    Ok(BenchReport {
        model: model_dir.to_path_buf(),
        image: image.to_path_buf(),
        weights_bytes,
        peak_rss_bytes: memory("VmHWM"),
        rss_after_load_bytes,
        load_ms,
        preprocess_ms: median(|s| s.preprocess_ms),
        encode_ms: median(|s| s.encode_ms),
        first_token_ms: median(|s| s.first_token_ms),
        decode_ms_per_token: median(|s| s.decode_ms_per_token),
        total_ms: median(|s| s.total_ms),
        tokens_generated: median(|s| s.tokens as f64) as usize,
        threads: options.open.threads.max(1),
        runs: samples.len(),
        text,
    })
}

/// Where one stage's time goes, from tract's per-node timings.
#[derive(Debug, Clone, PartialEq)]
pub struct StageProfile {
    /// Milliseconds per operator (summed over its nodes), largest first.
    pub by_op: Vec<(String, f64)>,
    /// Milliseconds of the slowest nodes, by node name, slowest first.
    pub slowest: Vec<(String, f64)>,
}

impl StageProfile {
    fn new(times: Vec<crate::model::graph::NodeTime>) -> StageProfile {
        let mut by_op: Vec<(String, f64)> = Vec::new();
        for t in &times {
            match by_op.iter_mut().find(|(op, _)| *op == t.op) {
                Some((_, ms)) => *ms += t.seconds * 1000.0,
                None => by_op.push((t.op.clone(), t.seconds * 1000.0)),
            }
        }
        by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut slowest: Vec<(String, f64)> = times
            .into_iter()
            .map(|t| (t.node, t.seconds * 1000.0))
            .collect();
        slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
        slowest.truncate(SLOWEST_NODES);
        StageProfile { by_op, slowest }
    }

    pub fn total_ms(&self) -> f64 {
        self.by_op.iter().map(|(_, ms)| ms).sum()
    }
}

/// How many of the slowest nodes a [`StageProfile`] keeps.
const SLOWEST_NODES: usize = 10;

/// Where the time goes in the encoder and in one decoder step.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The first image stage (the encoder, or the visual tokenizer) on the bench image.
    pub encoder: StageProfile,
    /// One decoder step after the first (one new token against the cache), for as many rows as
    /// the options' `num_beams`: what one step of beam search runs.
    pub decoder_step: StageProfile,
}

/// Profiles the encoder and one decoder step of `model` on `image`.
pub fn profile(model: &Model, image: &Rgb8, options: &BenchOptions) -> Result<Profile> {
    let pixels = model.preprocess(image, options.resolution)?;
    let encoder = StageProfile::new(model.graphs().encoder.profile(&pixels.item(0))?);
    let (prompt, _) = model.prepare(&options.generate)?;
    let states = model.encode(&pixels.item(0))?;
    let mut session = model.graphs().decoder.session(states);
    let logits = session.step(&[&prompt])?;
    let mut tokens = prompt.clone();
    tokens.push(crate::decode::greedy::argmax(logits.row(0)));
    // Beam search expands the one row after the first step, as here.
    let rows = options.generate.generation.num_beams.unwrap_or(1).max(1);
    session.reorder(&vec![0; rows])?;
    let decoder_step = StageProfile::new(session.profile_step(&vec![tokens.as_slice(); rows])?);
    Ok(Profile {
        encoder,
        decoder_step,
    })
}

/// How a matrix product is computed, for [`matmul_throughput`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatMulKind {
    /// `MatMul` of f32 activations by f32 weights, on glance's f32 kernel (where this CPU
    /// runs it, see `model::matmul::claims`) or tract's.
    F32 { glance: bool },
    /// What a dynamically quantized export runs: `DynamicQuantizeLinear` of the f32
    /// activations, `MatMulInteger` by int8 weights, and the rescale back to f32; the integer
    /// product on the given kernels.
    Int8(Integers),
}

/// The throughput tract (or, for `Int8(Integers::Glance)` and `F32 { glance: true }`, glance's
/// kernel) reaches on
/// one matrix product `[m, k] x [k, n]` (activations by constant weights, as in a transformer
/// layer), through the same loading path as a model: GFLOP/s, counting a multiply-add as two
/// operations. The median of `runs` after one warm-up.
pub fn matmul_throughput(
    kind: MatMulKind,
    (m, k, n): (usize, usize, usize),
    threads: usize,
    runs: usize,
) -> Result<f64> {
    use crate::model::graph::{Graph, Shapes};
    use tract_onnx::pb::{
        tensor_proto::DataType, type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
        TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    };
    use tract_onnx::prelude::Tensor;

    let value = |name: &str, dims: &[usize]| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| tract_onnx::pb::tensor_shape_proto::Dimension {
                            value: Some(
                                tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(
                                    d as i64,
                                ),
                            ),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], outputs: &[&str]| NodeProto {
        op_type: op.into(),
        name: outputs[0].into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    // Weights with some spread, so no kernel can take a shortcut on zeros.
    let weight = |i: usize| ((i * 7919) % 255) as i64 - 127;
    let (nodes, initializers) = match kind {
        MatMulKind::F32 { .. } => (
            vec![node("MatMul", &["x", "w"], &["y"])],
            vec![TensorProto {
                name: "w".into(),
                dims: vec![k as i64, n as i64],
                data_type: DataType::Float as i32,
                raw_data: (0..k * n)
                    .flat_map(|i| (weight(i) as f32 / 127.0).to_le_bytes())
                    .collect(),
                ..Default::default()
            }],
        ),
        MatMulKind::Int8(_) => (
            vec![
                node("DynamicQuantizeLinear", &["x"], &["xq", "xs", "xz"]),
                node("MatMulInteger", &["xq", "w", "xz", "wz"], &["acc"]),
                {
                    let mut cast = node("Cast", &["acc"], &["accf"]);
                    cast.attribute.push(tract_onnx::pb::AttributeProto {
                        name: "to".into(),
                        i: DataType::Float as i64,
                        r#type: tract_onnx::pb::attribute_proto::AttributeType::Int as i32,
                        ..Default::default()
                    });
                    cast
                },
                node("Mul", &["xs", "ws"], &["scale"]),
                node("Mul", &["accf", "scale"], &["y"]),
            ],
            vec![
                TensorProto {
                    name: "w".into(),
                    dims: vec![k as i64, n as i64],
                    data_type: DataType::Int8 as i32,
                    raw_data: (0..k * n).map(|i| weight(i) as i8 as u8).collect(),
                    ..Default::default()
                },
                TensorProto {
                    name: "wz".into(),
                    data_type: DataType::Int8 as i32,
                    raw_data: vec![0],
                    ..Default::default()
                },
                TensorProto {
                    name: "ws".into(),
                    data_type: DataType::Float as i32,
                    raw_data: (1.0f32 / 127.0).to_le_bytes().to_vec(),
                    ..Default::default()
                },
            ],
        ),
    };
    let mut proto = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "matmul".into(),
            node: nodes,
            initializer: initializers,
            input: vec![value("x", &[m, k])],
            output: vec![value("y", &[m, n])],
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Some(graph) = proto.graph.as_mut() {
        match kind {
            MatMulKind::Int8(integers) => {
                integers.prepare(graph, &|t| Ok(std::borrow::Cow::Borrowed(&t.raw_data[..])))?
            }
            MatMulKind::F32 { glance: true } if crate::model::matmul::claims() => {
                crate::model::matmul::claim(graph);
            }
            MatMulKind::F32 { .. } => {}
        }
    }
    let label = PathBuf::from(format!("<{kind:?} matmul {m}x{k}x{n}>"));
    let graph = Graph::prepare(&label, &proto, &Shapes::default(), threads)?;
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i % 97) as f32 - 48.0) / 48.0)
        .collect();
    let x = Tensor::from_shape(&[m, k], &x).map_err(|e| crate::Error::graph(&label, e))?;
    let mut seconds = Vec::with_capacity(runs);
    for run in 0..=runs.max(1) {
        let start = Instant::now();
        graph.run(|_| Ok(x.clone()))?;
        if run > 0 {
            seconds.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * (m * k * n) as f64 / median(seconds) / 1e9)
}

struct Sample {
    preprocess_ms: f64,
    encode_ms: f64,
    first_token_ms: f64,
    decode_ms_per_token: f64,
    total_ms: f64,
    tokens: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A memory figure of this process from `/proc/self/status` (`VmHWM`: peak resident set;
/// `VmRSS`: current), in bytes. `None` where the kernel does not provide it.
pub fn memory(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn matmul_throughput_runs_every_kind() {
        let int8 = [Integers::Tract, Integers::Glance, Integers::F32].map(MatMulKind::Int8);
        let f32 = [false, true].map(|glance| MatMulKind::F32 { glance });
        for kind in f32.into_iter().chain(int8) {
            let gflops = matmul_throughput(kind, (8, 32, 16), 1, 2).unwrap();
            assert!(gflops > 0.0 && gflops.is_finite());
        }
    }

    #[test]
    fn peak_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let peak = memory("VmHWM").unwrap();
            assert!(peak >= memory("VmRSS").unwrap() / 2 && peak > 0);
        }
    }
}
