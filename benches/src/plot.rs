//! The report's plots, drawn with plotters and written as PNG.
//!
//! Text needs a TrueType font found on the system (DejaVu Sans); without
//! one the plots have no text and the Markdown beside them has the labels.

use std::{fs::File, io::BufWriter, path::Path, sync::OnceLock};

use anyhow::{anyhow, Result};
use plotters::{coord::Shift, prelude::*};

use crate::{load::Phase, results::Results, scenarios::Subject};

const FONT_FILES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a system font once; `false` when none was found.
fn fonts() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        for path in FONT_FILES {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draws with `draw` into a `w`×`h` PNG at `path`.
fn render(
    path: &Path,
    (w, h): (u32, u32),
    draw: impl FnOnce(&Area<'_>, bool) -> Result<()>,
) -> Result<()> {
    let text = fonts();
    let mut buffer = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        draw(&root, text)?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    let mut encoder = png::Encoder::new(BufWriter::new(File::create(path)?), w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&buffer)?;
    writer.finish()?;
    Ok(())
}

/// Every plot the results allow; returns (file name, caption) pairs.
pub fn all(r: &Results, dir: &Path) -> Result<Vec<(String, String)>> {
    let name = &r.meta.name;
    let mut out = Vec::new();
    let mut plot = |suffix: &str, caption: &str, f: &dyn Fn(&Path) -> Result<()>| -> Result<()> {
        let file = format!("{name}-{suffix}.png");
        f(&dir.join(&file))?;
        out.push((file, caption.to_owned()));
        Ok(())
    };
    if !r.reads.is_empty() || !r.orders.is_empty() {
        plot(
            "throughput",
            "Throughput at saturation: reads (left, requests/s) and orders (right, orders/s; pgbench is the order SQL without the API).",
            &|p| throughput(r, p),
        )?;
        plot(
            "latency",
            "Latency percentiles at 90% of each subject's maximum (fixed rate, log scale, ms).",
            &|p| percentiles(r, p),
        )?;
        plot(
            "timeline",
            "p99 latency over time at 90% of each subject's maximum, per slice of the run (ms, log scale).",
            &|p| timeline(r, p),
        )?;
    }
    if !r.freshness.is_empty() {
        plot(
            "freshness",
            "Freshness: lag from the commit acknowledgement to the order being visible, over time, per offered order rate (ms).",
            &|p| freshness(r, p),
        )?;
    }
    Ok(out)
}

/// Draws the chart's legend box at `position`, the same on every plot.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("{e}")
}

fn bars(
    area: &Area<'_>,
    text: bool,
    title: &str,
    unit: &str,
    items: &[(String, f64)],
) -> Result<()> {
    let n = items.len().max(1) as f64;
    let max = items.iter().map(|(_, v)| *v).fold(1.0, f64::max) * 1.45;
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(12)
        .x_label_area_size(if text { 40 } else { 8 })
        .y_label_area_size(8);
    if text {
        builder.caption(title, ("sans-serif", 20));
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..max, 0f64..n)
        .map_err(err)?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_y_mesh().y_labels(0);
    if text {
        mesh.x_desc(unit)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 13));
    } else {
        mesh.x_labels(0);
    }
    mesh.draw().map_err(err)?;
    for (i, (label, v)) in items.iter().enumerate() {
        let y = n - 1.0 - i as f64;
        let color = Palette99::pick(i).mix(0.8);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y + 0.15), (*v, y + 0.85)],
                color.filled(),
            )))
            .map_err(err)?;
        if text {
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{label}  {v:.0}"),
                    (v + max * 0.01, y + 0.62),
                    ("sans-serif", 14),
                )))
                .map_err(err)?;
        }
    }
    Ok(())
}

fn throughput(r: &Results, path: &Path) -> Result<()> {
    render(path, (1400, 560), |root, text| {
        let (left, right) = root.split_horizontally(700);
        let reads: Vec<(String, f64)> = r
            .reads
            .iter()
            .map(|s| (s.key.clone(), s.max_rps()))
            .collect();
        bars(
            &left,
            text,
            "Reads at saturation",
            "requests per second",
            &reads,
        )?;
        let mut orders: Vec<(String, f64)> = r
            .orders
            .iter()
            .map(|s| (s.key.clone(), s.max_rps()))
            .collect();
        if let Some(p) = &r.pgbench {
            orders.push(("pgbench (same SQL)".to_owned(), p.tps));
        }
        bars(
            &right,
            text,
            "Orders at saturation",
            "orders per second",
            &orders,
        )?;
        Ok(())
    })
}

fn at_90(subjects: &[Subject]) -> Vec<(&str, &Phase)> {
    subjects
        .iter()
        .filter_map(|s| s.at_90.as_ref().map(|p| (s.key.as_str(), p)))
        .collect()
}

