//! Where the files of a model directory are: the one place that knows Optimum's and
//! transformers.js's file names and dtype suffixes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

/// The weight format of a set of graph files, chosen by file-name suffix (transformers.js
/// `DEFAULT_DTYPE_SUFFIX_MAPPING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    Fp32,
    Fp16,
    /// onnxruntime dynamic quantization (`_quantized`).
    Q8,
    Int8,
    Uint8,
    Q4,
}

impl Dtype {
    pub const ALL: [Dtype; 6] = [
        Dtype::Fp32,
        Dtype::Fp16,
        Dtype::Q8,
        Dtype::Int8,
        Dtype::Uint8,
        Dtype::Q4,
    ];
    /// Which dtype to use when none is asked for and fp32 files are absent.
    const FALLBACK_ORDER: [Dtype; 6] = [
        Dtype::Fp32,
        Dtype::Q8,
        Dtype::Int8,
        Dtype::Uint8,
        Dtype::Fp16,
        Dtype::Q4,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            Dtype::Fp32 => "",
            Dtype::Fp16 => "_fp16",
            Dtype::Q8 => "_quantized",
            Dtype::Int8 => "_int8",
            Dtype::Uint8 => "_uint8",
            Dtype::Q4 => "_q4",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::Fp32 => "fp32",
            Dtype::Fp16 => "fp16",
            Dtype::Q8 => "q8",
            Dtype::Int8 => "int8",
            Dtype::Uint8 => "uint8",
            Dtype::Q4 => "q4",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Dtype> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                Error::Option(format!(
                    "unknown dtype \"{s}\" (expected fp32, fp16, q8, int8, uint8 or q4)"
                ))
            })
    }
}

/// How the decoder is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderForm {
    /// `decoder_model` for the first step, `decoder_with_past_model` for the others.
    Split,
    /// `decoder_model_merged` alone (both branches behind an `If`).
    Merged,
    /// `decoder_model` alone, without a KV cache: every step recomputes the whole prefix.
    NoPast,
}

impl DecoderForm {
    pub fn name(self) -> &'static str {
        match self {
            DecoderForm::Split => "split",
            DecoderForm::Merged => "merged",
            DecoderForm::NoPast => "no-past",
        }
    }
}

impl FromStr for DecoderForm {
    type Err = Error;
    fn from_str(s: &str) -> Result<DecoderForm> {
        [DecoderForm::Split, DecoderForm::Merged, DecoderForm::NoPast]
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                Error::Option(format!(
                    "unknown decoder form \"{s}\" (expected split, merged or no-past)"
                ))
            })
    }
}

/// The graph files of one model, all of one dtype.
#[derive(Debug, Clone)]
pub struct GraphFiles {
    pub dtype: Dtype,
    /// Where the graphs were found: the model directory (Optimum) or its `onnx/` folder
    /// (transformers.js).
    pub folder: PathBuf,
    /// A visual tokenizer in front of the encoder (`visual_tokenizer.onnx`), if the model has one.
    pub visual_tokenizer: Option<PathBuf>,
    pub encoder: PathBuf,
    pub decoder: DecoderFiles,
}

impl GraphFiles {
    /// Every graph file the model runs.
    pub fn paths(&self) -> Vec<&Path> {
        let mut paths: Vec<&Path> = self.visual_tokenizer.iter().map(PathBuf::as_path).collect();
        paths.push(&self.encoder);
        paths.extend(self.decoder.paths());
        paths
    }
}

#[derive(Debug, Clone)]
pub enum DecoderFiles {
    Split { first: PathBuf, with_past: PathBuf },
    Merged(PathBuf),
    NoPast(PathBuf),
}

impl DecoderFiles {
    pub fn form(&self) -> DecoderForm {
        match self {
            DecoderFiles::Split { .. } => DecoderForm::Split,
            DecoderFiles::Merged(_) => DecoderForm::Merged,
            DecoderFiles::NoPast(_) => DecoderForm::NoPast,
        }
    }

    pub fn paths(&self) -> Vec<&Path> {
        match self {
            DecoderFiles::Split { first, with_past } => vec![first, with_past],
            DecoderFiles::Merged(p) | DecoderFiles::NoPast(p) => vec![p],
        }
    }
}

