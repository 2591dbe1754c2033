//! CPU time and memory from /proc: the harness's own, and optionally the broker's (by pid), so a
//! run can report CPU seconds per GB and resident memory next to its throughput.

use serde::Serialize;

use crate::clock::now_ns;

/// `USER_HZ`: the unit of utime/stime in /proc/PID/stat; fixed at 100 by the Linux ABI.
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    at_ns: u64,
    harness_cpu_secs: f64,
    broker: Option<(f64, u64)>,
    /// Whole machine: (busy, total) jiffies summed over CPUs, and the CPUs, from /proc/stat.
    machine: Option<(u64, u64, usize)>,
}

/// Busy and total time of all CPUs, and how many there are, from one read of /proc/stat.
fn machine_times() -> Option<(u64, u64, usize)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let (busy, total) = machine_jiffies_in(&stat)?;
    Some((busy, total, cpus_in(&stat).max(1)))
}

/// Busy and total time of all CPUs. Busy excludes idle and iowait.
fn machine_jiffies_in(stat: &str) -> Option<(u64, u64)> {
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .take(8) // user nice system idle iowait irq softirq steal (guest is inside user)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

/// The machine's CPUs, as /proc/stat counts them (its first line sums these): not the ones this
/// process may run on, which `taskset` can make fewer.
fn cpus_in(stat: &str) -> usize {
    stat.lines()
        .filter_map(|line| line.strip_prefix("cpu"))
        .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        .count()
}

/// user + system CPU seconds of a process (all its threads).
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Sample {
    pub fn take(broker_pid: Option<u32>) -> Sample {
        Sample {
            at_ns: now_ns(),
            harness_cpu_secs: cpu_secs("self").unwrap_or(0.0),
            broker: broker_pid.and_then(|p| Some((cpu_secs(&p.to_string())?, rss_kib(p)?))),
            machine: machine_times(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Usage {
    pub wall_secs: f64,
    pub harness_cpu_secs: f64,
    /// Cores the harness kept busy on average.
    pub harness_cores: f64,
    pub broker_cpu_secs: Option<f64>,
    pub broker_cores: Option<f64>,
    /// Broker CPU seconds per GB (10^9 bytes) of measured payload.
    pub broker_cpu_secs_per_gb: Option<f64>,
    pub broker_rss_mib: Option<f64>,
    /// The machine's CPUs (all of them, whatever this process's affinity).
    pub machine_cpus: Option<usize>,
    /// Cores busy on the whole machine on average (this is a shared VM).
    pub machine_busy_cores: Option<f64>,
    /// Of those, cores used by processes other than the harness and the broker (the broker is
    /// among them when its pid was not given).
    pub other_cores: Option<f64>,
}

impl Usage {
    pub fn between(a: &Sample, b: &Sample, bytes: u64) -> Usage {
        let wall = (b.at_ns.saturating_sub(a.at_ns)) as f64 / 1e9;
        let per_wall = |x: f64| if wall > 0.0 { x / wall } else { 0.0 };
        let harness = b.harness_cpu_secs - a.harness_cpu_secs;
        let broker = match (a.broker, b.broker) {
            (Some((c0, _)), Some((c1, _))) => Some(c1 - c0),
            _ => None,
        };
        let machine_cpus = b.machine.map(|(_, _, cpus)| cpus);
        let machine_busy = match (a.machine, b.machine) {
            (Some((b0, t0, _)), Some((b1, t1, cpus))) if t1 > t0 => {
                Some((b1 - b0) as f64 / (t1 - t0) as f64 * cpus as f64)
            }
            _ => None,
        };
        let other =
            machine_busy.map(|m| (m - per_wall(harness) - broker.map_or(0.0, per_wall)).max(0.0));
        Usage {
            wall_secs: wall,
            machine_cpus,
            machine_busy_cores: machine_busy,
            other_cores: other,
            harness_cpu_secs: harness,
            harness_cores: per_wall(harness),
            broker_cpu_secs: broker,
            broker_cores: broker.map(per_wall),
            broker_cpu_secs_per_gb: broker
                .filter(|_| bytes > 0)
                .map(|c| c / (bytes as f64 / 1e9)),
            broker_rss_mib: b.broker.map(|(_, kib)| kib as f64 / 1024.0),
        }
    }

    pub fn line(&self) -> String {
        let mut s = format!(
            "harness CPU {:.2} s ({:.2} cores)",
            self.harness_cpu_secs, self.harness_cores
        );
        if let (Some(c), Some(cores)) = (self.broker_cpu_secs, self.broker_cores) {
            s += &format!("; broker CPU {c:.2} s ({cores:.2} cores)");
        }
        if let Some(g) = self.broker_cpu_secs_per_gb {
            s += &format!(", {g:.2} CPU s per GB");
        }
        if let Some(m) = self.broker_rss_mib {
            s += &format!(", RSS {m:.0} MiB");
        }
        if let (Some(m), Some(o), Some(cpus)) =
            (self.machine_busy_cores, self.other_cores, self.machine_cpus)
        {
            let who = if self.broker_cpu_secs.is_some() {
                "other processes"
            } else {
                "other processes (the broker among them: no --broker-pid)"
            };
            s += &format!("; machine busy {m:.2} of {cpus} cores, {o:.2} by {who}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        let s = Sample::take(Some(std::process::id()));
        assert!(s.harness_cpu_secs >= 0.0);
        let (cpu, rss) = s.broker.expect("own pid readable");
        assert!(cpu >= 0.0 && rss > 0);
        let u = Usage::between(&s, &Sample::take(Some(std::process::id())), 1_000_000_000);
        assert!(u.broker_cpu_secs_per_gb.is_some());
    }

    #[test]
    fn counts_the_machines_cpus_from_proc_stat() {
        let stat = "cpu  100 0 50 800 10 0 5 0 0 0\n\
                    cpu0 50 0 25 400 5 0 3 0 0 0\n\
                    cpu1 50 0 25 400 5 0 2 0 0 0\n\
                    intr 12345 0 0\n\
                    ctxt 999\n\
                    cpu_extra_line_that_is_not_a_cpu 1\n";
        assert_eq!(cpus_in(stat), 2);
        // Busy: user + system + softirq; idle and iowait are not.
        assert_eq!(machine_jiffies_in(stat), Some((155, 965)));
    }
}
