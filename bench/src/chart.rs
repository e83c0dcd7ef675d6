//! The SVG charts: throughput and CPU per record of each system grouped by scenario, each
//! system's replication lag over time in one scenario, and the hub's cost per site of a fleet.

use std::fmt::Display;
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::lag::LagSeries;
use crate::report::num;
use crate::scenario::System;

/// Every system in column order, with its colour in every chart.
const SYSTEMS: [(System, RGBColor); 3] = [
    (System::Ours, RGBColor(0x1f, 0x77, 0xb4)),
    (System::Mm2, RGBColor(0xd6, 0x27, 0x28)),
    (System::Baseline, RGBColor(0x99, 0x99, 0x99)),
];

/// A system's colour.
fn color(sys: System) -> RGBColor {
    SYSTEMS
        .iter()
        .find(|(s, _)| *s == sys)
        .map_or(BLACK, |(_, c)| *c)
}

/// plotters' errors borrow nothing but are generic over the backend; text is all we keep.
fn drawing(e: impl Display) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

/// A white SVG canvas of `size` pixels at `path` with `title` on top; the area below the title
/// is returned.
fn canvas<'a>(
    path: &'a Path,
    size: (u32, u32),
    title: &str,
) -> Result<DrawingArea<SVGBackend<'a>, Shift>> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    root.titled(title, ("sans-serif", 18)).map_err(drawing)
}

/// The legend of the series drawn with `.label(..)`, framed, at `position`.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(drawing)
}

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
    let root = canvas(path, (1100, 460), title)?;
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
            .map_err(drawing)?;
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
            .map_err(drawing)?;
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
                .map_err(drawing)?
                .label(sys.label())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        legend(&mut chart, SeriesLabelPosition::MiddleRight)?;
    }
    root.present().map_err(drawing)?;
    Ok(())
}

/// An axis label: thousands grouped, no decimals that a round tick does not have ("0", "2.5").
fn tick(v: f64) -> String {
    if v.abs() >= 1000.0 {
        num(v)
    } else {
        format!("{}", (v * 10.0).round() / 10.0)
    }
}

/// Draws each system's lag over time in one scenario into an SVG file: x seconds since the
/// system started, y records not yet at the destination, one line per system.
pub fn draw_lag(path: &Path, title: &str, series: &[(System, &LagSeries)]) -> Result<()> {
    let end_s = series
        .iter()
        .map(|(_, s)| s.end_s())
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let top = series
        .iter()
        .flat_map(|(_, s)| s.points.iter().map(|p| p.1))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let root = canvas(path, (900, 480), title)?;
    let mut chart = ChartBuilder::on(&root)
        .margin(14)
        .x_label_area_size(45)
        .y_label_area_size(85)
        // Headroom above the full count holds the legend: every line starts there, and the
        // slow ones stay there at the right, where a legend inside the plot would hide them.
        .build_cartesian_2d(0.0..end_s * 1.02, 0.0..top * 1.3)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        // Light lines between the labelled ones only add weight to the file.
        .light_line_style(TRANSPARENT)
        .x_desc("seconds after the replicator started")
        .y_desc("records not yet at the destination")
        .axis_desc_style(("sans-serif", 14))
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .draw()
        .map_err(drawing)?;
    for &(sys, s) in series {
        let c = color(sys);
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|&(t, lag)| (t, lag as f64)),
                c.stroke_width(2),
            ))
            .map_err(drawing)?
            .label(format!("{}: {}", sys.label(), s.summary()))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(drawing)?;
    Ok(())
}

/// A fleet size and what the hub spends per connected site.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetPoint {
    /// Connected sites.
    pub sites: usize,
    /// Hub threads per site (over the hub with none).
    pub threads_per_site: f64,
    /// Hub resident KiB per site (over the hub with none).
    pub rss_kib_per_site: f64,
    /// Hub CPU while every site idles, % of a core, per site.
    pub idle_cpu_pct_per_site: f64,
}

/// Picks one cost of a fleet point.
type FleetValue = fn(&FleetPoint) -> f64;

