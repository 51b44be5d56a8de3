//! Latency histograms and the result record every scenario prints and writes as JSON.

use std::{path::Path, time::Duration};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Microsecond histogram from 1 µs to 60 s with 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self { count: h.len(), p50_ms: ms(0.5), p90_ms: ms(0.9), p99_ms: ms(0.99), p999_ms: ms(0.999), max_ms: h.max() as f64 / 1000.0 }
    }
}

#[derive(Debug, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub offered_rate: Option<f64>,
    pub duration_s: f64,
    pub ok: u64,
    pub errors: u64,
    pub achieved_rate: f64,
    pub latency: Latency,
}

impl RunResult {
    pub fn print(&self) {
        let offered = self.offered_rate.map(|r| format!("{r:.0}/s")).unwrap_or_else(|| "saturation".into());
        println!(
            "{:<10} offered {:>10}  achieved {:>8.1}/s  ok {:>7}  errors {:>5}  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms",
            self.scenario,
            offered,
            self.achieved_rate,
            self.ok,
            self.errors,
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.p999_ms,
            self.latency.max_ms
        );
    }
}

/// Writes any scenario's results as pretty JSON, creating the directory.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, results: &T) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(results)?)?;
    Ok(())
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
