//! Errors are values: every failure a user can cause names the file (or option) and what was wrong.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in glance.
///
/// Each variant names what it is about, so that the one-line `Display` form is enough for a user to
/// find and fix the problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read at all.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A configuration file is missing, is not JSON, or holds values glance cannot use.
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    /// The model directory does not hold a usable set of graphs.
    #[error("{dir}: {msg}")]
    Layout { dir: PathBuf, msg: String },
    /// An ONNX graph could not be parsed, prepared or run.
    #[error("{path}: {msg}")]
    Graph { path: PathBuf, msg: String },
    /// An image could not be decoded or preprocessed.
    #[error("{path}: {msg}")]
    Image { path: PathBuf, msg: String },
    /// A tokenizer file could not be loaded, or text could not be (de)tokenized.
    #[error("{path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    /// An option given by the caller is out of range or contradicts another.
    #[error("invalid option: {0}")]
    Option(String),
    /// Decoding failed while running (for example the model produced NaN logits).
    #[error("generation failed: {0}")]
    Generation(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn config(path: &Path, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub(crate) fn layout(dir: &Path, msg: impl Into<String>) -> Self {
        Error::Layout {
            dir: dir.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub(crate) fn image(path: &Path, msg: impl Into<String>) -> Self {
        Error::Image {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub(crate) fn tokenizer(path: &Path, msg: impl Into<String>) -> Self {
        Error::Tokenizer {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    /// A tract error about a graph file, flattened to one line: tract's context chain names the
    /// node that failed, which is what a user needs to see.
    pub(crate) fn graph(path: &Path, err: impl std::fmt::Display) -> Self {
        Error::Graph {
            path: path.to_path_buf(),
            msg: one_line(&format!("{err:#}")),
        }
    }
}

/// tract and anyhow errors can span several lines; a user sees one.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

thread_local! {
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, a call into a dependency that may panic on input it does not expect (tract running
/// a graph, the tokenizers crate reading a tokenizer.json); a panic comes back as its message.
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    // Guarded calls nest (a C entry point around a graph run): restore the outer state.
    let outer = GUARDED.with(|flag| flag.replace(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|flag| flag.set(outer));
    outcome.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown cause")
            .to_string()
    })
}

/// Whether this thread is inside such a guarded call. A panic there becomes an [`Error`] naming
/// the file, so an application's panic hook may stay quiet about it.
pub fn in_guarded_call() -> bool {
    GUARDED.with(|flag| flag.get())
}
