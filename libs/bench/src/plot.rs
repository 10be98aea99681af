//! Latency plots a person can look at: cumulative distributions, p99 over
//! time and p99 by offered rate, as SVG.

use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::path::Path;

/// The colours of a plot's series, in order (black is left for reference
/// lines: SLOs).
const PALETTE: [RGBColor; 8] = [
    BLUE,
    RED,
    GREEN,
    MAGENTA,
    CYAN,
    RGBColor(255, 140, 0),
    RGBColor(128, 0, 128),
    RGBColor(139, 69, 19),
];

/// The colour of the `i`-th series.
fn series_color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// A legend's sample of a line drawn in `color`.
fn legend_line(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color)
}

/// Writes the CDFs of `series` (microsecond histograms) to `path`, with
/// latency in milliseconds on a logarithmic axis.
pub fn latency_cdfs(
    path: &Path,
    title: &str,
    series: &[(&str, &Histogram<u64>)],
) -> anyhow::Result<()> {
    let max_ms = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(_, h)| h.max() as f64 / 1000.0)
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((0.1f64..max_ms * 1.2).log_scale(), 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of orders")
        .draw()?;
    for (i, (name, h)) in series.iter().enumerate() {
        if h.is_empty() {
            continue;
        }
        let color = series_color(i);
        let points: Vec<(f64, f64)> = h
            .iter_quantiles(4)
            .map(|v| {
                (
                    (v.value_iterated_to() as f64 / 1000.0).max(0.1),
                    v.quantile_iterated_to(),
                )
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(*name)
            .legend(legend_line(color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes `series` of (seconds into the run, milliseconds) points to `path`
/// as lines over time, latency on a logarithmic axis.
pub fn over_time(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (max_s, max_ms) = points.fold((1.0f64, 1.0f64), |(s, ms), (x, y)| (s.max(*x), ms.max(*y)));
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_s + 1.0, (0.1f64..max_ms * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds into the run")
        .y_desc("p99 latency (ms, log scale)")
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let color = series_color(i);
        let points: Vec<(f64, f64)> = points.iter().map(|(x, y)| (*x, y.max(0.1))).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name.as_str())
            .legend(legend_line(color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes `series` of (offered rate, p99 in milliseconds) points to `path`,
/// one line with a dot per measured rate, latency on a logarithmic axis,
/// with a dashed horizontal line for each `slos` (milliseconds, label) and
/// a dashed vertical line for each `marks` (rate, label).
pub fn by_rate(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(f64, f64)>)],
    slos: &[(f64, String)],
    marks: &[(f64, String)],
) -> anyhow::Result<()> {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (max_rate, max_ms) =
        points.fold((1.0f64, 1.0f64), |(r, ms), (x, y)| (r.max(*x), ms.max(*y)));
    let max_ms = slos.iter().map(|(ms, _)| *ms).fold(max_ms, f64::max);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_rate * 1.05, (0.1f64..max_ms * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered rate (actions/s)")
        .y_desc("p99 latency (ms, log scale)")
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let color = series_color(i);
        let points: Vec<(f64, f64)> = points.iter().map(|(x, y)| (*x, y.max(0.1))).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(legend_line(color));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    for (ms, label) in slos {
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, *ms), (max_rate * 1.05, *ms)],
                6,
                4,
                BLACK.stroke_width(1),
            ))?
            .label(label.as_str())
            .legend(legend_line(BLACK));
    }
    for (rate, label) in marks {
        let grey = RGBColor(110, 110, 110);
        chart
            .draw_series(DashedLineSeries::new(
                [(*rate, 0.1), (*rate, max_ms * 2.0)],
                3,
                3,
                grey.stroke_width(1),
            ))?
            .label(label.as_str())
            .legend(legend_line(grey));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
