//! Shared helpers for the integration tests: fixture paths, temporary model directories in each
//! layout, and the Hugging Face oracle files written by scripts/make_fixtures.py.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use glance::{DecoderForm, Dtype, EarlyStopping, GenerateOptions, GenerationOptions, PixelValues};
use serde_json::Value;

pub const ARCHS: [&str; 3] = ["trocr", "vitgpt2", "donut"];

/// The `glance` binary of this build, quiet below errors. For a cross target the binary goes
/// through the emulator named by `GLANCE_TEST_RUNNER` (set by scripts/arm-run and Cross.toml).
pub fn glance_command() -> Command {
    let exe = env!("CARGO_BIN_EXE_glance");
    let runner = std::env::var("GLANCE_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    let mut c = match words.next() {
        Some(emulator) => {
            let mut c = Command::new(emulator);
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    c.env("RUST_LOG", "error");
    c
}

/// Runs `glance` with `args` to its end.
pub fn run_glance(args: &[&str]) -> Output {
    glance_command().args(args).output().unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The standard output of a run that must have succeeded (its stderr shown if not).
pub fn success_stdout(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// A failing run: nonzero exit, one `glance:` line naming `what`, no panic.
pub fn assert_clean_error(out: &Output, what: &str) {
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("glance: "), "{err}");
    assert!(lines[0].contains(what), "error should name {what}: {err}");
}

/// Greedy search for at most `max_new_tokens` tokens, over the model's other settings.
pub fn greedy(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        generation: GenerationOptions {
            max_new_tokens: Some(max_new_tokens),
            num_beams: Some(1),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Opens a fixture model directory on one thread.
pub fn open_fixture(name: &str) -> glance::Model {
    glance::Model::open(
        &model_fixture(name),
        &glance::OpenOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A JSON list of token ids.
pub fn token_list(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model_fixture(arch: &str) -> PathBuf {
    fixtures().join("models").join(arch)
}

pub fn image(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("glance-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where the graphs of an assembled directory go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Beside the configs.
    Optimum,
    /// Under `onnx/`.
    TransformersJs,
}

const CONFIGS: [&str; 6] = [
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

pub fn link(from: &Path, to: &Path) {
    #[cfg(unix)]
    std::os::unix::fs::symlink(from, to).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(from, to).unwrap();
}

/// A model directory holding only the files of one dtype, decoder form and layout, so that the
/// loader's detection is tested too.
pub fn assemble(arch: &str, dtype: Dtype, form: DecoderForm, layout: Layout) -> TempDir {
    let src = model_fixture(arch);
    let tmp = TempDir::new(&format!(
        "{arch}-{}-{}-{layout:?}",
        dtype.name(),
        form.name()
    ));
    for c in CONFIGS {
        if src.join(c).exists() {
            link(&src.join(c), &tmp.0.join(c));
        }
    }
    let graphs = match layout {
        Layout::Optimum => tmp.0.clone(),
        Layout::TransformersJs => tmp.0.join("onnx"),
    };
    std::fs::create_dir_all(&graphs).unwrap();
    let sfx = dtype.suffix();
    let put = |from: PathBuf, name: &str| link(&from, &graphs.join(format!("{name}{sfx}.onnx")));
    put(
        src.join(format!("encoder_model{sfx}.onnx")),
        "encoder_model",
    );
    match form {
        DecoderForm::Split => {
            put(
                src.join(format!("decoder_model{sfx}.onnx")),
                "decoder_model",
            );
            put(
                src.join(format!("decoder_with_past_model{sfx}.onnx")),
                "decoder_with_past_model",
            );
        }
        DecoderForm::Merged => put(
            src.join(format!("decoder_model_merged{sfx}.onnx")),
            "decoder_model_merged",
        ),
        DecoderForm::NoPast => put(
            src.join("no_past").join(format!("decoder_model{sfx}.onnx")),
            "decoder_model",
        ),
    }
    tmp
}

pub fn oracle(arch: &str) -> Value {
    let path = model_fixture(arch).join("oracle.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The pixel values Hugging Face's processor gave for `image`.
pub fn hf_pixel_values(arch: &str, oracle: &Value, image: &str) -> PixelValues {
    let rel = oracle["pixel_values"][image]["npy"].as_str().unwrap();
    let a = glance::vision::npy::read(&model_fixture(arch).join(rel)).unwrap();
    PixelValues {
        shape: a.shape.as_slice().try_into().unwrap(),
        data: a.data,
    }
}

fn opt_usize(kw: &Value, key: &str) -> Option<usize> {
    kw.get(key).and_then(Value::as_u64).map(|v| v as usize)
}

fn opt_f32(kw: &Value, key: &str) -> Option<f32> {
    kw.get(key).and_then(Value::as_f64).map(|v| v as f32)
}

/// The options that reproduce one oracle case.
pub fn case_options(case: &Value) -> GenerateOptions {
    let use_gc = case["use_generation_config"].as_bool().unwrap_or(false);
    if use_gc {
        return GenerateOptions::default();
    }
    let kw = &case["kwargs"];
    let early_stopping = match kw.get("early_stopping") {
        Some(Value::Bool(true)) => Some(EarlyStopping::True),
        Some(Value::Bool(false)) => Some(EarlyStopping::False),
        Some(Value::String(s)) if s == "never" => Some(EarlyStopping::Never),
        _ => None,
    };
    let ids = |key: &str| -> Option<Vec<u32>> {
        match kw.get(key)? {
            Value::Array(a) => Some(a.iter().map(|v| v.as_u64().unwrap() as u32).collect()),
            v => Some(vec![v.as_u64()? as u32]),
        }
    };
    let bad_words_ids = kw.get("bad_words_ids").map(|v| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|seq| {
                seq.as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect()
    });
    GenerateOptions {
        generation: GenerationOptions {
            max_new_tokens: opt_usize(kw, "max_new_tokens"),
            max_length: opt_usize(kw, "max_length"),
            min_new_tokens: opt_usize(kw, "min_new_tokens"),
            num_beams: opt_usize(kw, "num_beams"),
            num_return_sequences: opt_usize(kw, "num_return_sequences"),
            length_penalty: opt_f32(kw, "length_penalty"),
            early_stopping,
            no_repeat_ngram_size: opt_usize(kw, "no_repeat_ngram_size"),
            repetition_penalty: opt_f32(kw, "repetition_penalty"),
            bad_words_ids,
            forced_eos_token_id: ids("forced_eos_token_id"),
            ..Default::default()
        },
        prompt: kw.get("prompt").and_then(Value::as_str).map(String::from),
        keep_special_tokens: false,
        ignore_model_generation_config: true,
        ..Default::default()
    }
}

/// Hugging Face's sequences without the padding of rows that ended early: everything after the
/// first EOS past the prompt goes.
pub fn strip_padding(seq: &[u32], prompt_len: usize, eos: &[u32]) -> Vec<u32> {
    match seq.iter().skip(prompt_len).position(|t| eos.contains(t)) {
        Some(end) => seq[..prompt_len + end + 1].to_vec(),
        None => seq.to_vec(),
    }
}

pub fn eos_ids(oracle: &Value) -> Vec<u32> {
    match &oracle["eos_token_id"] {
        Value::Array(a) => a.iter().map(|v| v.as_u64().unwrap() as u32).collect(),
        v => vec![v.as_u64().unwrap() as u32],
    }
}

pub fn sequences(case: &Value) -> Vec<Vec<u32>> {
    case["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}
