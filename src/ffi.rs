//! The C ABI: open a model, generate text from an image file or an RGB/RGBA buffer, get the
//! result as JSON, close the model. `include/glance.h` is generated from this file by
//! `scripts/gen-header.sh` (cbindgen); the library is built as `libglance.so` and `libglance.a`.
//!
//! Robustness at the boundary:
//! - No panic crosses it: every entry point runs its body under `catch_unwind` (`error::guarded`)
//!   and turns a panic into an error (this needs the default `panic = "unwind"`).
//! - Errors are return values (NULL, or -1) with their text in [`glance_last_error`]; NULL
//!   pointers, strings that are not UTF-8, JSON that does not parse, unknown option keys and
//!   impossible image sizes are errors, not crashes.
//! - A model handle is an opaque id, never a pointer that glance dereferences: ids are not
//!   reused, and every call looks its handle up in a registry of open models, so a closed,
//!   double-closed or made-up handle is an error, not undefined behaviour.
//! - Returned strings are recorded too: [`glance_string_free`] ignores (and reports) a pointer
//!   it did not hand out or already freed.
//!
//! What glance cannot check is memory the caller hands it: a string pointer must be NULL or point
//! to a NUL-terminated string, and a pixel buffer must hold the `len` bytes the caller says.
//!
//! Threads: [`Model`] is `Send + Sync` (asserted below), so one handle may be used from several
//! threads at once; a handle closed while another thread generates with it stays alive until
//! that generation returns.

#![deny(unsafe_op_in_unsafe_fn)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::ptr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{
    EarlyStopping, Error, GenerateOptions, Model, OpenOptions, PixelValues, Resolution, Rgb8, Size,
    Token,
};

// One model may be shared by threads: the C header promises it.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Model>();
};

/// An open model. Opaque: a handle from `glance_model_open`, valid until `glance_model_close`.
///
/// Thread safety: one model may be used from several threads at once (generations run in
/// parallel and share its weights). Closing it while another thread generates with it is safe:
/// the model is freed when that generation returns. Handles are ids that are never reused, so
/// using a closed handle is an error (NULL or -1 and `glance_last_error`), not a crash.
pub struct GlanceModel {
    _opaque: [u8; 0],
}

/// Called with each token as it is chosen: `text` is the text the token adds (UTF-8, `len`
/// bytes, NUL-terminated, valid only during the call; it may be empty when a character spans
/// several tokens), `id` the token id, `user_data` what the caller passed. Return 0 to go on,
/// anything else to stop: generation then ends and the result says `"truncated": true`. With
/// beam search (`num_beams` > 1, which a model's generation_config.json may set) the tokens are
/// only known when the search ends: they are reported then, and a nonzero return only stops the
/// reporting. The callback runs on the calling thread, before the generate call returns.
pub type GlanceTokenCallback = Option<
    unsafe extern "C" fn(text: *const c_char, len: usize, id: u32, user_data: *mut c_void) -> c_int,
>;

/// An error on its way to `glance_last_error`.
struct Failure(String);

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure(e.to_string())
    }
}

impl From<String> for Failure {
    fn from(msg: String) -> Failure {
        Failure(msg)
    }
}

impl From<&str> for Failure {
    fn from(msg: &str) -> Failure {
        Failure(msg.to_string())
    }
}

type Outcome<T> = Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_last_error(msg: &str) {
    let text = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with_borrow_mut(|e| *e = Some(text));
}

/// Runs the body of an entry point: clears the thread's last error, catches a panic, and turns
/// a failure into `fail` with its text kept for [`glance_last_error`].
fn entry<T>(fail: T, body: impl FnOnce() -> Outcome<T>) -> T {
    LAST_ERROR.with_borrow_mut(|e| *e = None);
    match crate::error::guarded(body) {
        Ok(Ok(value)) => value,
        Ok(Err(Failure(msg))) => {
            set_last_error(&msg);
            fail
        }
        Err(what) => {
            set_last_error(&format!("internal error in glance (a panic): {what}"));
            fail
        }
    }
}

