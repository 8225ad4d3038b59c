//! Pictures: training curves from `metrics.jsonl` (the similarity heatmap lives with its task in
//! `infer::similarity`). Drawn with `plotters` into PNG files written atomically.

mod curves;

pub use curves::{read_metrics, write_curves, Series};

/// The font is embedded so pictures render the same on any machine (DejaVu Sans, see
/// assets/DejaVuSans-LICENSE.txt).
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Registers the embedded font as plotters' "sans-serif" (idempotent).
pub fn register_font() {
    let _ = plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, FONT);
}