const ENCODER: &str = "encoder_model";
const VISUAL_TOKENIZER: &str = "visual_tokenizer";
const DECODER: &str = "decoder_model";
const DECODER_WITH_PAST: &str = "decoder_with_past_model";
const DECODER_MERGED: &str = "decoder_model_merged";

/// Finds the graphs of `dir`, beside the configs or under `onnx/`.
///
/// `dtype`: `None` picks fp32 when its files are present, else the first complete set in
/// `Dtype::FALLBACK_ORDER`. `form`: `None` prefers split, then merged, then no-past.
pub fn find_graphs(
    dir: &Path,
    dtype: Option<Dtype>,
    form: Option<DecoderForm>,
) -> Result<GraphFiles> {
    let folders: Vec<PathBuf> = [dir.to_path_buf(), dir.join("onnx")]
        .into_iter()
        .filter(|f| f.is_dir())
        .collect();
    let dtypes: Vec<Dtype> = match dtype {
        Some(d) => vec![d],
        None => Dtype::FALLBACK_ORDER.to_vec(),
    };
    for dtype in &dtypes {
        for folder in &folders {
            if let Some(files) = graphs_in(folder, *dtype, form) {
                return Ok(files);
            }
        }
    }
    Err(Error::layout(dir, missing_message(&folders, dtype, form)))
}

fn graphs_in(folder: &Path, dtype: Dtype, form: Option<DecoderForm>) -> Option<GraphFiles> {
    let file = |stem: &str| {
        let p = folder.join(format!("{stem}{}.onnx", dtype.suffix()));
        p.is_file().then_some(p)
    };
    let encoder = file(ENCODER)?;
    let split = || {
        Some(DecoderFiles::Split {
            first: file(DECODER)?,
            with_past: file(DECODER_WITH_PAST)?,
        })
    };
    let merged = || file(DECODER_MERGED).map(DecoderFiles::Merged);
    let no_past = || file(DECODER).map(DecoderFiles::NoPast);
    let decoder = match form {
        Some(DecoderForm::Split) => split(),
        Some(DecoderForm::Merged) => merged(),
        Some(DecoderForm::NoPast) => no_past(),
        None => split().or_else(merged).or_else(no_past),
    }?;
    // A small convolutional tokenizer is often left unquantized: fall back to the fp32 file.
    let visual_tokenizer = file(VISUAL_TOKENIZER).or_else(|| {
        let p = folder.join(format!("{VISUAL_TOKENIZER}.onnx"));
        p.is_file().then_some(p)
    });
    Some(GraphFiles {
        dtype,
        folder: folder.to_path_buf(),
        visual_tokenizer,
        encoder,
        decoder,
    })
}

/// Says what was looked for, so that a user can see which file is missing.
fn missing_message(folders: &[PathBuf], dtype: Option<Dtype>, form: Option<DecoderForm>) -> String {
    let suffix = dtype.map_or("", |d| d.suffix());
    let decoders = match form {
        Some(DecoderForm::Split) => {
            format!("{DECODER}{suffix}.onnx and {DECODER_WITH_PAST}{suffix}.onnx")
        }
        Some(DecoderForm::Merged) => format!("{DECODER_MERGED}{suffix}.onnx"),
        _ => format!("{DECODER}{suffix}.onnx or {DECODER_MERGED}{suffix}.onnx"),
    };
    let what = format!("{ENCODER}{suffix}.onnx and {decoders}");
    let dtype_note = match dtype {
        Some(d) => format!(" for dtype {d}"),
        None => String::new(),
    };
    if folders.is_empty() {
        return "not a directory".to_string();
    }
    let found: Vec<String> = folders
        .iter()
        .flat_map(|f| std::fs::read_dir(f).into_iter().flatten().flatten())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .filter(|n| n.ends_with(".onnx"))
                .map(String::from)
        })
        .collect();
    let found = if found.is_empty() {
        "no .onnx files".to_string()
    } else {
        format!("found only {}", found.join(", "))
    };
    format!("no complete set of graphs{dtype_note}: expected {what} here or under onnx/; {found}")
}
