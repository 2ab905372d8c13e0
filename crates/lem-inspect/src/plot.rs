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

/// One heat map of [`plot_heatmaps`]: `values[row][column]` in `0..=1` (`None`: no value,
/// drawn grey), with row and column labels and a title.
#[derive(Debug, Clone)]
pub struct HeatPanel {
    /// Drawn above the grid.
    pub title: String,
    /// The y axis's name and one label per row.
    pub row_name: String,
    /// Row labels, top to bottom.
    pub rows: Vec<String>,
    /// The x axis's name.
    pub col_name: String,
    /// Column labels, left to right.
    pub cols: Vec<String>,
    /// Cell values in `0..=1`.
    pub values: Vec<Vec<Option<f64>>>,
}

/// Draws `panels` one above the other into a PNG at `path`, each cell coloured from red
/// (0) through yellow to green (1) with its value written in it. The image is written to
/// a temporary file beside `path` and renamed over it, so a reader never sees half of it.
///
/// # Errors
/// [`InspectError::Plot`] when a panel's values do not match its labels, or the image
/// cannot be drawn or written.
pub fn plot_heatmaps(panels: &[HeatPanel], path: &Path) -> Result<(), InspectError> {
    let err = |reason: String| InspectError::Plot { path: path.to_owned(), reason };
    font_ready().map_err(err)?;
    if let Some(p) =
        panels.iter().find(|p| p.values.len() != p.rows.len() || p.values.iter().any(|r| r.len() != p.cols.len()))
    {
        return Err(err(format!("panel '{}': values do not match its rows and columns", p.title)));
    }
    if panels.is_empty() {
        return Err(err("nothing to draw".into()));
    }
    // The encoder picks the format by extension, so the temporary name ends in .png.
    let name = path.file_name().map_or_else(|| "heatmap".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.partial.png"));
    draw_heatmaps(panels, &tmp).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

/// Red (0) to yellow (0.5) to green (1).
fn heat(v: f64) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    let (r, g) = if v < 0.5 { (1.0, 2.0 * v) } else { (2.0 * (1.0 - v), 1.0) };
    RGBColor((r * 215.0 + 25.0) as u8, (g * 175.0 + 40.0) as u8, 60)
}

fn draw_heatmaps(panels: &[HeatPanel], path: &Path) -> Result<(), Box<dyn std::error::Error + 'static>> {
    const CELL_W: u32 = 90;
    const CELL_H: u32 = 44;
    const LEFT: u32 = 110;
    const TOP: u32 = 56;
    const BOTTOM: u32 = 44;
    let width = LEFT + 20 + CELL_W * panels.iter().map(|p| p.cols.len() as u32).max().unwrap_or(1);
    let heights: Vec<u32> = panels.iter().map(|p| TOP + BOTTOM + CELL_H * p.rows.len() as u32).collect();
    let root = BitMapBackend::new(path, (width, heights.iter().sum())).into_drawing_area();
    root.fill(&WHITE)?;
    let mut y0 = 0i32;
    for (p, &h) in panels.iter().zip(&heights) {
        let font = |size| (FAMILY, size).into_font().color(&BLACK);
        root.draw(&Text::new(p.title.clone(), (12, y0 + 14), font(20)))?;
        for (i, row) in p.rows.iter().enumerate() {
            let y = y0 + (TOP + CELL_H * i as u32) as i32;
            root.draw(&Text::new(row.clone(), (12, y + 14), font(16)))?;
            for (j, v) in p.values[i].iter().enumerate() {
                let x = (LEFT + CELL_W * j as u32) as i32;
                let fill = v.map_or(RGBColor(200, 200, 200), heat);
                root.draw(&Rectangle::new([(x, y), (x + CELL_W as i32 - 2, y + CELL_H as i32 - 2)], fill.filled()))?;
                let text = v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
                root.draw(&Text::new(text, (x + 28, y + 13), font(16)))?;
            }
        }
        let y = y0 + (TOP + CELL_H * p.rows.len() as u32) as i32 + 4;
        for (j, col) in p.cols.iter().enumerate() {
            root.draw(&Text::new(col.clone(), ((LEFT + CELL_W * j as u32) as i32 + 28, y), font(15)))?;
        }
        let names = format!("rows: {}, columns: {}", p.row_name, p.col_name);
        root.draw(&Text::new(names, (12, y + 20), (FAMILY, 13).into_font().color(&RGBColor(90, 90, 90))))?;
        y0 += h as i32;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel(rows: usize) -> HeatPanel {
        HeatPanel {
            title: "full".into(),
            row_name: "length".into(),
            rows: (0..rows).map(|i| format!("{}", 1000 * (i + 1))).collect(),
            col_name: "depth %".into(),
            cols: vec!["0".into(), "50".into(), "100".into()],
            values: (0..rows).map(|i| vec![Some(0.0), Some(0.5 * i as f64), None]).collect(),
        }
    }

    #[test]
    fn heatmaps_are_a_png_of_every_panel_and_bad_shapes_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("h.png");
        plot_heatmaps(&[panel(2), panel(3)], &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let (w, h) = (
            u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
            u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
        );
        assert_eq!((w, h), (110 + 20 + 3 * 90, 2 * (56 + 44) + 5 * 44));
        // Cells of different values have different colours.
        assert_ne!(heat(0.0), heat(1.0));
        assert!(!d.path().join(".h.png.partial.png").exists());
        let mut bad = panel(2);
        bad.values.pop();
        assert!(matches!(plot_heatmaps(&[bad], &path), Err(InspectError::Plot { .. })));
        assert!(plot_heatmaps(&[], &path).is_err());
    }
}
