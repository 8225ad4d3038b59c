//! Making models smaller: int8 quantization of the linear layers (`quantize.rs`).

pub mod quantize;

pub use quantize::{dequantize, quantize, refuse_training, LayerReport, QuantizeOptions};