/// Draws the hub's cost per connected site against the fleet size into an SVG file: three
/// panels (threads, resident KiB, idle CPU % per site), x the number of sites.
pub fn draw_fleet(path: &Path, title: &str, points: &[FleetPoint]) -> Result<()> {
    let color = color(System::Ours);
    let root = canvas(path, (1200, 420), title)?;
    let panels = root.split_evenly((1, 3));
    let metrics: [(&str, FleetValue); 3] = [
        ("hub threads per site", |p| p.threads_per_site),
        ("hub resident KiB per site", |p| p.rss_kib_per_site),
        ("hub CPU % of a core per idle site", |p| {
            p.idle_cpu_pct_per_site
        }),
    ];
    let max_sites = points.iter().map(|p| p.sites).max().unwrap_or(1).max(1) as f64;
    for (panel, (desc, value)) in panels.iter().zip(metrics) {
        let top = points.iter().map(value).fold(0.0_f64, f64::max).max(1e-3);
        let bottom = points.iter().map(value).fold(0.0_f64, f64::min).min(0.0);
        let mut chart = ChartBuilder::on(panel)
            .margin(14)
            .caption(desc, ("sans-serif", 15))
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_sites * 1.05, bottom..top * 1.2)
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .x_desc("connected sites")
            .axis_desc_style(("sans-serif", 13))
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .draw()
            .map_err(drawing)?;
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.sites as f64, value(p))),
                color.stroke_width(2),
            ))
            .map_err(drawing)?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| Circle::new((p.sites as f64, value(p)), 4, color.filled())),
            )
            .map_err(drawing)?;
    }
    root.present().map_err(drawing)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_read_as_counts_and_seconds() {
        for (v, label) in [
            (0.0, "0"),
            (2.5, "2.5"),
            (10.0, "10"),
            (0.30000000000000004, "0.3"),
            (50000.0, "50,000"),
        ] {
            assert_eq!(tick(v), label);
        }
    }

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

    #[test]
    fn fleet_chart_has_a_panel_per_cost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.svg");
        let pts = [
            FleetPoint {
                sites: 40,
                threads_per_site: 14.0,
                rss_kib_per_site: 2300.0,
                idle_cpu_pct_per_site: 0.65,
            },
            FleetPoint {
                sites: 200,
                threads_per_site: 13.5,
                rss_kib_per_site: 2100.0,
                idle_cpu_pct_per_site: 0.6,
            },
        ];
        draw_fleet(&path, "fleet", &pts).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for text in [
            "hub threads per site",
            "hub resident KiB per site",
            "connected sites",
        ] {
            assert!(svg.contains(text), "{text:?} missing");
        }
        assert_eq!(polylines(&svg, color(System::Ours)).len(), 3);
    }

    /// The `points` of every `<polyline>` stroked in `color`, as pixel pairs.
    fn polylines(svg: &str, color: RGBColor) -> Vec<Vec<(f64, f64)>> {
        let stroke = format!("stroke=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2);
        svg.lines()
            .filter(|l| l.starts_with("<polyline") && l.contains(&stroke))
            .filter_map(|l| {
                let pts = l.split("points=\"").nth(1)?.split('"').next()?;
                Some(
                    pts.split_whitespace()
                        .filter_map(|xy| {
                            let (x, y) = xy.split_once(',')?;
                            Some((x.parse().ok()?, y.parse().ok()?))
                        })
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn lag_chart_has_a_line_and_a_legend_entry_per_system() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lag.svg");
        let mut ours = LagSeries::new(1000, crate::lag::INTERVAL);
        for (t, arrived) in [(0.0, 0), (0.5, 0), (1.0, 400), (1.5, 900)] {
            ours.push(t, arrived);
        }
        ours.finish(1.8);
        let mut mm2 = LagSeries::new(1000, crate::lag::INTERVAL);
        for (t, arrived) in [(0.0, 0), (1.0, 0), (2.0, 200), (3.0, 700)] {
            mm2.push(t, arrived);
        }
        draw_lag(
            &path,
            "lag in 1k",
            &[(System::Ours, &ours), (System::Mm2, &mm2)],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in [
            "lag in 1k",
            "ours: half by 1.5 s, all by 1.8 s",
            "MM2: half by 3.0 s, not all arrived",
            "seconds after the replicator started",
            "records not yet at the destination",
        ] {
            assert!(svg.contains(text), "{text:?} missing");
        }
        // Per system: its line with every point, then its legend sample.
        let (o, m) = (
            polylines(&svg, color(System::Ours)),
            polylines(&svg, color(System::Mm2)),
        );
        assert_eq!(
            o.iter().map(Vec::len).collect::<Vec<_>>(),
            [ours.points.len(), 2]
        );
        assert_eq!(
            m.iter().map(Vec::len).collect::<Vec<_>>(),
            [mm2.points.len(), 2]
        );
        assert!(polylines(&svg, color(System::Baseline)).is_empty());
        // SVG y grows downwards: both start at the top (all 1000 missing), MM2 ends lower,
        // ours, at zero, lower still.
        let (start, ours_end, mm2_end) =
            (o[0][0].1, o[0].last().unwrap().1, m[0].last().unwrap().1);
        assert_eq!(m[0][0].1, start);
        assert!(
            start < mm2_end && mm2_end < ours_end,
            "{start} {mm2_end} {ours_end}"
        );
    }
}
