//! The report's two SVG charts.

use crate::model::{Cell, System};
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::Path;

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

/// Rate (Mpps) or payload Gbit/s vs frame size, one line per system, log-log.
pub fn chart(path: &Path, cells: &[Cell], sizes: &[usize], gbit: bool, title: &str) -> Result<()> {
    let val = |c: &Cell| -> Option<f64> {
        if gbit {
            c.gbps()
        } else {
            c.median().map(|p| p / 1e6)
        }
    };
    let series: Vec<(System, Vec<(f64, f64)>)> = System::THROUGHPUT
        .iter()
        .map(|&s| {
            let pts = sizes
                .iter()
                .filter_map(|&f| {
                    cells
                        .iter()
                        .find(|c| c.system == s && c.frame == f)
                        .and_then(val)
                        .filter(|v| *v > 0.0)
                        .map(|v| (f as f64, v))
                })
                .collect();
            (s, pts)
        })
        .collect();
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .collect();
    if all.is_empty() {
        return Ok(());
    }
    let lo = all.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = all.iter().cloned().fold(0.0, f64::max);
    let (y0, y1) = (
        10f64.powf((lo.log10() - 0.2).floor()),
        10f64.powf((hi.log10() + 0.2).ceil()),
    );
    let (x0, x1) = (
        *sizes.first().unwrap_or(&64) as f64 / 1.5,
        *sizes.last().unwrap_or(&65536) as f64 * 1.5,
    );
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).context("chart")?;
    let mut ch = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .context("chart")?;
    ch.configure_mesh()
        .x_desc("frame size (bytes)")
        .y_desc(if gbit {
            "payload Gbit/s"
        } else {
            "Mpps at the receiver"
        })
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y}")
            }
        })
        .draw()
        .context("chart")?;
    for (i, (s, pts)) in series.iter().enumerate() {
        if pts.is_empty() {
            continue;
        }
        let color = COLORS[i % COLORS.len()];
        let style = ShapeStyle::from(&color).stroke_width(2);
        ch.draw_series(LineSeries::new(pts.clone(), style))
            .context("chart")?
            .label(s.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        ch.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .context("chart")?;
    }
    ch.configure_series_labels()
        .position(if gbit {
            SeriesLabelPosition::UpperLeft
        } else {
            SeriesLabelPosition::LowerLeft
        })
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .context("chart")?;
    root.present().context("chart")?;
    Ok(())
}
