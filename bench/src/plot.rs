//! `target/bench/latency.svg`: p50 and p99 latency against concurrency for the empty
//! component, `GET /api/products` and `POST /api/orders`, per host.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::load::Figures;
use crate::Results;

pub fn latency_against_concurrency(results: &Results, path: &Path) -> Result<()> {
    let series: Vec<(String, &[Figures], RGBColor)> = results
        .hosts
        .iter()
        .flat_map(|host| {
            // The runner in strong colours, `spin up` in light ones.
            let [empty, products, orders] = if host.host == "runner" {
                [
                    RGBColor(90, 90, 90),
                    RGBColor(31, 119, 180),
                    RGBColor(214, 39, 40),
                ]
            } else {
                [
                    RGBColor(170, 170, 170),
                    RGBColor(140, 190, 230),
                    RGBColor(240, 150, 150),
                ]
            };
            [
                (
                    format!("{}: empty component", host.host),
                    &host.empty[..],
                    empty,
                ),
                (
                    format!("{}: GET /api/products", host.host),
                    &host.products[..],
                    products,
                ),
                (
                    format!("{}: POST /api/orders", host.host),
                    &host.orders[..],
                    orders,
                ),
            ]
        })
        .collect();
    let max_connections = series
        .iter()
        .flat_map(|(_, figures, _)| figures.iter().map(|f| f.connections))
        .max()
        .unwrap_or(1)
        .max(2);
    let max_ms = series
        .iter()
        .flat_map(|(_, figures, _)| figures.iter().map(|f| f.p99_ms))
        .filter(|ms| ms.is_finite())
        .fold(1.0_f64, f64::max);

    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Latency against concurrency (solid p50, dashed p99), {}",
                    results.machine.date
                ),
                ("sans-serif", 18),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d((1u32..max_connections).log_scale(), 0.0..max_ms * 1.1)?;
        chart
            .configure_mesh()
            .x_desc("connections")
            .y_desc("latency (ms)")
            .draw()?;
        for (name, figures, color) in &series {
            let points = |pick: fn(&Figures) -> f64| -> Vec<(u32, f64)> {
                figures.iter().map(|f| (f.connections, pick(f))).collect()
            };
            let color = *color;
            chart
                .draw_series(LineSeries::new(points(|f| f.p50_ms), color.stroke_width(2)))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(DashedLineSeries::new(
                points(|f| f.p99_ms),
                6,
                4,
                color.stroke_width(1),
            ))?;
            chart.draw_series(
                points(|f| f.p50_ms)
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}
