//! The metrics each task is judged by, computed as the reference tools do (scikit-learn and
//! SciPy for classification and regression).

pub mod classification;

pub use classification::{accuracy, macro_f1, pearson, spearman};
