//! The bodies of the fuzz targets (`fuzz/`, run by `scripts/fuzz.sh`), kept in the library so
//! that `tests/fuzz_regressions.rs` replays what the fuzzer found through the same code in an
//! ordinary `cargo test`. Each takes arbitrary bytes and must return: errors are fine, a panic,
//! a hang or an unbounded allocation is a bug.
//!
//! They use the TrOCR fixture model of this repository (`tests/fixtures/models/trocr`), found
//! from the crate's source directory: they are for this repository's fuzzing, not for users.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::decode::{GenerationConfig, GenerationOptions};
use crate::model::json::JsonFile;
use crate::vision::image::Rgb8;
use crate::vision::preprocess::{self, ImageProcessor};
use crate::vision::stream::Frames;
use crate::{ffi, Model, OpenOptions};

/// Lets a panic that glance catches go on to become its error. libFuzzer's panic hook aborts
/// at every panic, before unwinding, so a dependency's panic that `error::guarded` turns into
/// an `Error` (tract running a graph, the tokenizers crate reading tokenizer.json) would count
/// as a crash of glance, and stop the run at the first one. Panics outside those calls still
/// abort. Each fuzz target calls it from its `init`.
pub fn tolerate_guarded_panics() {
    let fuzzer_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !crate::error::in_guarded_call() {
            fuzzer_hook(info)
        }
    }));
}

/// The fixture model the targets load pieces of.
pub fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/trocr")
}

/// A directory of this process for the files a target writes.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("glance-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    })
}

/// config.json, generation_config.json and preprocessor_config.json parsing, then resolving the
/// generation settings as `generate()` would.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = JsonFile::parse(Path::new("config.json"), text) else {
        return;
    };
    let _ = ImageProcessor::from_config(&file);
    for options in [
        GenerationOptions::from_json(&file),
        GenerationOptions::from_model_config(&file),
    ]
    .into_iter()
    .flatten()
    {
        let _ = GenerationConfig::resolve(&GenerationOptions::default(), &options, 1, 301);
    }
}

/// tokenizer.json loading, then decoding and encoding a little text.
pub fn tokenizer(data: &[u8]) {
    let dir = scratch().join("tokenizer");
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    std::fs::write(dir.join("tokenizer.json"), data).expect("writing tokenizer.json");
    if let Ok(text) = crate::text::Text::load(&dir) {
        let ids: Vec<u32> = (0..64).collect();
        let _ = text.decode(&ids, true);
        let _ = text.decode(&ids, false);
        let _ = text.encode_prompt("<s_cord-v2> Hello, world 42");
    }
}

/// A model directory whose encoder graph (first byte even) or merged decoder graph (odd) is
/// the rest of the input, opened as `Model::open` does.
pub fn model_dir(data: &[u8]) {
    let Some((&which, graph)) = data.split_first() else {
        return;
    };
    let dir = scratch().join("model");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let fixture = fixture_model();
    for name in [
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "encoder_model.onnx",
        "decoder_model_merged.onnx",
    ] {
        std::fs::copy(fixture.join(name), dir.join(name)).expect("copying the fixture");
    }
    let target = if which % 2 == 0 {
        "encoder_model.onnx"
    } else {
        "decoder_model_merged.onnx"
    };
    std::fs::write(dir.join(target), graph).expect("writing the graph");
    let options = OpenOptions {
        threads: 1,
        ..Default::default()
    };
    let _ = Model::open(&dir, &options);
}

/// Image decoding (any format, at most 4 megapixels) and preprocessing for the fixture model.
pub fn image(data: &[u8]) {
    static PROCESSOR: OnceLock<ImageProcessor> = OnceLock::new();
    let processor =
        PROCESSOR.get_or_init(|| preprocess::load(&fixture_model()).expect("the fixture loads"));
    if let Ok(img) = Rgb8::decode(data, Path::new("fuzz"), 1 << 22) {
        let _ = processor.preprocess(&img);
    }
}

/// Splitting a stream of concatenated JPEG/PNG frames (`glance caption -`).
pub fn frames(data: &[u8]) {
    for frame in Frames::new(data) {
        if frame.is_err() {
            break;
        }
    }
}

/// The C interface's JSON options: the input up to its first NUL byte is `glance_model_open`'s
/// options (for a directory that does not exist: options are read first), the rest
/// `glance_generate_file`'s (for an image that does not exist, with the fixture model).
pub fn ffi_options(data: &[u8]) {
    static MODEL: OnceLock<usize> = OnceLock::new();
    let model = *MODEL.get_or_init(|| {
        let dir = CString::new(fixture_model().to_string_lossy().as_bytes()).expect("a path");
        // SAFETY: a NUL-terminated path and NULL options.
        let m = unsafe { ffi::glance_model_open(dir.as_ptr(), std::ptr::null()) };
        assert!(!m.is_null(), "the fixture model opens");
        m as usize
    });
    let (open, generate) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let generate = generate.split(|&b| b == 0).next().unwrap_or(&[]);
    let open = CString::new(open).expect("no NUL before the first");
    let generate = CString::new(generate).expect("cut at the first NUL");
    let nowhere = c"/nonexistent/glance-fuzz";
    // SAFETY: NUL-terminated strings; the handle is open for the life of the process.
    unsafe {
        let m = ffi::glance_model_open(nowhere.as_ptr(), open.as_ptr());
        if !m.is_null() {
            ffi::glance_model_close(m);
        }
        let out = ffi::glance_generate_file(
            model as *mut ffi::GlanceModel,
            nowhere.as_ptr(),
            generate.as_ptr(),
            None,
            std::ptr::null_mut(),
        );
        if out.is_null() {
            let _ = CStr::from_ptr(ffi::glance_last_error()).to_str();
        } else {
            ffi::glance_string_free(out);
        }
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The targets by name, for scripts and the regression test.
pub const TARGETS: [(&str, Target); 6] = [
    ("config", config),
    ("tokenizer", tokenizer),
    ("model_dir", model_dir),
    ("image", image),
    ("frames", frames),
    ("ffi_options", ffi_options),
];