/// The open models, by handle id.
struct Registry {
    next: usize,
    open: BTreeMap<usize, Arc<Model>>,
}

static MODELS: Mutex<Registry> = Mutex::new(Registry {
    next: 1,
    open: BTreeMap::new(),
});

/// The addresses of the strings handed out and not yet freed.
static STRINGS: Mutex<BTreeSet<usize>> = Mutex::new(BTreeSet::new());

/// A lock that a panic elsewhere does not make unusable (the registries stay consistent: each
/// change is one insert or remove).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn register(model: Model) -> Outcome<*mut GlanceModel> {
    let mut reg = lock(&MODELS);
    let id = reg.next;
    reg.next = id
        .checked_add(1)
        .ok_or("no more model handles (every id was used)")?;
    reg.open.insert(id, Arc::new(model));
    Ok(ptr::without_provenance_mut(id))
}

fn lookup(handle: *mut GlanceModel) -> Outcome<Arc<Model>> {
    if handle.is_null() {
        return Err("the model is NULL".into());
    }
    lock(&MODELS)
        .open
        .get(&handle.addr())
        .cloned()
        .ok_or_else(|| "not an open model (closed already, or not from glance_model_open)".into())
}

/// Hands `text` to the caller, to be freed with [`glance_string_free`].
fn give_string(text: String) -> Outcome<*mut c_char> {
    let raw = CString::new(text)
        .map_err(|_| "the result holds a NUL byte")?
        .into_raw();
    lock(&STRINGS).insert(raw.addr());
    Ok(raw)
}

/// A string argument: `Ok(None)` for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Outcome<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(p) };
    match bytes.to_str() {
        Ok(s) => Ok(Some(s)),
        Err(e) => Err(format!("{what} is not valid UTF-8 ({e})").into()),
    }
}

/// A string argument that must be there.
///
/// # Safety
/// As [`c_str`].
unsafe fn required_str<'a>(p: *const c_char, what: &str) -> Outcome<&'a str> {
    // SAFETY: passed on from the caller.
    unsafe { c_str(p, what) }?.ok_or_else(|| format!("{what} is NULL").into())
}

/// An options object: NULL, `""` and `null` are `{}`.
fn options_object(json: Option<&str>, what: &str) -> Outcome<Map<String, Value>> {
    let json = json.unwrap_or("").trim();
    if json.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(other) => Err(format!("{what} must be a JSON object, not {other}").into()),
        Err(e) => Err(format!("{what} are not valid JSON: {e}").into()),
    }
}

/// The value of option `key` as a `T`; `null` is `None`.
fn field<T: DeserializeOwned>(key: &str, value: Value) -> Outcome<Option<T>> {
    serde_json::from_value(value).map_err(|e| format!("option \"{key}\": {e}").into())
}

/// A named value (`"fp16"`, `"never"`, …) parsed as glance's own types are.
fn named<T: FromStr<Err = Error>>(key: &str, value: Value) -> Outcome<Option<T>> {
    field::<String>(key, value)?
        .map(|s| {
            s.parse()
                .map_err(|e| format!("option \"{key}\": {e}").into())
        })
        .transpose()
}

/// One token id or a list of them.
fn token_ids(key: &str, value: Value) -> Outcome<Option<Vec<u32>>> {
    match value {
        Value::Array(_) => field(key, value),
        one => Ok(field::<u32>(key, one)?.map(|id| vec![id])),
    }
}

fn unknown(key: &str, known: &[&str]) -> Failure {
    format!("unknown option \"{key}\" (known: {})", known.join(", ")).into()
}

const OPEN_KEYS: [&str; 5] = ["threads", "dtype", "decoder", "compute", "max_image_pixels"];

