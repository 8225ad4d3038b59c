//! Making models smaller: int8 quantization of the linear layers (`quantize.rs`), with
//! calibration and SmoothQuant smoothing (`calibrate.rs`).

pub mod calibrate;
pub mod quantize;

pub use quantize::{dequantize, quantize, refuse_training, LayerReport, QuantizeOptions};
