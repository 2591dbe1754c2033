//! Side-by-side comparisons: one workload against several brokers, interleaved A B A B so that
//! drift on a shared machine hits every target alike; each target's median, and ratios to the
//! first target.

use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::cli::CompareCmd;
use crate::run::{self, Report};

#[derive(Debug, Serialize)]
struct Run {
    target: String,
    repetition: usize,
    report: Report,
}

#[derive(Debug, Serialize)]
struct Metric {
    name: &'static str,
    /// Whether a larger value is better (throughput) or worse (latency).
    higher_is_better: bool,
    /// Median per target, in target order.
    medians: Vec<f64>,
    /// Each target's median over the first target's.
    ratios_to_first: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Comparison {
    targets: Vec<(String, String)>,
    repetitions: usize,
    workload: String,
    metrics: Vec<Metric>,
    runs: Vec<Run>,
}

pub fn parse_targets(cmd: &CompareCmd) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = cmd
        .bootstraps
        .iter()
        .map(|b| (b.clone(), b.clone()))
        .collect();
    for t in &cmd.targets {
        match t.split_once('=') {
            Some((name, addr)) if !name.is_empty() && !addr.is_empty() => {
                out.push((name.to_string(), addr.to_string()))
            }
            _ => bail!("--targets wants NAME=HOST:PORT, got {t}"),
        }
    }
    if out.len() < 2 {
        bail!("compare needs at least two targets (--bootstrap A --bootstrap B, or --targets a=A,b=B)");
    }
    Ok(out)
}

pub fn median(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

type Extract = fn(&Report) -> Option<f64>;

const METRICS: &[(&str, bool, Extract)] = &[
    ("produce msgs/s", true, |r| {
        r.produce.as_ref().map(|f| f.msgs_per_sec)
    }),
    ("produce MB/s", true, |r| {
        r.produce.as_ref().map(|f| f.mb_per_sec)
    }),
    ("produce p50 ms", false, |r| {
        r.produce.as_ref()?.latency.as_ref().map(|l| l.p50_ms)
    }),
    ("produce p99 ms", false, |r| {
        r.produce.as_ref()?.latency.as_ref().map(|l| l.p99_ms)
    }),
    ("produce p99.9 ms", false, |r| {
        r.produce.as_ref()?.latency.as_ref().map(|l| l.p99_9_ms)
    }),
    ("consume msgs/s", true, |r| {
        r.consume.as_ref().map(|f| f.msgs_per_sec)
    }),
    ("consume MB/s", true, |r| {
        r.consume.as_ref().map(|f| f.mb_per_sec)
    }),
    ("e2e p50 ms", false, |r| {
        r.e2e_latency.as_ref().map(|l| l.p50_ms)
    }),
    ("e2e p99 ms", false, |r| {
        r.e2e_latency.as_ref().map(|l| l.p99_ms)
    }),
    ("e2e p99.9 ms", false, |r| {
        r.e2e_latency.as_ref().map(|l| l.p99_9_ms)
    }),
    ("e2e max ms", false, |r| {
        r.e2e_latency.as_ref().map(|l| l.max_ms)
    }),
    ("broker CPU s/GB", false, |r| {
        r.usage.as_ref()?.broker_cpu_secs_per_gb
    }),
];

pub async fn run(cmd: &CompareCmd) -> Result<()> {
    let targets = parse_targets(cmd)?;
    if cmd.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    if cmd.workload.common().broker_pid.is_some() {
        eprintln!("note: --broker-pid names one process; its CPU figures apply to every target");
    }
    let mut runs = Vec::new();
    for rep in 0..cmd.repetitions {
        for (name, addr) in &targets {
            let mut w = cmd.workload.clone();
            let c = w.common_mut();
            c.bootstrap = addr.clone();
            c.json = None;
            eprintln!("== round {}/{}: {name} ({addr})", rep + 1, cmd.repetitions);
            let report = run::run(&w).await?;
            report.print();
            runs.push(Run {
                target: name.clone(),
                repetition: rep,
                report,
            });
            tokio::time::sleep(Duration::from_secs_f64(cmd.pause_secs.max(0.0))).await;
        }
    }

    let mut metrics = Vec::new();
    for (name, higher_is_better, extract) in METRICS {
        let mut medians = Vec::new();
        for (t, _) in &targets {
            let mut xs: Vec<f64> = runs
                .iter()
                .filter(|r| &r.target == t)
                .filter_map(|r| extract(&r.report))
                .collect();
            if xs.is_empty() {
                break;
            }
            medians.push(median(&mut xs));
        }
        if medians.len() != targets.len() {
            continue; // not reported by this workload (or not by every target)
        }
        let ratios = medians.iter().map(|m| m / medians[0]).collect();
        metrics.push(Metric {
            name,
            higher_is_better: *higher_is_better,
            medians,
            ratios_to_first: ratios,
        });
    }

    // Markdown table: one row per metric.
    let first = &targets[0].0;
    let mut header = String::from("| metric (median of ");
    header += &format!("{}) |", cmd.repetitions);
    let mut rule = String::from("|---|");
    for (t, _) in &targets {
        header += &format!(" {t} |");
        rule += "---:|";
    }
    for (t, _) in targets.iter().skip(1) {
        header += &format!(" {t} / {first} |");
        rule += "---:|";
    }
    println!();
    println!("{header}");
    println!("{rule}");
    for m in &metrics {
        let mut row = format!("| {} |", m.name);
        for v in &m.medians {
            row += &format!(" {} |", fmt_num(*v));
        }
        for r in m.ratios_to_first.iter().skip(1) {
            row += &format!(" {r:.2}x |");
        }
        println!("{row}");
    }

    if let Some(path) = &cmd.json {
        let workload = runs
            .first()
            .map(|r| r.report.workload.clone())
            .unwrap_or_default();
        let cmp = Comparison {
            targets,
            repetitions: cmd.repetitions,
            workload,
            metrics,
            runs,
        };
        let f = std::fs::File::create(path)?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(f), &cmp)?;
    }
    Ok(())
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
