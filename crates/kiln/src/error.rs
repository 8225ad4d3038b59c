//! The library's one error type. Every variant names what was being done, the file or tensor at
//! fault, and what was expected, so a user can act on the message without reading the code.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in Kiln.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written. The OS error is part of the message and
    /// deliberately not a `source`, so a report of the error chain says it once.
    #[error("{op} {path}: {err}")]
    Io {
        op: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    /// A required file of a model directory is absent.
    #[error("missing file {path}: {hint}")]
    MissingFile { path: PathBuf, hint: String },
    /// A JSON file could not be parsed or lacks a required field.
    #[error("invalid JSON in {path}: {msg}")]
    Json { path: PathBuf, msg: String },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid config {path}: field `{field}`: {msg}")]
    Config {
        path: PathBuf,
        field: String,
        msg: String,
    },
    /// The `model_type` of a config.json is not one Kiln implements.
    #[error("unsupported model_type \"{model_type}\" in {path} (Kiln supports: {supported})")]
    UnsupportedModel {
        path: PathBuf,
        model_type: String,
        supported: String,
    },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error(
        "tensor `{name}` not found in {path} (also tried: {tried}); is this a {arch} checkpoint?"
    )]
    MissingTensor {
        path: PathBuf,
        name: String,
        tried: String,
        arch: String,
    },
    /// A tensor exists but has the wrong shape.
    #[error("tensor `{name}` in {path} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    /// A tensor has a dtype Kiln cannot compute with.
    #[error("tensor `{name}` in {path} has dtype {dtype}; Kiln reads F32, F16 and BF16 weights")]
    TensorDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    /// The safetensors file is truncated or corrupt.
    #[error("corrupt safetensors file {path}: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer {context}: {msg}")]
    Tokenizer { context: String, msg: String },
    /// A caller passed shapes or arguments that do not fit together.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// A user-supplied input (a line of a file, a flag value) is invalid.
    #[error("{0}")]
    Input(String),
    /// The disk filled up while a run saved; what was saved before is intact.
    #[error("no space left on the device of {dir} while saving: a checkpoint needs about {needed_mb} MB{free}; the last good checkpoint is {last}; free some space, then continue with --resume")]
    DiskFull {
        dir: PathBuf,
        needed_mb: u64,
        /// ", N MB free" when the free space could be read.
        free: String,
        last: String,
    },
    /// A hub id that is neither in the local hub cache nor downloadable.
    #[error("model \"{id}\" is not a local directory and not in the hub cache ({cache}): {msg}; give a model directory, or a hub id with a reachable hub (HF_ENDPOINT)")]
    Hub {
        id: String,
        cache: PathBuf,
        msg: String,
    },
    /// A model's output turned NaN or infinite on some input (finite weights that overflow).
    #[error("{0}")]
    NonFinite(String),
    /// Rendering an image failed.
    #[error("plot {path}: {msg}")]
    Plot { path: PathBuf, msg: String },
}

impl Error {
    /// Helper for I/O errors with the path they concern.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            err,
        }
    }

    /// Helper for shape mismatches detected by a kernel or model piece.
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
}