/// The options of `glance_model_open`: `threads` (default: the CPUs available), `dtype`,
/// `decoder`, `compute`, `max_image_pixels`, as the command line's `--threads`, `--dtype`,
/// `--decoder`, `--compute`, `--max-pixels`.
fn open_options(json: Option<&str>) -> Outcome<OpenOptions> {
    let mut o = OpenOptions {
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..Default::default()
    };
    for (key, value) in options_object(json, "open options")? {
        match key.as_str() {
            "threads" => o.threads = field(&key, value)?.unwrap_or(o.threads),
            "dtype" => o.dtype = named(&key, value)?,
            "decoder" => o.decoder = named(&key, value)?,
            "compute" => o.compute = named(&key, value)?.unwrap_or_default(),
            "max_image_pixels" => o.max_image_pixels = field(&key, value)?,
            _ => return Err(unknown(&key, &OPEN_KEYS)),
        }
    }
    Ok(o)
}

const GENERATE_KEYS: [&str; 24] = [
    "max_new_tokens",
    "max_length",
    "min_new_tokens",
    "min_length",
    "num_beams",
    "num_return_sequences",
    "length_penalty",
    "early_stopping",
    "no_repeat_ngram_size",
    "repetition_penalty",
    "bad_words_ids",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "decoder_start_token_id",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "prompt",
    "keep_special_tokens",
    "ignore_generation_config",
    "time_budget_ms",
    "resolution",
    // Spelled as in GenerateOptions too.
    "ignore_model_generation_config",
    "time_budget",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SizeJson {
    height: usize,
    width: usize,
}

/// `"native"`, `"keep_aspect"` or `{"height": H, "width": W}`.
fn resolution(key: &str, value: Value) -> Outcome<Resolution> {
    match value {
        Value::Null => Ok(Resolution::Native),
        Value::String(s) if s == "native" => Ok(Resolution::Native),
        Value::String(s) if s == "keep_aspect" => Ok(Resolution::KeepAspect),
        Value::Object(_) => {
            let s: SizeJson = field(key, value)?.ok_or("unreachable")?;
            Ok(Resolution::Exact(Size {
                height: s.height,
                width: s.width,
            }))
        }
        other => Err(format!(
            "option \"{key}\": expected \"native\", \"keep_aspect\" or {{\"height\": H, \"width\": W}}, not {other}"
        )
        .into()),
    }
}

/// `true`, `false` or `"never"`.
fn early_stopping(key: &str, value: Value) -> Outcome<Option<EarlyStopping>> {
    match value {
        Value::Bool(true) => Ok(Some(EarlyStopping::True)),
        Value::Bool(false) => Ok(Some(EarlyStopping::False)),
        other => named(key, other),
    }
}

/// The options of a generate call: every field of [`crate::GenerationOptions`] by its name, and
/// `prompt`, `keep_special_tokens`, `ignore_generation_config`, `time_budget_ms`, `resolution`.
fn generate_options(json: Option<&str>) -> Outcome<(GenerateOptions, Resolution)> {
    let mut o = GenerateOptions::default();
    let mut res = Resolution::Native;
    for (key, value) in options_object(json, "generate options")? {
        let k = key.as_str();
        let g = &mut o.generation;
        match k {
            "max_new_tokens" => g.max_new_tokens = field(k, value)?,
            "max_length" => g.max_length = field(k, value)?,
            "min_new_tokens" => g.min_new_tokens = field(k, value)?,
            "min_length" => g.min_length = field(k, value)?,
            "num_beams" => g.num_beams = field(k, value)?,
            "num_return_sequences" => g.num_return_sequences = field(k, value)?,
            "length_penalty" => g.length_penalty = field(k, value)?,
            "early_stopping" => g.early_stopping = early_stopping(k, value)?,
            "no_repeat_ngram_size" => g.no_repeat_ngram_size = field(k, value)?,
            "repetition_penalty" => g.repetition_penalty = field(k, value)?,
            "bad_words_ids" => g.bad_words_ids = field(k, value)?,
            "forced_bos_token_id" => g.forced_bos_token_id = field(k, value)?,
            "forced_eos_token_id" => g.forced_eos_token_id = token_ids(k, value)?,
            "decoder_start_token_id" => g.decoder_start_token_id = field(k, value)?,
            "bos_token_id" => g.bos_token_id = field(k, value)?,
            "eos_token_id" => g.eos_token_id = token_ids(k, value)?,
            "pad_token_id" => g.pad_token_id = field(k, value)?,
            "prompt" => o.prompt = field(k, value)?,
            "keep_special_tokens" => o.keep_special_tokens = field(k, value)?.unwrap_or(false),
            "ignore_generation_config" | "ignore_model_generation_config" => {
                o.ignore_model_generation_config = field(k, value)?.unwrap_or(false)
            }
            "time_budget_ms" | "time_budget" => {
                o.time_budget = field(k, value)?.map(Duration::from_millis)
            }
            "resolution" => res = resolution(k, value)?,
            _ => return Err(unknown(k, &GENERATE_KEYS)),
        }
    }
    Ok((o, res))
}

/// The image of an RGB (3 channels) or RGBA (4, alpha dropped as Pillow's `convert("RGB")`
/// does) buffer of `height` rows `stride` bytes apart, whose sizes [`buffer_len`] accepted.
fn rgb_from_buffer(
    pixels: &[u8],
    width: usize,
    height: usize,
    stride: usize,
    channels: usize,
) -> Rgb8 {
    let row = width * channels;
    let mut data = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        let line = &pixels[y * stride..y * stride + row];
        if channels == 3 {
            data.extend_from_slice(line);
        } else {
            for px in line.chunks_exact(channels) {
                data.extend_from_slice(&px[..3]);
            }
        }
    }
    Rgb8::new(width, height, data)
}

