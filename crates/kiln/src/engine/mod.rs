//! Kiln's compute engine: f32 tensors in contiguous row-major buffers and coarse, fused,
//! multi-threaded kernels. A transformer layer is a handful of calls into this module.
//!
//! Why our own engine: general frameworks lose most of their time around the matrix multiply
//! (one allocation per small op, single-threaded elementwise loops, transposed copies, unfused
//! softmax/norm/activation). Here matrix multiply goes through the `gemm` crate and everything
//! else is fused into few passes over memory, parallelized with `rayon`.

pub mod activation;
pub mod attention;
pub mod dropout;
pub mod embedding;
pub mod grad;
pub mod int8;
pub mod linear;
pub mod lstm;
pub mod math;
pub mod matmul;
pub mod norm;
pub mod packed;
pub mod par;
pub mod simd;
pub mod softmax;
pub mod tensor;
pub mod topk;

pub use activation::Activation;
pub use attention::MaskKind;
pub use linear::{Linear, LinearOut};
pub use norm::LayerNorm;
pub use tensor::Tensor;
