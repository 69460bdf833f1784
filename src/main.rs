//! The `glance` command line: a thin layer over the library.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use glance::vision::npy;
use glance::{
    inputs, Compute, DecoderForm, Dtype, EarlyStopping, Error, GenerateOptions, GenerationOptions,
    Model, OpenOptions, PageMode, PixelValues, Resolution, Rgb8, Size,
};

#[derive(Parser)]
#[command(
    name = "glance",
    version,
    about = "Read an image, write text: Hugging Face vision encoder-decoder models on a CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for each image.
    Run(Box<RunArgs>),
    /// Read the text of document pages or text lines (OCR), with the model in models/ by default.
    Ocr(Box<OcrArgs>),
    /// Describe images (captioning models).
    Caption(Box<CaptionArgs>),
    /// Measure load time, peak memory, and the time of each stage on one image (medians).
    Bench(Box<BenchArgs>),
    /// Measure tract's f32 and int8 matrix-product throughput on this machine (GFLOP/s), the
    /// limit each stage of a model is compared with.
    Matmul {
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Shapes MxKxN to measure (default: a ViT layer, a decoder step, an LM head, 512^3).
        #[arg(long, value_delimiter = ',')]
        shapes: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print the grid of visual-word ids a discrete visual tokenizer gives each image, as JSON.
    Tokenize(Box<TokenizeArgs>),
    /// Show what glance finds in a model directory: layout, graphs, inputs and outputs.
    Inspect {
        /// The model directory.
        dir: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
}

#[derive(Args)]
struct ModelArgs {
    /// Graph files to use: fp32, fp16, q8, int8, uint8 or q4 (default: fp32 when present).
    #[arg(long)]
    dtype: Option<Dtype>,
    /// Decoder export to use when several are present: split, merged or no-past.
    #[arg(long)]
    decoder: Option<DecoderForm>,
    /// Threads for matrix products (default: the CPUs available).
    #[arg(long)]
    threads: Option<usize>,
    /// Arithmetic for quantized and fp16 graphs: auto (integer kernels where this CPU runs them
    /// fast, else f32), f32, int8, or f16 (keep fp16 files in f16).
    #[arg(long, default_value = "auto")]
    compute: Compute,
    /// The largest image glance decodes, in pixels (default 100000000); larger files are
    /// refused from their header, before any pixel is allocated.
    #[arg(long, value_name = "N")]
    max_pixels: Option<u64>,
}

impl ModelArgs {
    fn options(&self) -> OpenOptions {
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        OpenOptions {
            dtype: self.dtype,
            decoder: self.decoder,
            threads,
            compute: self.compute,
            max_image_pixels: self.max_pixels,
        }
    }
}

/// The generation flags of every command that generates text.
#[derive(Args)]
struct DecodeArgs {
    /// Beams for beam search (1: greedy).
    #[arg(long)]
    num_beams: Option<usize>,
    /// At most this many new tokens.
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// At least this many new tokens (EOS suppressed until then); with --max-new-tokens N,
    /// exactly N, as benchmarks want.
    #[arg(long)]
    min_new_tokens: Option<usize>,
}

impl DecodeArgs {
    fn generation(&self) -> GenerationOptions {
        GenerationOptions {
            num_beams: self.num_beams,
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            ..Default::default()
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// The model directory (Optimum layout, or transformers.js with graphs under onnx/).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    model_args: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Total length limit, decoder prompt included.
    #[arg(long)]
    max_length: Option<usize>,
    #[arg(long)]
    length_penalty: Option<f32>,
    /// true, false or never.
    #[arg(long)]
    early_stopping: Option<EarlyStopping>,
    #[arg(long)]
    no_repeat_ngram_size: Option<usize>,
    #[arg(long)]
    repetition_penalty: Option<f32>,
    #[arg(long)]
    num_return_sequences: Option<usize>,
    /// Token sequences never to generate, as JSON: [[12], [40, 41]].
    #[arg(long, value_parser = parse_token_lists)]
    bad_words_ids: Option<Vec<Vec<u32>>>,
    /// Token forced as the last one when the length limit is reached.
    #[arg(long)]
    forced_eos_token_id: Option<u32>,
    /// Keep special tokens in the text.
    #[arg(long)]
    keep_special_tokens: bool,
    /// Use Hugging Face's library defaults instead of the model's generation_config.json
    /// (special token ids still come from the model).
    #[arg(long)]
    ignore_generation_config: bool,
    /// Text the decoder starts from (a Donut task prompt such as <s_cord-v2>).
    #[arg(long)]
    prompt: Option<String>,
    /// Stop decoding an image after this many milliseconds (the encoder always finishes); the
    /// output is then marked truncated.
    #[arg(long)]
    time_budget_ms: Option<u64>,
    /// One JSON object per line per image.
    #[arg(long)]
    json: bool,
    /// Run from this float32 [batch, 3, H, W] tensor instead of images.
    #[arg(long, conflicts_with = "images")]
    pixel_values: Option<PathBuf>,
    /// Write what preprocessing produced (one image only) to this .npy file.
    #[arg(long)]
    save_pixel_values: Option<PathBuf>,
    #[command(flatten)]
    resolution: ResolutionArgs,
    /// Image files.
    #[arg(required_unless_present = "pixel_values")]
    images: Vec<PathBuf>,
}

/// The input size, for models whose encoder takes several.
#[derive(Args)]
struct ResolutionArgs {
    /// Bring images to exactly HxW pixels, e.g. 64x160 (whole patches; a ViT or DeiT encoder's
    /// position embeddings are resampled for it).
    #[arg(long, value_parser = parse_size, conflicts_with = "keep_aspect")]
    size: Option<Size>,
    /// Keep each image's aspect ratio, as large as the encoder's patch budget allows, padding
    /// the rest.
    #[arg(long)]
    keep_aspect: bool,
}

impl ResolutionArgs {
    fn resolution(&self) -> Resolution {
        match (self.size, self.keep_aspect) {
            (Some(size), _) => Resolution::Exact(size),
            (None, true) => Resolution::KeepAspect,
            (None, false) => Resolution::Native,
        }
    }
}

fn parse_size(s: &str) -> Result<Size, String> {
    let parsed = s
        .split_once(['x', 'X'])
        .and_then(|(h, w)| Some((h.trim().parse().ok()?, w.trim().parse().ok()?)));
    match parsed {
        Some((height, width)) => Ok(Size { height, width }),
        None => Err(format!(
            "{s:?} is not a size HEIGHTxWIDTH in pixels, such as 64x160"
        )),
    }
}

/// Where images come from, for `ocr` and `caption`.
#[derive(Args)]
struct InputArgs {
    /// Image files, directories (searched recursively, in sorted order), or - for a stream of
    /// JPEG/PNG frames on stdin (as `rpicam-still -o -` or `ffmpeg -f image2pipe` write).
    images: Vec<PathBuf>,
    /// Process images as they appear in this directory, until interrupted.
    #[arg(long)]
    watch: Option<PathBuf>,
    /// One JSON object per image per line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct OcrArgs {
    /// The OCR model (default: the one shipped in models/).
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    model_args: ModelArgs,
    /// Each image is one text line (no page analysis).
    #[arg(long)]
    line: bool,
    /// Write the image of every line chunk the model reads into this directory (to see what
    /// page mode found).
    #[arg(long)]
    save_chunks: Option<PathBuf>,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Stop reading an image after this many milliseconds (its text is then marked truncated
    /// in --json output; lines not reached are left out).
    #[arg(long)]
    time_budget_ms: Option<u64>,
    #[command(flatten)]
    inputs: InputArgs,
}

#[derive(Args)]
struct CaptionArgs {
    /// A captioning model directory (ViT-GPT2 style).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    model_args: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Stop decoding an image after this many milliseconds (the caption is then marked
    /// truncated in --json output).
    #[arg(long)]
    time_budget_ms: Option<u64>,
    #[command(flatten)]
    resolution: ResolutionArgs,
    #[command(flatten)]
    inputs: InputArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// The model directory.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    model_args: ModelArgs,
    /// Measured runs; the median of each figure is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Unmeasured runs first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[command(flatten)]
    decode: DecodeArgs,
    #[command(flatten)]
    resolution: ResolutionArgs,
    /// One JSON object.
    #[arg(long)]
    json: bool,
    /// Also time every node of the encoder and of one decoder step (tract's profiling), summed
    /// per operator; the step runs `--num-beams` rows, as beam search does.
    #[arg(long)]
    profile: bool,
    /// The image.
    image: PathBuf,
}

#[derive(Args)]
struct TokenizeArgs {
    /// A model directory with a discrete visual tokenizer (visual_tokenizer.onnx and a codebook).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    model_args: ModelArgs,
    #[command(flatten)]
    resolution: ResolutionArgs,
    #[command(flatten)]
    inputs: InputArgs,
}

/// The OCR model that ships with glance: next to the working directory when run from a checkout,
/// else where this binary was built from.
fn default_ocr_model() -> PathBuf {
    let local = PathBuf::from("models/glance-ocr");
    if local.is_dir() {
        return local;
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/glance-ocr"))
}

fn parse_token_lists(s: &str) -> Result<Vec<Vec<u32>>, String> {
    serde_json::from_str(s).map_err(|e| format!("expected JSON like [[12], [40, 41]]: {e}"))
}

impl RunArgs {
    fn generate_options(&self) -> GenerateOptions {
        GenerateOptions {
            generation: GenerationOptions {
                max_length: self.max_length,
                num_return_sequences: self.num_return_sequences,
                length_penalty: self.length_penalty,
                early_stopping: self.early_stopping,
                no_repeat_ngram_size: self.no_repeat_ngram_size,
                repetition_penalty: self.repetition_penalty,
                bad_words_ids: self.bad_words_ids.clone(),
                forced_eos_token_id: self.forced_eos_token_id.map(|t| vec![t]),
                ..self.decode.generation()
            },
            prompt: self.prompt.clone(),
            keep_special_tokens: self.keep_special_tokens,
            ignore_model_generation_config: self.ignore_generation_config,
            time_budget: self.time_budget_ms.map(std::time::Duration::from_millis),
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    // A panic inside tract or the tokenizers crate is caught and reported as an error naming
    // the file: the user sees that one line, not a backtrace as well.
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if glance::error::in_guarded_call() {
            log::debug!("{info}");
        } else {
            report_panic(info)
        }
    }));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(&args),
        Command::Ocr(args) => ocr(&args),
        Command::Caption(args) => caption(&args),
        Command::Tokenize(args) => tokenize(&args),
        Command::Bench(args) => bench(&args),
        Command::Matmul {
            threads,
            runs,
            shapes,
            json,
        } => matmul(threads, runs, &shapes, json),
        Command::Inspect { dir, model } => inspect(&dir, &model.options()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("glance: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Returns Ok(false) when some image failed (each failure is reported as it happens).
fn run(args: &RunArgs) -> Result<bool, Error> {
    let model = Model::open(&args.model, &args.model_args.options())?;
    let options = args.generate_options();
    let mut stdout = std::io::stdout().lock();
    if let Some(path) = &args.pixel_values {
        let pixels = read_pixel_values(path)?;
        let outputs = model.generate(&pixels, &options)?;
        for out in &outputs {
            print_output(&mut stdout, args, &path.display().to_string(), out, 0.0)?;
        }
        return Ok(true);
    }
    if args.save_pixel_values.is_some() && args.images.len() != 1 {
        return Err(Error::Option(
            "--save-pixel-values takes exactly one image".into(),
        ));
    }
    let resolution = args.resolution.resolution();
    let mut all_ok = true;
    for image in &args.images {
        let start = Instant::now();
        let result = model.load_image_at(image, resolution).and_then(|pixels| {
            if let Some(path) = &args.save_pixel_values {
                npy::write(path, &pixels.shape, &pixels.data)?;
            }
            let preprocess_ms = start.elapsed().as_secs_f64() * 1000.0;
            let out = model.generate(&pixels, &options)?.remove(0);
            print_output(
                &mut stdout,
                args,
                &image.display().to_string(),
                &out,
                preprocess_ms,
            )
        });
        if let Err(e) = result {
            eprintln!("glance: {e}");
            all_ok = false;
        }
    }
    Ok(all_ok)
}

fn ocr(args: &OcrArgs) -> Result<bool, Error> {
    let dir = args.model.clone().unwrap_or_else(default_ocr_model);
    let model = Model::open(&dir, &args.model_args.options())?;
    let options = GenerateOptions {
        generation: args.decode.generation(),
        time_budget: args.time_budget_ms.map(std::time::Duration::from_millis),
        ..Default::default()
    };
    let mode = if args.line {
        PageMode::Line
    } else {
        PageMode::Page
    };
    for_each_input(&args.inputs, model.max_image_pixels(), |name, image| {
        if let Some(dir) = &args.save_chunks {
            save_chunks(&model, dir, name, image, mode)?;
        }
        let page = model.read_page(image, &options, mode)?;
        Ok(if args.inputs.json {
            let lines: Vec<serde_json::Value> = page
                .lines
                .iter()
                .map(|l| json!({"text": l.text, "box": [l.bbox.x, l.bbox.y, l.bbox.width, l.bbox.height], "score": l.score}))
                .collect();
            json!({"image": name, "text": page.text, "lines": lines, "truncated": page.truncated, "timings_ms": page.timings.to_json()}).to_string()
        } else {
            page.text
        })
    })
}

fn save_chunks(
    model: &Model,
    dir: &Path,
    name: &str,
    image: &Rgb8,
    mode: PageMode,
) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let stem = Path::new(name)
        .file_stem()
        .map_or("image".into(), |s| s.to_string_lossy().into_owned());
    for (i, chunk) in model.page_layout(image, mode).1.iter().enumerate() {
        let path = dir.join(format!("{stem}-{i:03}.png"));
        image::save_buffer(
            &path,
            &chunk.data,
            chunk.width as u32,
            chunk.height as u32,
            image::ColorType::Rgb8,
        )
        .map_err(|e| Error::Image {
            path: path.clone(),
            msg: e.to_string(),
        })?;
    }
    Ok(())
}

fn caption(args: &CaptionArgs) -> Result<bool, Error> {
    let model = Model::open(&args.model, &args.model_args.options())?;
    let resolution = args.resolution.resolution();
    let options = GenerateOptions {
        generation: args.decode.generation(),
        time_budget: args.time_budget_ms.map(std::time::Duration::from_millis),
        ..Default::default()
    };
    for_each_input(&args.inputs, model.max_image_pixels(), |name, image| {
        let start = Instant::now();
        let pixels = model.preprocess(image, resolution)?;
        let preprocess_ms = start.elapsed().as_secs_f64() * 1000.0;
        let out = model.generate(&pixels, &options)?.remove(0);
        let text = out.text.trim().to_string();
        Ok(if args.inputs.json {
            let mut obj = glance::Output {
                timings: glance::Timings {
                    preprocess_ms,
                    ..out.timings
                },
                ..out
            }
            .to_json();
            obj["image"] = json!(name);
            obj["text"] = json!(text);
            obj.to_string()
        } else {
            text
        })
    })
}

fn bench(args: &BenchArgs) -> Result<bool, Error> {
    let options = glance::bench::BenchOptions {
        open: args.model_args.options(),
        generate: GenerateOptions {
            generation: args.decode.generation(),
            ..Default::default()
        },
        resolution: args.resolution.resolution(),
        runs: args.runs,
        warmup: args.warmup,
    };
    let r = glance::bench::measure(&args.model, &args.image, &options)?;
    let profile = if args.profile {
        let model = Model::open(&args.model, &options.open)?;
        Some(glance::bench::profile(
            &model,
            &Rgb8::open_within(&args.image, model.max_image_pixels())?,
            &options,
        )?)
    } else {
        None
    };
    let stage = |s: &glance::bench::StageProfile| {
        json!({
            "by_op": s.by_op.iter().map(|(op, ms)| json!({"op": op, "ms": ms})).collect::<Vec<_>>(),
            "slowest_nodes": s.slowest.iter().map(|(node, ms)| json!({"node": node, "ms": ms})).collect::<Vec<_>>(),
        })
    };
    let mut text = if args.json {
        json!({
            "model": r.model, "image": r.image, "weights_bytes": r.weights_bytes,
            "peak_rss_bytes": r.peak_rss_bytes, "rss_after_load_bytes": r.rss_after_load_bytes,
            "load_ms": r.load_ms, "preprocess_ms": r.preprocess_ms, "encode_ms": r.encode_ms,
            "first_token_ms": r.first_token_ms, "decode_ms_per_token": r.decode_ms_per_token,
            "total_ms": r.total_ms, "tokens_generated": r.tokens_generated, "threads": r.threads,
            "runs": r.runs, "text": r.text,
            "profile": profile.as_ref().map(|p| json!({
                "encoder": stage(&p.encoder), "decoder_step": stage(&p.decoder_step),
            })),
        })
        .to_string()
    } else {
        let mb =
            |b: Option<u64>| b.map_or("?".to_string(), |b| format!("{:.1} MB", b as f64 / 1e6));
        format!(
            "model          {}\nweights        {}\npeak RSS       {} (after load {})\nload           {:.1} ms\npreprocess     {:.1} ms\nencode         {:.1} ms\nfirst token    {:.1} ms\ndecode         {:.2} ms/token\ntotal          {:.1} ms ({} tokens, {} threads, median of {} runs)\ntext           {}",
            r.model.display(),
            mb(Some(r.weights_bytes)),
            mb(r.peak_rss_bytes),
            mb(r.rss_after_load_bytes),
            r.load_ms,
            r.preprocess_ms,
            r.encode_ms,
            r.first_token_ms,
            r.decode_ms_per_token,
            r.total_ms,
            r.tokens_generated,
            r.threads,
            r.runs,
            r.text.trim()
        )
    };
    if let (Some(p), false) = (&profile, args.json) {
        for (name, stage) in [("encoder", &p.encoder), ("decoder step", &p.decoder_step)] {
            let total = stage.total_ms();
            text.push_str(&format!("\n\n{name}: {total:.1} ms in tract nodes"));
            for (op, ms) in stage.by_op.iter().take(12) {
                text.push_str(&format!(
                    "\n  {:>9.2} ms {:>5.1}%  {op}",
                    ms,
                    100.0 * ms / total.max(1e-9)
                ));
            }
            text.push_str("\n  slowest nodes:");
            for (node, ms) in &stage.slowest {
                text.push_str(&format!("\n  {ms:>9.2} ms  {node}"));
            }
        }
    }
    writeln!(std::io::stdout(), "{text}").map_err(stdout_error)?;
    Ok(true)
}

fn matmul(threads: usize, runs: usize, shapes: &[String], json: bool) -> Result<bool, Error> {
    use glance::bench::{matmul_throughput, MatMulKind};
    use glance::model::compute::Integers;
    let defaults = ["577x384x1536", "1x256x1024", "1x256x64044", "512x512x512"];
    let shapes: Vec<&str> = if shapes.is_empty() {
        defaults.to_vec()
    } else {
        shapes.iter().map(String::as_str).collect()
    };
    let shapes = shapes
        .into_iter()
        .map(matmul_shape)
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = std::io::stdout().lock();
    let io = stdout_error;
    if !json {
        writeln!(
            out,
            "| m x k x n | f32 GFLOP/s, tract | f32 GFLOP/s, glance | int8 GOP/s, tract | \
             int8 GOP/s, glance | threads |"
        )
        .map_err(io)?;
        writeln!(out, "|---|---|---|---|---|---|").map_err(io)?;
    }
    // glance's kernels only where they run (x86 with AVX2); elsewhere tract's are the ones used.
    let ours = Compute::Int8.integers() == Integers::Glance;
    let ours_f32 = glance::model::matmul::claims();
    let cell = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    for (m, k, n) in shapes {
        let f32 = matmul_throughput(MatMulKind::F32 { glance: false }, (m, k, n), threads, runs)?;
        let f32_glance = ours_f32
            .then(|| matmul_throughput(MatMulKind::F32 { glance: true }, (m, k, n), threads, runs))
            .transpose()?;
        let tract = matmul_throughput(MatMulKind::Int8(Integers::Tract), (m, k, n), threads, runs)?;
        let glance = ours
            .then(|| {
                matmul_throughput(MatMulKind::Int8(Integers::Glance), (m, k, n), threads, runs)
            })
            .transpose()?;
        if json {
            let row = json!({"m": m, "k": k, "n": n, "threads": threads, "f32_gflops": f32,
                "f32_glance_gflops": f32_glance, "int8_gops": tract, "int8_glance_gops": glance});
            writeln!(out, "{row}").map_err(io)?;
        } else {
            let (f32_glance, glance) = (cell(f32_glance), cell(glance));
            writeln!(
                out,
                "| {m} x {k} x {n} | {f32:.1} | {f32_glance} | {tract:.1} | {glance} | {threads} |"
            )
            .map_err(io)?;
        }
    }
    Ok(true)
}

/// `MxKxN`, of a size this machine can hold: each matrix at most 2^28 f32 (1 GiB), at most
/// 2^34 multiply-adds.
fn matmul_shape(shape: &str) -> Result<(usize, usize, usize), Error> {
    let dims: Vec<usize> = shape.split('x').filter_map(|d| d.parse().ok()).collect();
    let [m, k, n] = dims[..] else {
        return Err(Error::Option(format!(
            "--shapes: {shape:?} is not MxKxN, such as 577x384x1536"
        )));
    };
    // In u128: products of three usizes overflow anything smaller, and a 32-bit board's
    // usize long before these limits.
    let (m2, k2, n2) = (m as u128, k as u128, n as u128);
    let fits = |elements: u128| elements <= 1 << 28;
    let multiply_adds = m2 * k2 * n2;
    if multiply_adds == 0
        || multiply_adds > 1 << 34
        || !fits(m2 * k2)
        || !fits(k2 * n2)
        || !fits(m2 * n2)
    {
        return Err(Error::Option(format!(
            "--shapes: {shape} is empty or too large (at most 2^28 entries per matrix, 2^34 multiply-adds)"
        )));
    }
    Ok((m, k, n))
}

fn tokenize(args: &TokenizeArgs) -> Result<bool, Error> {
    let model = Model::open(&args.model, &args.model_args.options())?;
    let resolution = args.resolution.resolution();
    for_each_input(&args.inputs, model.max_image_pixels(), |name, image| {
        let pixels = model.preprocess(image, resolution)?;
        let grid = model.tokenize(&pixels)?.remove(0);
        let rows: Vec<&[i64]> = grid.ids.chunks(grid.cols.max(1)).collect();
        Ok(json!({"image": name, "grid": [grid.rows, grid.cols], "ids": rows}).to_string())
    })
}

/// Runs `work` on every input image and prints its line; an image that fails is reported and
/// the others still run. Returns whether all succeeded.
fn for_each_input(
    args: &InputArgs,
    max_pixels: u64,
    mut work: impl FnMut(&str, &Rgb8) -> Result<String, Error>,
) -> Result<bool, Error> {
    if args.images.is_empty() && args.watch.is_none() {
        return Err(Error::Option(
            "no images given (files, directories, - for stdin, or --watch DIR)".into(),
        ));
    }
    let files: Vec<PathBuf> = inputs::expand(
        &args
            .images
            .iter()
            .filter(|p| p.as_os_str() != "-")
            .cloned()
            .collect::<Vec<_>>(),
    )?;
    let stdin = args.images.iter().any(|p| p.as_os_str() == "-");
    let total = files.len();
    let progress = std::io::stderr().is_terminal() && total > 1;
    let mut sources: Box<dyn Iterator<Item = inputs::Input>> =
        Box::new(files.into_iter().map(|p| inputs::read_file(&p)));
    if stdin {
        sources = Box::new(sources.chain(inputs::frames(std::io::stdin().lock())));
    }
    if let Some(dir) = &args.watch {
        sources =
            Box::new(sources.chain(inputs::watch(dir, std::time::Duration::from_millis(300))));
    }
    let mut all_ok = true;
    let mut stdout = std::io::stdout();
    for (i, input) in sources.enumerate() {
        if progress && i < total {
            eprint!("\r[{}/{total}] {}\x1b[K", i + 1, input.name);
        }
        let result = input
            .bytes
            .and_then(|bytes| Rgb8::decode(&bytes, Path::new(&input.name), max_pixels))
            .and_then(|image| work(&input.name, &image));
        match result {
            Ok(line) => {
                // Flushed line by line: a camera pipeline reads results as they come.
                writeln!(stdout, "{line}")
                    .and_then(|_| stdout.flush())
                    .map_err(stdout_error)?;
            }
            Err(e) => {
                if progress {
                    eprintln!();
                }
                eprintln!("glance: {e}");
                all_ok = false;
            }
        }
    }
    if progress {
        eprintln!();
    }
    Ok(all_ok)
}

fn read_pixel_values(path: &Path) -> Result<PixelValues, Error> {
    let array = npy::read(path)?;
    let shape: [usize; 4] = array
        .shape
        .as_slice()
        .try_into()
        .map_err(|_| Error::Config {
            path: path.to_path_buf(),
            msg: format!("shape {:?} is not [batch, 3, height, width]", array.shape),
        })?;
    Ok(PixelValues {
        shape,
        data: array.data,
    })
}

fn print_output(
    out: &mut impl Write,
    args: &RunArgs,
    image: &str,
    result: &glance::Output,
    preprocess_ms: f64,
) -> Result<(), Error> {
    let line = if args.json {
        let mut obj = glance::Output {
            timings: glance::Timings {
                preprocess_ms,
                ..result.timings
            },
            ..result.clone()
        }
        .to_json();
        obj["image"] = json!(image);
        obj.to_string()
    } else if result.sequences.len() > 1 {
        result
            .sequences
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        result.text.clone()
    };
    writeln!(out, "{line}").map_err(stdout_error)
}

fn inspect(dir: &Path, options: &OpenOptions) -> Result<bool, Error> {
    let model = Model::open(dir, options)?;
    // Written at once, so that a closed pipe (`| head`) is an error value, not a panic.
    let mut out = String::new();
    let files = &model.dir().files;
    out += &format!("model:    {}\n", dir.display());
    out += &format!(
        "layout:   {}\n",
        if files.folder == model.dir().root {
            "Optimum (graphs beside the configs)"
        } else {
            "transformers.js (graphs under onnx/)"
        }
    );
    out += &format!("dtype:    {}\n", files.dtype);
    out += &format!("decoder:  {}\n", files.decoder.form().name());
    out += &format!(
        "encoder:  {}\n",
        if model.dir().encoder_type.is_empty() {
            "?"
        } else {
            &model.dir().encoder_type
        }
    );
    let sizes = match model.graphs().encoder.sizes() {
        glance::InputSizes::Patches { patch, native } => format!(
            "{}x{} native; any grid of {}x{} patches up to {} (position embeddings resampled)",
            native.height,
            native.width,
            patch.height,
            patch.width,
            glance::model::encoder::MAX_PATCHES
        ),
        glance::InputSizes::Multiple { unit } => format!("any multiple of {unit}"),
        glance::InputSizes::Native(Some(s)) => format!("{}x{} only", s.height, s.width),
        glance::InputSizes::Native(None) => "as the graph allows".to_string(),
    };
    out += &format!("sizes:    {sizes}\n");
    if let Some(t) = &files.visual_tokenizer {
        out += &format!("visual tokenizer: {}\n", t.display());
    }
    out += &format!(
        "vocab:    {} (tokenizer: {})\n",
        model.graphs().decoder.vocab_size,
        model.text().vocab_size()
    );
    let graphs = model.graphs();
    let decoder = &graphs.decoder;
    let all = graphs
        .encoder
        .plans()
        .into_iter()
        .chain(decoder.steps.graphs().into_iter().cloned());
    for g in all {
        let size = std::fs::metadata(&g.path).map(|m| m.len()).unwrap_or(0);
        out += &format!("\n{} ({:.1} MB)\n", g.path.display(), size as f64 / 1e6);
        for p in &g.inputs {
            out += &format!("  in   {}\n", p.describe());
        }
        for p in &g.outputs {
            out += &format!("  out  {}\n", p.describe());
        }
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(stdout_error)?;
    Ok(true)
}

/// A failed write to standard output (a closed pipe, a full disk), as an error value.
fn stdout_error(source: std::io::Error) -> Error {
    Error::Io {
        path: "<stdout>".into(),
        source,
    }
}