/// The bytes an image of these dimensions needs, after checking they make sense and that the
/// image has at most `max_pixels` pixels.
fn buffer_len(
    width: usize,
    height: usize,
    stride: usize,
    channels: usize,
    max_pixels: u64,
) -> Outcome<usize> {
    if width == 0 || height == 0 {
        return Err(format!("the image is empty ({width}x{height})").into());
    }
    if channels != 3 && channels != 4 {
        return Err(format!("channels must be 3 (RGB) or 4 (RGBA), not {channels}").into());
    }
    let row = width
        .checked_mul(channels)
        .ok_or("width x channels overflows")?;
    if stride < row {
        return Err(format!("stride {stride} is less than width x channels = {row} bytes").into());
    }
    // The pixel limit before the byte count: on a 32-bit board a large image overflows usize
    // first, and the limit is the error that tells the caller what to change.
    crate::vision::image::TooManyPixels::check(width as u64, height as u64, max_pixels)
        .map_err(|e| format!("the image is {e}"))?;
    let len = stride
        .checked_mul(height - 1)
        .and_then(|n| n.checked_add(row))
        .ok_or("stride x height overflows")?;
    Ok(len)
}

/// The common part of the generate calls: options, pixels, generation, the JSON result.
///
/// # Safety
/// `options_json` is NULL or a NUL-terminated string; `callback`, if set, may be called with
/// `user_data`.
unsafe fn generate(
    model: *mut GlanceModel,
    options_json: *const c_char,
    callback: GlanceTokenCallback,
    user_data: *mut c_void,
    pixels: impl FnOnce(&Model, Resolution) -> Outcome<PixelValues>,
) -> Outcome<*mut c_char> {
    let model = lookup(model)?;
    // SAFETY: passed on from the caller.
    let (options, resolution) = generate_options(unsafe { c_str(options_json, "options_json") }?)?;
    let start = Instant::now();
    let pixels = pixels(&model, resolution)?;
    let preprocess_ms = start.elapsed().as_secs_f64() * 1000.0;
    let on_token = |_: usize, token: &Token| -> bool {
        let Some(f) = callback else { return true };
        let mut text = Vec::with_capacity(token.text.len() + 1);
        text.extend_from_slice(token.text.as_bytes());
        text.push(0);
        // SAFETY: the caller gave a function that takes this user_data; the text outlives the
        // call.
        unsafe { f(text.as_ptr().cast(), token.text.len(), token.id, user_data) == 0 }
    };
    let mut out = model
        .generate_with(&pixels, &options, on_token)?
        .into_iter()
        .next()
        .ok_or("no output")?;
    out.timings.preprocess_ms = preprocess_ms;
    give_string(out.to_json().to_string())
}

