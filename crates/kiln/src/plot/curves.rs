//! Training and validation curves from one or more `metrics.jsonl` files (as written by the
//! trainer: one JSON object per logged step).

use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

/// One named curve: (step, value) points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Points in step order.
    pub points: Vec<(f64, f64)>,
}

/// Reads the `loss` and `valid_loss` series of a metrics file; `label` prefixes the legend
/// names (useful when several runs share a picture). Every line must be a JSON object with a
/// numeric `step`; the error names the file and line otherwise.
pub fn read_metrics(path: &Path, label: &str) -> Result<Vec<Series>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let prefix = if label.is_empty() {
        String::new()
    } else {
        format!("{label} ")
    };
    let mut train = Series {
        name: format!("{prefix}train loss"),
        points: Vec::new(),
    };
    let mut valid = Series {
        name: format!("{prefix}validation loss"),
        points: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: &str| Error::Input(format!("{} line {}: {msg}", path.display(), i + 1));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(&format!("invalid JSON: {e}")))?;
        let step = v["step"]
            .as_f64()
            .ok_or_else(|| bad("no numeric \"step\" field"))?;
        if let Some(l) = v["loss"].as_f64().filter(|l| l.is_finite()) {
            train.points.push((step, l));
        }
        if let Some(l) = v["valid_loss"].as_f64().filter(|l| l.is_finite()) {
            valid.points.push((step, l));
        }
    }
    if train.points.is_empty() && valid.points.is_empty() {
        return Err(Error::Input(format!(
            "{}: no \"loss\" or \"valid_loss\" values to plot",
            path.display()
        )));
    }
    Ok([train, valid]
        .into_iter()
        .filter(|s| !s.points.is_empty())
        .collect())
}

/// Draws the series as lines (validation curves with point markers) into a PNG at `path`.
pub fn write_curves(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    let perr = |e: &dyn std::fmt::Display| Error::Plot {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    super::register_font();
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !y0.is_finite() {
        return Err(Error::Input("nothing to plot".into()));
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (1000, 620)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| perr(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .x_label_formatter(&|x| format!("{}", x.round() as i64))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| perr(&e))?;
        let colors = [&BLUE, &RED, &GREEN, &MAGENTA, &CYAN, &BLACK];
        for (i, s) in series.iter().enumerate() {
            let color = colors[i % colors.len()];
            let style = color.stroke_width(2);
            let drawn = chart
                .draw_series(LineSeries::new(s.points.iter().copied(), style))
                .map_err(|e| perr(&e))?;
            drawn.label(&s.name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
            if s.name.contains("validation") {
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| perr(&e))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(|e| perr(&e))?;
        root.present().map_err(|e| perr(&e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))
}
