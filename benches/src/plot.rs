//! SVGs of throughput and latency against load: one server's three panels side by side, or
//! several servers' throughput and TTFT on shared axes.

use crate::metrics::{LevelSummary, Load};
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

pub fn write_svg(path: &Path, title: &str, levels: &[LevelSummary]) -> Result<()> {
    let x_label = match levels.first().map(|l| l.load) {
        Some(Load::RequestRate(_)) => "request rate (req/s)",
        _ => "concurrent requests",
    };
    let points = |f: &dyn Fn(&LevelSummary) -> f64| -> Vec<(f64, f64)> {
        levels.iter().map(|l| (l.load.value(), f(l))).collect()
    };
    let root = SVGBackend::new(path, (1500, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    let panels = root.split_evenly((1, 3));
    panel(
        &panels[0],
        "throughput (tokens/s)",
        x_label,
        vec![
            ("output", BLUE, points(&|l| l.output_throughput)),
            (
                "prompt + output",
                GREEN,
                points(&|l| l.total_token_throughput),
            ),
        ],
    )?;
    panel(
        &panels[1],
        "TTFT and end-to-end latency (s, median)",
        x_label,
        vec![
            ("TTFT", RED, points(&|l| l.ttft_ms.median / 1e3)),
            ("end to end", MAGENTA, points(&|l| l.e2e_ms.median / 1e3)),
        ],
    )?;
    panel(
        &panels[2],
        "per-token latency (ms)",
        x_label,
        vec![
            ("TPOT median", BLACK, points(&|l| l.tpot_ms.median)),
            ("ITL p99", CYAN, points(&|l| l.itl_ms.p99)),
        ],
    )?;
    root.present().map_err(err)?;
    Ok(())
}

/// One line per server, same axes: output throughput and median TTFT against load.
pub fn write_comparison_svg(
    path: &Path,
    title: &str,
    servers: &[(String, Vec<LevelSummary>)],
) -> Result<()> {
    const COLORS: [RGBColor; 4] = [BLUE, RED, GREEN, MAGENTA];
    let x_label = match servers.first().and_then(|s| s.1.first()).map(|l| l.load) {
        Some(Load::RequestRate(_)) => "request rate (req/s)",
        _ => "concurrent requests",
    };
    let series = |f: &dyn Fn(&LevelSummary) -> f64| -> Vec<Series<'_>> {
        servers
            .iter()
            .zip(COLORS.iter().cycle())
            .map(|((name, levels), color)| {
                let points = levels.iter().map(|l| (l.load.value(), f(l))).collect();
                (name.as_str(), *color, points)
            })
            .collect()
    };
    let root = SVGBackend::new(path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    let panels = root.split_evenly((1, 2));
    panel(
        &panels[0],
        "output throughput (tokens/s)",
        x_label,
        series(&|l| l.output_throughput),
    )?;
    panel(
        &panels[1],
        "TTFT (s, median)",
        x_label,
        series(&|l| l.ttft_ms.median / 1e3),
    )?;
    root.present().map_err(err)?;
    Ok(())
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    x_label: &str,
    series: Vec<Series<'_>>,
) -> Result<()> {
    let all = series.iter().flat_map(|(_, _, p)| p.iter());
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all.map(|p| p.1).fold(1e-9, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max * 1.05, 0.0..y_max)
        .map_err(err)?;
    chart.configure_mesh().x_desc(x_label).draw().map_err(err)?;
    for (name, color, points) in series {
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plotting: {e}")
}
