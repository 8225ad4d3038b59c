//! Making models smaller: int8 quantization of the linear layers (`quantize.rs`), with
//! calibration and SmoothQuant smoothing (`calibrate.rs`); knowledge distillation's losses and
//! settings (`distill.rs`; the run itself is `train/distill.rs`); structured pruning of heads,
//! neurons and blocks (`prune.rs`); unstructured pruning during fine-tuning (`sparsity.rs`).

pub mod calibrate;
pub mod distill;
pub mod prune;
pub mod quantize;
pub mod sparsity;

pub use quantize::{dequantize, quantize, refuse_training, LayerReport, QuantizeOptions};