/// Opens a model directory (Optimum layout, or transformers.js with graphs under `onnx/`).
///
/// `options_json` may be NULL or a JSON object with any of `"threads"` (threads for matrix
/// products; default: the CPUs available), `"dtype"` (`"fp32"`, `"fp16"`, `"q8"`, `"int8"`,
/// `"uint8"`, `"q4"`), `"decoder"` (`"split"`, `"merged"`, `"no-past"`), `"compute"`
/// (`"auto"`, `"f32"`, `"int8"`, `"f16"`), `"max_image_pixels"` (the largest image taken;
/// default 100000000). Unknown keys are errors.
///
/// Returns a handle for the other calls, to be closed with `glance_model_close`, or NULL on
/// error (see `glance_last_error`).
///
/// # Safety
/// `dir` and `options_json` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn glance_model_open(
    dir: *const c_char,
    options_json: *const c_char,
) -> *mut GlanceModel {
    entry(ptr::null_mut(), || {
        // SAFETY: passed on from the caller.
        let dir = unsafe { required_str(dir, "dir") }?;
        // SAFETY: passed on from the caller.
        let options = open_options(unsafe { c_str(options_json, "options_json") }?)?;
        register(Model::open(Path::new(dir), &options)?)
    })
}

/// Closes a model. Returns 0, or -1 if `model` is not an open model (closed already, or not
/// from `glance_model_open`; nothing happens then). NULL is accepted and does nothing.
/// A generation running in another thread with this model finishes first.
#[no_mangle]
pub extern "C" fn glance_model_close(model: *mut GlanceModel) -> c_int {
    entry(-1, || {
        if model.is_null() {
            return Ok(0);
        }
        let closed = lock(&MODELS).open.remove(&model.addr());
        match closed {
            // Dropped outside the lock: the last reference frees the model.
            Some(model) => {
                drop(model);
                Ok(0)
            }
            None => Err("not an open model (closed already, or not from glance_model_open)".into()),
        }
    })
}

/// Generates text for an image file (PNG, JPEG, and the other formats glance reads).
///
/// `options_json` may be NULL or a JSON object with any of the generation settings of Hugging
/// Face's `generate()` that glance knows (`"max_new_tokens"`, `"max_length"`,
/// `"min_new_tokens"`, `"min_length"`, `"num_beams"`, `"num_return_sequences"`,
/// `"length_penalty"`, `"early_stopping"` (true, false or "never"), `"no_repeat_ngram_size"`,
/// `"repetition_penalty"`, `"bad_words_ids"`, `"forced_bos_token_id"`,
/// `"forced_eos_token_id"`, `"decoder_start_token_id"`, `"bos_token_id"`, `"eos_token_id"`,
/// `"pad_token_id"`) and `"prompt"` (text the decoder starts from), `"keep_special_tokens"`,
/// `"ignore_generation_config"`, `"time_budget_ms"`, `"resolution"` (`"native"`,
/// `"keep_aspect"` or `{"height": H, "width": W}`). Unknown keys are errors.
///
/// `callback` may be NULL; otherwise it is called with each token (see
/// `GlanceTokenCallback`) and `user_data`.
///
/// Returns the result as a JSON object, to be freed with `glance_string_free`:
/// `{"text", "tokens", "score", "confidence", "truncated", "timings_ms": {"preprocess",
/// "encode", "decode"}}`, plus `"sequences": [{"tokens", "text", "score"}]` when
/// `num_return_sequences` > 1 (the same object as `glance run --json`, without `"image"`).
/// Returns NULL on error (see `glance_last_error`).
///
/// # Safety
/// `path` and `options_json` are NULL or NUL-terminated strings; `callback`, if not NULL, is a
/// function that may be called with `user_data`.
#[no_mangle]
pub unsafe extern "C" fn glance_generate_file(
    model: *mut GlanceModel,
    path: *const c_char,
    options_json: *const c_char,
    callback: GlanceTokenCallback,
    user_data: *mut c_void,
) -> *mut c_char {
    entry(ptr::null_mut(), || {
        // SAFETY: passed on from the caller.
        let path = unsafe { required_str(path, "path") }?;
        // SAFETY: passed on from the caller.
        unsafe {
            generate(model, options_json, callback, user_data, |m, res| {
                Ok(m.load_image_at(Path::new(path), res)?)
            })
        }
    })
}

