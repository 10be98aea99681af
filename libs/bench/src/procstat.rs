//! CPU time of processes, from `/proc`: what a benchmark charges to each
//! process of the system under test, and which processes there are.

use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` times (`_SC_CLK_TCK`,
/// 100 on Linux).
const TICKS_PER_SECOND: u64 = 100;

/// `(ppid, utime + stime, cutime + cstime)` of `pid`, in ticks.
fn stat(pid: u32) -> Option<(u32, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields are
    // counted from the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, utime..cstime 14..17.
    let num = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    let ppid = u32::try_from(num(4)?).ok()?;
    Some((ppid, num(14)? + num(15)?, num(16)? + num(17)?))
}

/// CPU time `pid` used so far: its own.
pub fn cpu_of(pid: u32) -> Duration {
    ticks(stat(pid).map_or(0, |(_, own, _)| own))
}

/// CPU time a process tree used so far: `pid`'s own, its children's that
/// exited (and were waited for), and its live children's (Postgres: the
/// postmaster and its backends).
pub fn cpu_of_tree(pid: u32) -> Duration {
    let Some((_, own, reaped)) = stat(pid) else {
        return Duration::ZERO;
    };
    let mut total = own + reaped;
    for child in pids() {
        if let Some((ppid, child_own, _)) = stat(child)
            && ppid == pid
        {
            total += child_own;
        }
    }
    ticks(total)
}

/// The live processes whose parent is `pid`, by pid.
pub fn children(pid: u32) -> Vec<u32> {
    let mut found: Vec<u32> = pids()
        .filter(|&child| stat(child).is_some_and(|(ppid, _, _)| ppid == pid))
        .collect();
    found.sort_unstable();
    found
}

/// The live processes whose command name (`/proc/<pid>/comm`, at most 15
/// bytes) is `name`, by pid.
pub fn named(name: &str) -> Vec<u32> {
    let mut found: Vec<u32> = pids()
        .filter(|&pid| command(pid).is_some_and(|c| c == name))
        .collect();
    found.sort_unstable();
    found
}

/// The command name of `pid` (`/proc/<pid>/comm`).
pub fn command(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(text.trim_end().to_string())
}

/// The whole machine's CPU time so far, `(busy, all)`, every core summed
/// (`/proc/stat`'s first line; busy is all but idle and iowait).
pub fn machine() -> Option<(Duration, Duration)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal (guest time is
    // already counted in user).
    let all: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((ticks(all - idle), ticks(all)))
}

fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
}

fn ticks(n: u64) -> Duration {
    Duration::from_millis(n * 1000 / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_stat_line_and_its_own_parent() {
        let me = std::process::id();
        let (ppid, _, _) = stat(me).expect("/proc/self/stat");
        assert_eq!(ppid, std::os::unix::process::parent_id());
        // The tree includes this process, read after it (CPU time only grows).
        let alone = cpu_of(me);
        assert!(cpu_of_tree(me) >= alone);
    }

    #[test]
    fn a_child_is_found_by_its_parent_and_its_name() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        assert!(children(std::process::id()).contains(&pid));
        assert_eq!(command(pid).as_deref(), Some("sleep"));
        assert!(named("sleep").contains(&pid));
        let (busy, all) = machine().expect("/proc/stat");
        assert!(busy <= all && all > Duration::ZERO);
        child.kill().expect("kill");
        child.wait().expect("wait");
    }
}
