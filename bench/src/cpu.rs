//! Where the CPU went during a run, from /proc: each watched process (and its
//! children, for `spin up`), the rest of the machine, and what was left idle. This is
//! what tells which part bounds a figure (the guest and host in the runner, Redis, the
//! load generator).

use std::collections::BTreeMap;
use std::time::Instant;

/// Linux's USER_HZ: the unit of /proc's CPU times (100 on every architecture Linux
/// exports to user space in practice).
const TICKS_PER_SECOND: f64 = 100.0;

pub struct Meter {
    watched: Vec<(String, u32, u64)>,
    machine: (u64, u64),
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
        let (busy, idle) = machine_ticks();
        let mut shares = BTreeMap::new();
        let mut watched_busy = 0;
        for (name, pid, before) in self.watched {
            let used = family_ticks(pid).saturating_sub(before);
            watched_busy += used;
            shares.insert(name, percent(used));
        }
        let busy = busy.saturating_sub(self.machine.0);
        shares.insert(
            "everything else".to_owned(),
            percent(busy.saturating_sub(watched_busy)),
        );
        shares.insert(
            "idle".to_owned(),
            percent(idle.saturating_sub(self.machine.1)),
        );
        shares
    }
}

/// (busy, idle) ticks of all cores since boot.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (fields.iter().take(8).sum::<u64>() - idle, idle)
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
