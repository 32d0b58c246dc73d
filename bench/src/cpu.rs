//! Where the CPU went during a run, from /proc: each watched process (and its
//! children, for `spin up`), the rest of the machine, what the hypervisor kept for
//! other guests (`steal`) and what was left idle. This is what tells which part bounds
//! a figure (the guest and host in the runner, Redis, the load generator), and whether
//! a run's figures are comparable with another's at all: on a virtual machine whose
//! host is busy, or that has used up its CPU credit, steal takes cores from every part.

use std::collections::BTreeMap;
use std::time::Instant;

/// Linux's USER_HZ: the unit of /proc's CPU times (100 on every architecture Linux
/// exports to user space in practice).
const TICKS_PER_SECOND: f64 = 100.0;

pub struct Meter {
    watched: Vec<(String, u32, u64)>,
    machine: Ticks,
    started: Instant,
}

impl Meter {
    pub fn start(watch: &[(&str, u32)]) -> Meter {
        Meter {
            watched: watch
                .iter()
                .map(|(name, pid)| ((*name).to_owned(), *pid, family_ticks(*pid)))
                .collect(),
            machine: machine_ticks(),
            started: Instant::now(),
        }
    }

    /// % of one core, by part.
    pub fn stop(self) -> BTreeMap<String, f64> {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        let percent = |ticks: u64| 100.0 * ticks as f64 / TICKS_PER_SECOND / seconds;
        let now = machine_ticks();
        let mut shares = BTreeMap::new();
        let mut watched_busy = 0;
        for (name, pid, before) in self.watched {
            let used = family_ticks(pid).saturating_sub(before);
            watched_busy += used;
            shares.insert(name, percent(used));
        }
        let busy = now.busy.saturating_sub(self.machine.busy);
        shares.insert(
            "everything else".to_owned(),
            percent(busy.saturating_sub(watched_busy)),
        );
        shares.insert(
            "idle".to_owned(),
            percent(now.idle.saturating_sub(self.machine.idle)),
        );
        shares.insert(
            STEAL.to_owned(),
            percent(now.steal.saturating_sub(self.machine.steal)),
        );
        shares
    }
}

/// The share of the CPU the hypervisor gave other guests while this machine's
/// processes were ready to run.
pub const STEAL: &str = "steal";

/// Ticks of all cores since boot: running this machine's processes (the guest's
/// kernel included), idle, and stolen.
#[derive(Debug, Default, Clone, Copy)]
struct Ticks {
    busy: u64,
    idle: u64,
    steal: u64,
}

fn machine_ticks() -> Ticks {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return Ticks::default();
    };
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    parse_cpu_line(&fields)
}

/// user nice system idle iowait irq softirq steal (guest time is already in user).
fn parse_cpu_line(fields: &[u64]) -> Ticks {
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    Ticks {
        busy: field(0) + field(1) + field(2) + field(5) + field(6),
        idle: field(3) + field(4),
        steal: field(7),
    }
}

/// User and system ticks of `pid` and its descendants.
fn family_ticks(pid: u32) -> u64 {
    crate::stack::family(pid)
        .into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid ... utime(14) stime(15): fields after ") ".
            let rest = stat.rsplit_once(") ")?.1;
            let fields: Vec<&str> = rest.split(' ').collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_neither_busy_nor_idle() {
        // A line of /proc/stat after `cpu `: user nice system idle iowait irq softirq
        // steal guest guest_nice.
        let ticks = parse_cpu_line(&[100, 2, 30, 500, 7, 1, 3, 40, 9, 0]);
        assert_eq!(ticks.busy, 100 + 2 + 30 + 1 + 3);
        assert_eq!(ticks.idle, 500 + 7);
        assert_eq!(ticks.steal, 40);
        // Kernels without a steal column count none.
        assert_eq!(parse_cpu_line(&[1, 0, 1, 5, 0, 0, 0]).steal, 0);
    }
}
