//! What a run leaves behind: the table, raw samples (CSV), a JSON summary, an SVG chart and
//! a description of the machine, in one folder named by date and host.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

/// Order statistics of one setup's samples.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Samples.
    pub n: usize,
    /// Median, µs.
    pub median_us: f64,
    /// 10th percentile, µs.
    pub p10_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
}

impl Summary {
    /// Nearest-rank percentiles of `samples` (which must not be empty).
    pub fn of(samples: &[Duration]) -> Self {
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let at = |q: f64| us[((q * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1];
        Self {
            n: us.len(),
            median_us: at(0.5),
            p10_us: at(0.1),
            p90_us: at(0.9),
            p99_us: at(0.99),
        }
    }
}

/// One measured setup.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    /// The setup's name.
    pub name: String,
    /// What "start" means for it.
    pub start: String,
    /// Its statistics.
    #[serde(flatten)]
    pub summary: Summary,
    /// Median over thaw's cold-from-disk median.
    pub ratio_to_thaw_cold: Option<f64>,
    /// For thaw setups: how many samples each start kind served (from `Server-Timing`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub start_kinds: std::collections::BTreeMap<String, usize>,
    /// Raw samples.
    #[serde(skip)]
    pub samples: Vec<Duration>,
}

/// A setup that did not run, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    /// The setup's name.
    pub name: String,
    /// Why (a missing tool, a failed start).
    pub reason: String,
}

/// One throughput run.
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    /// The server.
    pub server: String,
    /// Open connections.
    pub concurrency: u32,
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Latency median, ms.
    pub p50_ms: f64,
    /// Latency 99th percentile, ms.
    pub p99_ms: f64,
    /// Responses that were not 2xx/3xx, plus socket errors.
    pub errors: u64,
}

/// The results folder `<out>/<YYYY-MM-DD>-<host>[-N]`.
pub fn results_dir(out: &Path, host: &str) -> anyhow::Result<PathBuf> {
    let date = today();
    let mut dir = out.join(format!("{date}-{host}"));
    let mut n = 2;
    while dir.exists() {
        dir = out.join(format!("{date}-{host}-{n}"));
        n += 1;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Today's UTC date, `YYYY-MM-DD`.
pub fn today() -> String {
    let mut date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    date.truncate("YYYY-MM-DD".len());
    date
}

fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else if us >= 1_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// The cold-start table, Markdown.
pub fn table(measured: &[Measured], skipped: &[Skipped]) -> String {
    let mut t = String::new();
    t.push_str("| setup | median | p10 | p90 | p99 | n | × thaw cold |\n");
    t.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for m in measured {
        let s = &m.summary;
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} |",
            m.name,
            fmt_us(s.median_us),
            fmt_us(s.p10_us),
            fmt_us(s.p90_us),
            fmt_us(s.p99_us),
            s.n,
            m.ratio_to_thaw_cold
                .map_or_else(|| "–".into(), |r| format!("{r:.1}×")),
        );
    }
    for s in skipped {
        let _ = writeln!(t, "| {} | skipped: {} | | | | | |", s.name, s.reason);
    }
    t
}

/// The throughput table, Markdown.
pub fn throughput_table(runs: &[Throughput]) -> String {
    let mut t = String::new();
    t.push_str("| server | connections | requests/s | p50 | p99 | errors |\n");
    t.push_str("|---|---:|---:|---:|---:|---:|\n");
    for r in runs {
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {} |",
            r.server, r.concurrency, r.requests_per_sec, r.p50_ms, r.p99_ms, r.errors
        );
    }
    t
}

/// Raw samples: `setup,sample,micros`.
pub fn csv(measured: &[Measured]) -> String {
    let mut out = String::from("setup,sample,micros\n");
    for m in measured {
        for (i, d) in m.samples.iter().enumerate() {
            let _ = writeln!(out, "\"{}\",{i},{:.1}", m.name, d.as_secs_f64() * 1e6);
        }
    }
    out
}

/// A horizontal chart, log scale: a bar to each setup's median, a line from p10 to p90.
pub fn svg(measured: &[Measured], path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    anyhow::ensure!(!measured.is_empty(), "nothing measured");
    let height = 80 + 34 * measured.len() as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let lo = measured
        .iter()
        .map(|m| m.summary.p10_us)
        .fold(f64::INFINITY, f64::min)
        .max(1.0)
        / 2.0;
    let hi = measured
        .iter()
        .map(|m| m.summary.p90_us)
        .fold(0.0, f64::max)
        * 2.0;
    let n = measured.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Start to first response byte over 127.0.0.1 (median; line: p10–p90)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(300)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..n as f64)?;
    let names: Vec<String> = measured.iter().map(|m| m.name.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n * 2 + 1)
        .y_label_formatter(&|y| {
            // Labels sit at the middle of each band.
            let i = y.floor() as usize;
            if (y - y.floor() - 0.5).abs() < 1e-6 && i < n {
                names[n - 1 - i].clone()
            } else {
                String::new()
            }
        })
        .x_desc("start to first response byte (log scale)")
        .x_label_formatter(&|x| fmt_us(*x))
        .draw()?;
    for (i, m) in measured.iter().enumerate() {
        let y = (n - 1 - i) as f64;
        let colour = if m.name.starts_with("thaw") {
            RGBColor(31, 119, 180)
        } else {
            RGBColor(150, 150, 150)
        };
        chart.draw_series(std::iter::once(Rectangle::new(
            [(lo, y + 0.2), (m.summary.median_us, y + 0.8)],
            colour.filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(m.summary.p10_us, y + 0.5), (m.summary.p90_us, y + 0.5)],
            BLACK.stroke_width(2),
        )))?;
    }
    root.present()?;
    Ok(())
}

/// The machine a run measured: CPU, cores, memory, kernel, OS, and every tool's version.
pub fn machine(tools: &[(&str, Option<String>)]) -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let field = |text: &str, key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key)).map(|v| {
            v.trim_start_matches([' ', '\t', ':', '='])
                .trim()
                .trim_matches('"')
                .to_owned()
        })
    };
    let mem_kib: u64 = field(&read("/proc/meminfo"), "MemTotal")
        .and_then(|v| v.trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    let versions: serde_json::Map<String, serde_json::Value> = tools
        .iter()
        .map(|(name, version)| ((*name).to_owned(), version.clone().into()))
        .collect();
    serde_json::json!({
        "host": hostname(),
        "cpu": field(&cpuinfo, "model name"),
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": (mem_kib as f64 / (1u64 << 20) as f64 * 10.0).round() / 10.0,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "os": field(&read("/etc/os-release"), "PRETTY_NAME"),
        "versions": versions,
    })
}

/// The host name, for the results folder.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// First line of `program args...`'s output (stdout, else stderr), or `None` if it does
/// not run.
pub fn version_of(program: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<_> = (1..=100).map(Duration::from_micros).collect();
        let s = Summary::of(&samples);
        assert_eq!(
            (s.median_us, s.p10_us, s.p90_us, s.p99_us),
            (50.0, 10.0, 90.0, 99.0)
        );
        let one = Summary::of(&[Duration::from_micros(7)]);
        assert_eq!((one.median_us, one.p99_us), (7.0, 7.0));
    }

    #[test]
    fn today_is_a_date() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"), "{d}");
    }
}
