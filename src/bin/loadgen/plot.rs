//! PNG plots of the JSON results, drawn by the tool itself (plotters): latency percentiles
//! against offered rate for the fan-out runs (one colour per driver), and for the idle run
//! server RSS against open connections and open connections over time, one line per server.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Deserialize;

#[derive(clap::Args)]
pub struct Args {
    /// `targeted` result files (JSON) to draw on one latency chart
    #[arg(long, value_delimiter = ',')]
    latency: Vec<PathBuf>,
    /// Where the latency chart goes
    #[arg(long, default_value = "bench/plots/fanout-latency.png")]
    latency_out: PathBuf,
    /// An `idle` result file: `[{"server": s, "connections": n, "rss_kib": k}, ...]`
    #[arg(long)]
    rss: Option<PathBuf>,
    #[arg(long, default_value = "bench/plots/idle-rss.png")]
    rss_out: PathBuf,
    /// An `idle` ramp file: `[{"server": s, "t": seconds, "connections": n}, ...]`
    #[arg(long)]
    ramp: Option<PathBuf>,
    #[arg(long, default_value = "bench/plots/idle-ramp.png")]
    ramp_out: PathBuf,
}

#[derive(Deserialize)]
struct Step {
    driver: String,
    offered_deliveries_per_s: f64,
    latency: Percentiles,
}

#[derive(Deserialize)]
struct Percentiles {
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

/// Which percentile a series draws.
type Pick = fn(&Percentiles) -> f64;

#[derive(Deserialize)]
struct RssPoint {
    #[serde(default)]
    server: String,
    connections: f64,
    rss_kib: f64,
}

#[derive(Deserialize)]
struct RampPoint {
    server: String,
    t: f64,
    connections: f64,
}

/// Named series of (x, y) points, in the order they first appear.
type Series = Vec<(String, Vec<(f64, f64)>)>;

fn group(points: impl Iterator<Item = (String, f64, f64)>) -> Series {
    let mut series: Series = Vec::new();
    for (name, x, y) in points {
        match series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, xs)) => xs.push((x, y)),
            None => series.push((name, vec![(x, y)])),
        }
    }
    series
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    Ok(serde_json::from_slice(&std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)?)
}

fn parent_dir(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.latency.is_empty() {
        let runs: Vec<Vec<Step>> = args.latency.iter().map(|p| read(p)).collect::<anyhow::Result<_>>()?;
        latency_chart(&runs, &args.latency_out)?;
        println!("wrote {}", args.latency_out.display());
    }
    if let Some(rss) = &args.rss {
        let points: Vec<RssPoint> = read(rss)?;
        let series = group(points.into_iter().map(|p| (p.server, p.connections, p.rss_kib / 1024.0)));
        let labels = ("Process RSS vs idle connections", "open connections", "RSS (MiB)");
        xy_chart(&series, labels, true, &args.rss_out)?;
        println!("wrote {}", args.rss_out.display());
    }
    if let Some(ramp) = &args.ramp {
        let points: Vec<RampPoint> = read(ramp)?;
        let series = group(points.into_iter().map(|p| (p.server, p.t, p.connections)));
        let labels = ("Connections opened over time (offered: 4,000/s to 2,000, then the connect rate)", "seconds", "open connections");
        xy_chart(&series, labels, false, &args.ramp_out)?;
        println!("wrote {}", args.ramp_out.display());
    }
    Ok(())
}

fn latency_chart(runs: &[Vec<Step>], out: &Path) -> anyhow::Result<()> {
    parent_dir(out)?;
    let steps = || runs.iter().flatten();
    let max_rate = steps().map(|s| s.offered_deliveries_per_s).fold(1.0, f64::max) * 1.05;
    let max_ms = steps().map(|s| s.latency.p999_ms).fold(1.0, f64::max).max(25.0);
    let root = BitMapBackend::new(out, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Delivery latency vs offered rate (two notify processes)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_rate, (0.5..max_ms).log_scale())?;
    chart.configure_mesh().x_desc("offered deliveries per second").y_desc("latency (ms, log)").draw()?;
    let colours = [BLUE, RED, GREEN, MAGENTA];
    for (i, run) in runs.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let driver = run.first().map(|s| s.driver.as_str()).unwrap_or("?");
        // p50 thin, p99 thick, p99.9 thick and faded.
        let percentiles: [(&str, Pick, u32, f64); 3] =
            [("p50", |p| p.p50_ms, 1, 1.0), ("p99", |p| p.p99_ms, 3, 1.0), ("p99.9", |p| p.p999_ms, 3, 0.35)];
        for (name, pick, width, alpha) in percentiles {
            let style = colour.mix(alpha).stroke_width(width);
            let series = run.iter().map(|s| (s.offered_deliveries_per_s, pick(&s.latency).max(0.5)));
            chart
                .draw_series(LineSeries::new(series, style))?
                .label(format!("{driver} {name}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
    }
    chart
        .draw_series(LineSeries::new([(0.0, 20.0), (max_rate, 20.0)], BLACK.stroke_width(1)))?
        .label("20 ms")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One line per series; `marks` draws each point too (for sparse series).
fn xy_chart(series: &Series, (caption, x_desc, y_desc): (&str, &str, &str), marks: bool, out: &Path) -> anyhow::Result<()> {
    parent_dir(out)?;
    let all = || series.iter().flat_map(|(_, xs)| xs.iter());
    let max_x = all().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let max_y = all().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let root = BitMapBackend::new(out, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
    chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw()?;
    let colours = [BLUE, RED, GREEN, MAGENTA];
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = colours[i % colours.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        if marks {
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, colour.filled())))?;
        }
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
