//! The SVG chart: throughput and CPU per record of each system, grouped by scenario.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::scenario::System;

const SYSTEMS: [(System, RGBColor); 3] = [
    (System::Ours, RGBColor(0x1f, 0x77, 0xb4)),
    (System::Mm2, RGBColor(0xd6, 0x27, 0x28)),
    (System::Baseline, RGBColor(0x99, 0x99, 0x99)),
];

/// One bar: scenario, system, MB/s, CPU s per million records.
pub type Point = (String, System, f64, f64);

/// Picks one number of a point.
type PointValue = fn(&Point) -> f64;

/// Draws `points` (`scenario, system, MB/s, CPU s per M records`) into an SVG file.
pub fn draw(path: &Path, title: &str, points: &[Point]) -> Result<()> {
    let mut scenarios: Vec<&str> = Vec::new();
    for (s, ..) in points {
        if !scenarios.contains(&s.as_str()) {
            scenarios.push(s);
        }
    }
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(title, ("sans-serif", 18))
        .map_err(|e| anyhow!("{e}"))?;
    let panels = root.split_evenly((1, 2));
    let metrics: [(&str, PointValue); 2] = [
        ("throughput, MB/s (higher is better)", |p| p.2),
        ("CPU s per million records (lower is better)", |p| p.3),
    ];
    for (panel, (caption, get)) in panels.iter().zip(metrics) {
        let max = points
            .iter()
            .map(get)
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max)
            .max(1e-9)
            * 1.15;
        let n = scenarios.len().max(1) as f64;
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..n, 0.0..max)
            .map_err(|e| anyhow!("{e}"))?;
        let names = scenarios.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(scenarios.len() * 2 + 1)
            .x_label_formatter(&move |x| {
                let i = x.floor() as usize;
                let centered = (x - x.floor() - 0.5).abs() < 0.01;
                match names.get(i) {
                    Some(n) if centered => (*n).to_owned(),
                    _ => String::new(),
                }
            })
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        let width = 0.8 / SYSTEMS.len() as f64;
        for (k, (sys, color)) in SYSTEMS.iter().enumerate() {
            let bars: Vec<Rectangle<(f64, f64)>> = points
                .iter()
                .filter(|p| p.1 == *sys && get(p).is_finite())
                .filter_map(|p| {
                    let i = scenarios.iter().position(|s| *s == p.0)? as f64;
                    let x0 = i + 0.1 + k as f64 * width;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.92, get(p))],
                        color.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(|e| anyhow!("{e}"))?
                .label(sys.label())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        let pts = vec![
            ("1k".to_owned(), System::Ours, 80.0, 4.0),
            ("1k".to_owned(), System::Mm2, 30.0, 12.0),
            ("100b".to_owned(), System::Ours, 20.0, 2.0),
            ("100b".to_owned(), System::Baseline, 25.0, 1.5),
        ];
        draw(&path, "test", &pts).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("MM2") && svg.contains("100b"));
    }
}
