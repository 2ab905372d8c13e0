//! The score plot: per-layer coherence and cross-layer alignment as lines, in a PNG.
//!
//! Text is drawn with DejaVu Sans compiled into the binary (through plotters' `ab_glyph`
//! backend), so plotting needs no system fonts.

use std::path::Path;
use std::sync::OnceLock;

use lem_score::Scores;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::InspectError;

/// The font family name the plot registers its embedded font under.
const FAMILY: &str = "sans-serif";

/// Registers the embedded font once per process.
fn font_ready() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        register_font(FAMILY, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "the embedded font cannot be loaded".to_owned())
    })
    .clone()
}

/// Draws `scores` to a PNG at `path` (`width` x `height` pixels): `layer_coherence` at
/// each layer `l`, `layer_cross_alignment` of the pair `(l, l+1)` at `l + 0.5`, with the
/// composite and `subtitle` (e.g. the model and prompt length) in the title.
///
/// # Errors
/// [`InspectError::Plot`] when the image cannot be drawn or written.
pub fn plot_scores(
    scores: &Scores,
    subtitle: &str,
    path: &Path,
    (width, height): (u32, u32),
) -> Result<(), InspectError> {
    let err = |reason: String| InspectError::Plot { path: path.to_owned(), reason };
    font_ready().map_err(err)?;
    draw(scores, subtitle, path, (width, height)).map_err(|e| err(e.to_string()))
}

fn draw(
    scores: &Scores,
    subtitle: &str,
    path: &Path,
    size: (u32, u32),
) -> Result<(), Box<dyn std::error::Error + 'static>> {
    let coherence: Vec<(f64, f64)> = scores.layer_coherence.iter().enumerate().map(|(l, &v)| (l as f64, v)).collect();
    let cross: Vec<(f64, f64)> =
        scores.layer_cross_alignment.iter().enumerate().map(|(l, &v)| (l as f64 + 0.5, v)).collect();
    let n_layers = scores.layer_coherence.len().max(1);
    let values = coherence.iter().chain(&cross).map(|p| p.1);
    let y_min = values.clone().fold(0.0f64, f64::min);
    let y_max = values.fold(1.0f64, f64::max);
    let pad = 0.05 * (y_max - y_min);
    let (coh_label, cross_label) = if scores.few_heads {
        ("coherence: position dissimilarity diff_l", "cross-layer alignment: smoothness (l, l+1)")
    } else {
        ("coherence: mean head-pair cosine coh_l", "cross-layer alignment: cosine (l, l+1)")
    };
    let regime = if scores.few_heads { "few heads" } else { "many heads" };
    let title = format!("attention score: composite {} / 10000  ({regime})", scores.composite);

    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(64);
    top.draw(&Text::new(title, (20, 10), (FAMILY, 26).into_font().color(&BLACK)))?;
    top.draw(&Text::new(subtitle.to_owned(), (20, 40), (FAMILY, 16).into_font().color(&RGBColor(80, 80, 80))))?;

    let mut chart = ChartBuilder::on(&body)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n_layers as f64 - 0.5), (y_min - pad)..(y_max + pad))?;
    chart
        .configure_mesh()
        .x_desc("layer")
        .y_desc("value")
        .axis_desc_style((FAMILY, 18))
        .label_style((FAMILY, 14))
        .x_labels(n_layers.min(30))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .max_light_lines(1)
        .light_line_style(RGBColor(245, 245, 245))
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;

    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(230, 110, 20);
    chart
        .draw_series(LineSeries::new(coherence.iter().copied(), blue.stroke_width(2)))?
        .label(coh_label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], blue.stroke_width(2)));
    chart.draw_series(coherence.iter().map(|&p| Circle::new(p, 3, blue.filled())))?;
    chart
        .draw_series(LineSeries::new(cross.iter().copied(), orange.stroke_width(2)))?
        .label(cross_label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], orange.stroke_width(2)));
    chart.draw_series(cross.iter().map(|&p| TriangleMarker::new(p, 4, orange.filled())))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw()?;
    root.present()?;
    Ok(())
}
