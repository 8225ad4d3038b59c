//! The metrics each task is judged by, computed as the reference tools do (scikit-learn and
//! SciPy for classification and regression, seqeval for tagging, the official SQuAD script for
//! extractive QA, sacreBLEU for generated text).

pub mod classification;
pub mod sequence_labeling;
pub mod squad;
pub mod translation;

pub use classification::{accuracy, macro_f1, pearson, spearman};
pub use sequence_labeling::{entity_prf, token_accuracy};