/// Generates text for an image in memory: `height` rows of `width` pixels, `stride` bytes from
/// one row to the next, each pixel `channels` bytes: 3 (R, G, B) or 4 (R, G, B, A; alpha is
/// ignored, as Pillow's `convert("RGB")` does). `pixels` holds `len` bytes, at least
/// `stride * (height - 1) + width * channels`. Sizes that are zero, overflow, exceed the
/// model's pixel limit (`max_image_pixels`, 100 megapixels by default) or do not fit in `len`
/// are errors, found before any pixel is read.
///
/// Options, callback and result as `glance_generate_file`.
///
/// # Safety
/// `pixels` is NULL or points to `len` readable bytes; `options_json` and `callback` as
/// `glance_generate_file`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn glance_generate_rgb(
    model: *mut GlanceModel,
    pixels: *const u8,
    len: usize,
    width: usize,
    height: usize,
    stride: usize,
    channels: usize,
    options_json: *const c_char,
    callback: GlanceTokenCallback,
    user_data: *mut c_void,
) -> *mut c_char {
    entry(ptr::null_mut(), || {
        let load = |m: &Model, res| -> Outcome<PixelValues> {
            if pixels.is_null() {
                return Err("pixels is NULL".into());
            }
            // Checked before any byte is read or copied.
            let needed = buffer_len(width, height, stride, channels, m.max_image_pixels())?;
            if len < needed {
                return Err(format!(
                    "the buffer holds {len} bytes; a {width}x{height} image with stride {stride} and {channels} channels needs {needed}"
                )
                .into());
            }
            // SAFETY: the caller guarantees `len` readable bytes at `pixels`, and
            // `needed <= len`.
            let bytes = unsafe { std::slice::from_raw_parts(pixels, needed) };
            let image = rgb_from_buffer(bytes, width, height, stride, channels);
            Ok(m.preprocess(&image, res)?)
        };
        // SAFETY: passed on from the caller.
        unsafe { generate(model, options_json, callback, user_data, load) }
    })
}

/// Frees a string returned by glance. NULL does nothing; a pointer glance did not return, or
/// freed already, is left alone and reported in `glance_last_error` (as long as glance has not
/// handed out the same address again since).
#[no_mangle]
// Safe for any pointer value: `s` is only used once the registry says glance handed it out.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub extern "C" fn glance_string_free(s: *mut c_char) {
    entry((), || {
        if s.is_null() {
            return Ok(());
        }
        if !lock(&STRINGS).remove(&s.addr()) {
            return Err("glance_string_free: not a string from glance, or freed already".into());
        }
        // SAFETY: `s` came from `CString::into_raw` in `give_string` and was not freed since
        // (it was still recorded).
        drop(unsafe { CString::from_raw(s) });
        Ok(())
    })
}

