//! Token-for-token parity with Hugging Face generate() (fp32) and onnxruntime (q8, uint8, fp16),
//! for the three fixture architectures, three decoder forms and two directory layouts.

mod common;

use common::*;
use glance::{Compute, DecoderForm, Dtype, GenerateOptions, GenerationOptions, Model, OpenOptions};
use serde_json::Value;

const FORMS: [DecoderForm; 3] = [DecoderForm::Split, DecoderForm::Merged, DecoderForm::NoPast];
const LAYOUTS: [Layout; 2] = [Layout::Optimum, Layout::TransformersJs];

fn open(dir: &std::path::Path, dtype: Dtype) -> Model {
    open_with(dir, dtype, Compute::Auto)
}

fn open_with(dir: &std::path::Path, dtype: Dtype, compute: Compute) -> Model {
    Model::open(
        dir,
        &OpenOptions {
            dtype: Some(dtype),
            threads: 1,
            compute,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("opening {}: {e}", dir.display()))
}

/// Runs every Hugging Face case of `arch` in every decoder form and layout; returns
/// (identical, total, failure descriptions).
fn fp32_parity(arch: &str) {
    let oracle = oracle(arch);
    let eos = eos_ids(&oracle);
    let cases = oracle["hf"].as_array().unwrap();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for form in FORMS {
        for layout in LAYOUTS {
            let dir = assemble(arch, Dtype::Fp32, form, layout);
            let model = open(dir.path(), Dtype::Fp32);
            assert_eq!(model.dir().files.decoder.form(), form);
            // What depends on the encoder output alone runs once per image (model::hoist), and
            // glance's kernel reads the cross-attention cache as it is, one row per image
            // (model::attention): BART-family exports take that cache as inputs, GPT-2's
            // cross-attention keys and values are cut out of the step graph into one.
            let step = model.graphs().decoder.steps.every_step();
            let cross: Vec<_> = step
                .inputs
                .iter()
                .filter(|p| p.name.starts_with("past_key_values.") && p.name.contains(".encoder."))
                .collect();
            let per_image = !cross.is_empty()
                && cross
                    .iter()
                    .all(|p| p.dims[0] == glance::model::names::CROSS_ROWS);
            assert_eq!(
                per_image,
                form != DecoderForm::NoPast,
                "{arch} {} {layout:?}: cross-attention cache inputs {cross:?}",
                form.name()
            );
            assert!(
                step.hoisted_values() > 0 || per_image,
                "{arch} {} {layout:?}: nothing hoisted out of {}",
                form.name(),
                step.path.display()
            );
            let mut same = 0;
            for case in cases {
                let name = format!(
                    "{arch} {} {layout:?} {}/{}",
                    form.name(),
                    case["case"].as_str().unwrap(),
                    case["image"].as_str().unwrap()
                );
                let pixels = hf_pixel_values(arch, &oracle, case["image"].as_str().unwrap());
                let options = case_options(case);
                let outputs = match model.generate(&pixels, &options) {
                    Ok(o) => o,
                    Err(e) => {
                        failures.push(format!("{name}: error {e}"));
                        continue;
                    }
                };
                let got: Vec<Vec<u32>> = outputs[0]
                    .sequences
                    .iter()
                    .map(|s| s.tokens.clone())
                    .collect();
                let prompt_len = case["kwargs"]
                    .get("prompt_ids")
                    .and_then(Value::as_array)
                    .map_or(1, |p| p.len());
                let want: Vec<Vec<u32>> = sequences(case)
                    .iter()
                    .map(|s| strip_padding(s, prompt_len, &eos))
                    .collect();
                if got != want {
                    failures.push(format!("{name}: got {got:?}, want {want:?}"));
                    continue;
                }
                let texts: Vec<&str> = case["text"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap())
                    .collect();
                let got_texts: Vec<&str> = outputs[0]
                    .sequences
                    .iter()
                    .map(|s| s.text.as_str())
                    .collect();
                if got_texts != texts {
                    failures.push(format!("{name}: text {got_texts:?}, want {texts:?}"));
                    continue;
                }
                if let Some(scores) = case["sequences_scores"].as_array() {
                    let bad = outputs[0].sequences.iter().zip(scores).any(|(s, w)| {
                        let (g, w) = (s.score.unwrap_or(f32::NAN) as f64, w.as_f64().unwrap());
                        (g - w).abs() > 1e-3 * w.abs().max(1.0)
                    });
                    if bad {
                        let got: Vec<_> = outputs[0].sequences.iter().map(|s| s.score).collect();
                        failures.push(format!("{name}: scores {got:?}, want {scores:?}"));
                        continue;
                    }
                }
                same += 1;
            }
            // ViT and DeiT self-attention runs on glance's kernel (model::attention) on CPUs
            // where it is fast; Donut's Swin windows add a position bias to the scores and stay
            // tract's.
            let encoder_ops: usize = model
                .graphs()
                .encoder
                .plans()
                .iter()
                .map(|g| g.count_ops(glance::model::attention::OP_TYPE))
                .sum();
            assert_eq!(
                encoder_ops > 0,
                arch != "donut" && glance::model::attention::claims_encoders(),
                "{arch} {} {layout:?}: {encoder_ops} self-attentions on glance's kernel",
                form.name()
            );
            report.push(format!(
                "{arch:8} {:8} {layout:?}: {same}/{} identical",
                form.name(),
                cases.len()
            ));
        }
    }
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn trocr_matches_hugging_face() {
    fp32_parity("trocr");
}

#[test]
fn vitgpt2_matches_hugging_face() {
    fp32_parity("vitgpt2");
}

#[test]
fn donut_matches_hugging_face() {
    fp32_parity("donut");
}

/// Quantized and fp16 files, greedy, against two oracles on the same files:
/// - the ONNX reference implementation (`onnx.reference`, the specification's exact integer
///   arithmetic): identical, except at a step where its top-two logits are within float noise;
/// - onnxruntime: identical wherever onnxruntime agrees with the reference. On x86 CPUs without
///   VNNI onnxruntime's uint8 x int8 products saturate (VPMADDUBSW), so its q8 tokens may differ from
///   the specification's; those sequences are reported, not failed.
#[test]
fn quantized_and_fp16_match_the_onnx_reference_and_onnxruntime() {
    const FLOAT_NOISE: f64 = 1e-3;
    let (mut total, mut same_ref, mut same_ort) = (0, 0, 0);
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for arch in ARCHS {
        let oracle = oracle(arch);
        let eos = eos_ids(&oracle);
        for dtype in [Dtype::Q8, Dtype::Uint8, Dtype::Fp16] {
            let records: Vec<&Value> = oracle["ort"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["dtype"] == dtype.name())
                .collect();
            assert!(!records.is_empty(), "{arch} has no {dtype} oracle");
            // The file's own arithmetic (integer products on glance's kernel on x86 with AVX2,
            // on tract's elsewhere; f16), and f32 (what `auto` picks on CPUs with neither).
            let native = if dtype == Dtype::Fp16 {
                Compute::F16
            } else {
                Compute::Int8
            };
            let runs = [
                (DecoderForm::Split, native),
                (DecoderForm::Merged, native),
                (DecoderForm::Merged, Compute::F32),
            ];
            for (form, compute) in runs {
                let dir = assemble(arch, dtype, form, Layout::Optimum);
                let model = open_with(dir.path(), dtype, compute);
                let (mut here_ref, mut here_ort) = (0, 0);
                for r in &records {
                    let image = r["image"].as_str().unwrap();
                    let pixels = hf_pixel_values(arch, &oracle, image);
                    let options = GenerateOptions {
                        generation: GenerationOptions {
                            max_new_tokens: r["max_new_tokens"].as_u64().map(|n| n as usize),
                            ..Default::default()
                        },
                        ignore_model_generation_config: true,
                        ..Default::default()
                    };
                    let got = model.generate(&pixels, &options).unwrap().remove(0).tokens;
                    let reference = strip_padding(&token_list(&r["reference_tokens"]), 1, &eos);
                    let ort = strip_padding(&token_list(&r["tokens"]), 1, &eos);
                    total += 1;
                    let name = format!("{arch} {dtype} {} {compute} {image}", form.name());
                    if got == reference {
                        same_ref += 1;
                        here_ref += 1;
                    } else {
                        let (step, gap) =
                            first_difference(&got, &reference, &r["reference_top2_gap"]);
                        let line = format!("{name}: differs from the reference at token {step}, reference top-2 gap {gap:?}");
                        if gap.is_some_and(|g| g < FLOAT_NOISE) {
                            lines.push(line);
                        } else {
                            failures.push(line);
                        }
                    }
                    if got == ort {
                        same_ort += 1;
                        here_ort += 1;
                    } else {
                        let (step, gap) = first_difference(&got, &ort, &r["top2_gap"]);
                        let line = format!("{name}: differs from onnxruntime at token {step}, onnxruntime top-2 gap {gap:?}");
                        if ort == reference {
                            failures.push(line);
                        } else {
                            lines.push(format!(
                                "{line} (onnxruntime differs from the reference here)"
                            ));
                        }
                    }
                }
                lines.push(format!(
                    "{arch:8} {dtype:5} {:6} {compute:4}: {here_ref}/{n} identical to the reference, {here_ort}/{n} to onnxruntime",
                    form.name(),
                    n = records.len()
                ));
            }
        }
    }
    lines.push(format!(
        "all: {same_ref}/{total} identical to the reference, {same_ort}/{total} to onnxruntime"
    ));
    println!("{}", lines.join("\n"));
    assert!(failures.is_empty(), "differences:\n{}", failures.join("\n"));
}

/// The index of the first differing token, and the oracle's top-two gap when it chose it
/// (`gaps[k]` is the gap for the token after `k + 1` tokens).
fn first_difference(got: &[u32], want: &[u32], gaps: &Value) -> (usize, Option<f64>) {
    let step = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let gap = gaps
        .as_array()
        .and_then(|g| g.get(step.saturating_sub(1)))
        .and_then(Value::as_f64);
    (step, gap)
}

/// A decoder prompt of several tokens (a Donut task prompt with a question, a user's prompt)
/// gives the logits the no-past graph gives for the whole prefix, in every decoder form: the
/// with-past graphs were traced with one new token and apply no causal mask among new tokens.
#[test]
fn prompts_of_several_tokens_decode_as_the_no_past_graph() {
    use tract_onnx::prelude::Tensor;
    for (arch, start) in [("trocr", 2u32), ("vitgpt2", 299), ("donut", 0)] {
        let prompt = [start, 5, 9, 11];
        let mut logits = Vec::new();
        for form in [DecoderForm::NoPast, DecoderForm::Split, DecoderForm::Merged] {
            let dir = assemble(arch, Dtype::Fp32, form, Layout::Optimum);
            let model = open(dir.path(), Dtype::Fp32);
            let graphs = model.graphs();
            let pixels = model.load_image(&image("rgb.png")).unwrap();
            let states: Tensor = graphs.encoder.run(&pixels).unwrap();
            let mut session = graphs.decoder.session(states);
            logits.push((form, session.step(&[&prompt]).unwrap().row(0).to_vec()));
        }
        let reference = &logits[0].1;
        for (form, got) in &logits[1..] {
            let worst = got
                .iter()
                .zip(reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "{arch} {}: logits {worst} off", form.name());
        }
    }
}
