//! The loss curve: training and validation loss per epoch, as SVG.

use std::path::Path;

use plotters::prelude::*;

use super::EpochRecord;
use crate::{Result, WorkerError};

/// Draw the loss curves of `history` to an SVG file.
pub fn loss_curve_svg(history: &[EpochRecord], title: &str, path: &Path) -> Result<()> {
    let fail = |e: &dyn std::fmt::Display| {
        WorkerError::InvalidData(format!("drawing {}: {e}", path.display()))
    };
    let losses = history.iter().flat_map(|r| [r.train_loss, r.val_loss]);
    let (lo, hi) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, lo.abs().max(1.0) * 2.0)
    };
    let pad = (hi - lo) * 0.05;
    let last = history.len().max(2) as f64;
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(1.0..last, (lo - pad)..(hi + pad))
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("loss")
        .draw()
        .map_err(|e| fail(&e))?;
    let series = |f: fn(&EpochRecord) -> f64| history.iter().map(move |r| (r.epoch as f64, f(r)));
    chart
        .draw_series(LineSeries::new(series(|r| r.train_loss), &BLUE))
        .map_err(|e| fail(&e))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
    chart
        .draw_series(LineSeries::new(series(|r| r.val_loss), &RED))
        .map_err(|e| fail(&e))?
        .label("validation")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}