/// The text of the last error on this thread, or NULL if the last call succeeded. The string
/// belongs to glance: it stays valid until the next glance call on this thread.
#[no_mangle]
pub extern "C" fn glance_last_error() -> *const c_char {
    LAST_ERROR.with_borrow(|e| e.as_ref().map_or(ptr::null(), |c| c.as_ptr()))
}

/// glance's version, such as `"0.1.0"` (a static string).
#[no_mangle]
pub extern "C" fn glance_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        let p = glance_last_error();
        assert!(!p.is_null(), "expected an error");
        // SAFETY: glance's own NUL-terminated string, used before the next call.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    fn generate_err(json: &str) -> String {
        match generate_options(Some(json)) {
            Ok(_) => panic!("{json} should fail"),
            Err(Failure(msg)) => msg,
        }
    }

    #[test]
    fn a_panic_becomes_an_error() {
        let out = entry(-1, || -> Outcome<c_int> { panic!("boom") });
        assert_eq!(out, -1);
        let err = last_error();
        assert!(err.contains("panic") && err.contains("boom"), "{err}");
        // The next call clears it.
        assert_eq!(entry(0, || Ok(0)), 0);
        assert!(glance_last_error().is_null());
    }

    #[test]
    fn generate_options_map_onto_the_library() {
        let (o, res) = generate_options(Some(
            r#"{"max_new_tokens": 7, "num_beams": 3, "length_penalty": 0.5,
                "early_stopping": "never", "bad_words_ids": [[1], [2, 3]],
                "forced_eos_token_id": 2, "eos_token_id": [2, 5], "prompt": "<s>",
                "keep_special_tokens": true, "ignore_generation_config": true,
                "time_budget_ms": 250, "resolution": {"height": 32, "width": 96},
                "min_length": null}"#,
        ))
        .unwrap_or_else(|Failure(e)| panic!("{e}"));
        let g = &o.generation;
        assert_eq!(g.max_new_tokens, Some(7));
        assert_eq!(g.num_beams, Some(3));
        assert_eq!(g.length_penalty, Some(0.5));
        assert_eq!(g.early_stopping, Some(EarlyStopping::Never));
        assert_eq!(g.bad_words_ids, Some(vec![vec![1], vec![2, 3]]));
        assert_eq!(g.forced_eos_token_id, Some(vec![2]));
        assert_eq!(g.eos_token_id, Some(vec![2, 5]));
        assert_eq!(g.min_length, None);
        assert_eq!(o.prompt.as_deref(), Some("<s>"));
        assert!(o.keep_special_tokens && o.ignore_model_generation_config);
        assert_eq!(o.time_budget, Some(Duration::from_millis(250)));
        assert_eq!(
            res,
            Resolution::Exact(Size {
                height: 32,
                width: 96
            })
        );
        for (json, res) in [
            ("", Resolution::Native),
            ("null", Resolution::Native),
            (r#"{"resolution": "keep_aspect"}"#, Resolution::KeepAspect),
            (r#"{"early_stopping": true}"#, Resolution::Native),
        ] {
            assert_eq!(generate_options(Some(json)).ok().unwrap().1, res, "{json}");
        }
    }

    #[test]
    fn bad_options_name_the_field() {
        for (json, what) in [
            (r#"{"max_new_token": 3}"#, "\"max_new_token\""),
            (r#"{"num_beams": "three"}"#, "\"num_beams\""),
            (r#"{"num_beams": -1}"#, "\"num_beams\""),
            (r#"{"early_stopping": "sometimes"}"#, "\"early_stopping\""),
            (r#"{"resolution": "huge"}"#, "\"resolution\""),
            (r#"{"resolution": {"height": 32}}"#, "\"resolution\""),
            (
                r#"{"resolution": {"height": 32, "width": 32, "depth": 1}}"#,
                "depth",
            ),
            (r#"{"bad_words_ids": [1, 2]}"#, "\"bad_words_ids\""),
            ("{not json", "not valid JSON"),
            ("[1, 2]", "must be a JSON object"),
        ] {
            let err = generate_err(json);
            assert!(err.contains(what), "{json}: {err}");
        }
        for (json, what) in [
            (r#"{"thread": 1}"#, "\"thread\""),
            (r#"{"threads": "many"}"#, "\"threads\""),
            (r#"{"dtype": "fp64"}"#, "\"dtype\""),
            (r#"{"compute": "gpu"}"#, "\"compute\""),
            (r#"{"decoder": 3}"#, "\"decoder\""),
        ] {
            let err = open_options(Some(json)).err().unwrap().0;
            assert!(err.contains(what), "{json}: {err}");
        }
        let o = open_options(Some(
            r#"{"threads": 2, "dtype": "fp16", "compute": "f32", "max_image_pixels": 640}"#,
        ))
        .ok()
        .unwrap();
        assert_eq!(o.max_image_pixels, Some(640));
        assert_eq!(o.threads, 2);
        assert_eq!(o.dtype, Some(crate::Dtype::Fp16));
        assert_eq!(o.compute, crate::Compute::F32);
    }

    #[test]
    fn buffer_sizes_are_checked() {
        let max = crate::vision::image::DEFAULT_MAX_PIXELS;
        assert_eq!(buffer_len(4, 2, 12, 3, max).ok(), Some(24));
        assert_eq!(buffer_len(4, 2, 20, 4, max).ok(), Some(36));
        for (w, h, stride, ch, what) in [
            (0, 2, 12, 3, "empty"),
            (4, 0, 12, 3, "empty"),
            (4, 2, 12, 2, "channels"),
            (4, 2, 11, 3, "stride"),
            (usize::MAX, 2, usize::MAX, 3, "overflows"),
            (4, usize::MAX, usize::MAX / 2, 3, "overflows"),
        ] {
            // Sizes that overflow, under no pixel limit.
            let max = if what == "overflows" { u64::MAX } else { max };
            let err = buffer_len(w, h, stride, ch, max).err().unwrap().0;
            assert!(err.contains(what), "{w}x{h} {stride} {ch}: {err}");
        }
        let err = buffer_len(100_000, 100_000, 300_000, 3, max)
            .err()
            .unwrap()
            .0;
        assert!(err.contains("limit of 100000000"), "{err}");
        let err = buffer_len(4, 2, 12, 3, 7).err().unwrap().0;
        assert!(
            err.contains("4x2 pixels, more than the limit of 7"),
            "{err}"
        );
        // RGBA drops alpha; the stride's padding is skipped.
        let rgba = [1, 2, 3, 255, 4, 5, 6, 0, 9, 9, 7, 8, 9, 1, 10, 11, 12, 2];
        let img = rgb_from_buffer(&rgba, 2, 2, 10, 4);
        assert_eq!(img.data, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    }

    #[test]
    fn handles_and_strings_are_checked() {
        assert_eq!(glance_model_close(ptr::null_mut()), 0);
        let bogus: *mut GlanceModel = ptr::without_provenance_mut(usize::MAX - 7);
        assert_eq!(glance_model_close(bogus), -1);
        assert!(last_error().contains("not an open model"));
        glance_string_free(ptr::null_mut());
        assert!(glance_last_error().is_null());
        let s = give_string("{}".into()).ok().unwrap();
        glance_string_free(s);
        assert!(glance_last_error().is_null());
        glance_string_free(s);
        assert!(last_error().contains("freed already"));
        let mut local = *b"not glance's\0";
        glance_string_free(local.as_mut_ptr().cast());
        assert!(last_error().contains("not a string from glance"));
        // SAFETY: a static NUL-terminated string.
        let version = unsafe { CStr::from_ptr(glance_version()) };
        assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