fn percentiles(r: &Results, path: &Path) -> Result<()> {
    let names = ["p50", "p90", "p99", "p99.9", "max"];
    let series: Vec<(&str, &Phase)> = at_90(&r.reads)
        .into_iter()
        .chain(at_90(&r.orders))
        .collect();
    let values = |p: &Phase| {
        [
            p.latency.p50_ms,
            p.latency.p90_ms,
            p.latency.p99_ms,
            p.latency.p999_ms,
            p.latency.max_ms,
        ]
    };
    let top = series
        .iter()
        .flat_map(|(_, p)| values(p))
        .fold(1.0, f64::max)
        * 2.0;
    let bottom = series
        .iter()
        .flat_map(|(_, p)| values(p))
        .filter(|v| *v > 0.0)
        .fold(top, f64::min)
        .max(0.01)
        / 2.0;
    render(path, (1100, 650), |root, text| {
        let mut builder = ChartBuilder::on(root);
        builder
            .margin(15)
            .x_label_area_size(if text { 40 } else { 8 })
            .y_label_area_size(if text { 60 } else { 8 });
        if text {
            builder.caption("Latency at 90% of maximum (ms)", ("sans-serif", 22));
        }
        let mut chart = builder
            .build_cartesian_2d(-0.3f64..4.3f64, (bottom..top).log_scale())
            .map_err(err)?;
        let label = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 0.01 && (0.0..=4.0).contains(&i) {
                names[i as usize].to_owned()
            } else {
                String::new()
            }
        };
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_labels(5)
                .x_label_formatter(&label)
                .y_desc("milliseconds")
                .label_style(("sans-serif", 13));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(err)?;
        for (i, (key, phase)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = values(phase)
                .iter()
                .enumerate()
                .map(|(x, v)| (x as f64, v.max(bottom)))
                .collect();
            let drawn = chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(err)?;
            if text {
                drawn.label(key.to_string()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(err)?;
        }
        if text {
            legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        }
        Ok(())
    })
}

fn timeline(r: &Results, path: &Path) -> Result<()> {
    let series: Vec<(&str, &Phase)> = at_90(&r.reads)
        .into_iter()
        .chain(at_90(&r.orders))
        .collect();
    let t_max = series
        .iter()
        .flat_map(|(_, p)| p.timeline.iter().map(|t| t.t_s))
        .fold(1.0, f64::max);
    let top = series
        .iter()
        .flat_map(|(_, p)| p.timeline.iter().map(|t| t.p99_ms))
        .fold(1.0, f64::max)
        * 2.0;
    let bottom = series
        .iter()
        .flat_map(|(_, p)| p.timeline.iter().map(|t| t.p99_ms))
        .filter(|v| *v > 0.0)
        .fold(top, f64::min)
        .max(0.01)
        / 2.0;
    render(path, (1100, 600), |root, text| {
        let mut builder = ChartBuilder::on(root);
        builder
            .margin(15)
            .x_label_area_size(if text { 40 } else { 8 })
            .y_label_area_size(if text { 60 } else { 8 });
        if text {
            builder.caption("p99 over time at 90% of maximum (ms)", ("sans-serif", 22));
        }
        let mut chart = builder
            .build_cartesian_2d(0f64..t_max, (bottom..top).log_scale())
            .map_err(err)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("seconds into the measured window")
                .y_desc("p99 ms")
                .label_style(("sans-serif", 13));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(err)?;
        for (i, (key, phase)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = phase
                .timeline
                .iter()
                .filter(|t| t.p99_ms > 0.0)
                .map(|t| (t.t_s, t.p99_ms))
                .collect();
            let drawn = chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(err)?;
            if text {
                drawn.label(key.to_string()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
        }
        if text {
            legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
        Ok(())
    })
}

fn freshness(r: &Results, path: &Path) -> Result<()> {
    let t_max = r
        .freshness
        .iter()
        .flat_map(|f| f.samples.iter().map(|(t, _)| *t))
        .fold(0.5, f64::max);
    let top = r
        .freshness
        .iter()
        .flat_map(|f| f.samples.iter().map(|(_, l)| *l))
        .fold(1.0, f64::max)
        * 1.1;
    render(path, (1100, 600), |root, text| {
        let mut builder = ChartBuilder::on(root);
        builder
            .margin(15)
            .x_label_area_size(if text { 40 } else { 8 })
            .y_label_area_size(if text { 60 } else { 8 });
        if text {
            builder.caption("Commit to visible, per order (ms)", ("sans-serif", 22));
        }
        let mut chart = builder
            .build_cartesian_2d(0f64..t_max, 0f64..top)
            .map_err(err)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("seconds into the phase")
                .y_label_formatter(&|v| format!("{v:.0}"))
                .y_desc("lag, ms")
                .label_style(("sans-serif", 13));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(err)?;
        for (i, f) in r.freshness.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let drawn = chart
                .draw_series(
                    f.samples
                        .iter()
                        .map(|(t, l)| Circle::new((*t, *l), 2, color.mix(0.6).filled())),
                )
                .map_err(err)?;
            if text {
                drawn
                    .label(format!(
                        "{:.0} orders/s offered (p99 {:.1} ms)",
                        f.offered_rps, f.p99_ms
                    ))
                    .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
            }
        }
        if text {
            legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
        Ok(())
    })
}
