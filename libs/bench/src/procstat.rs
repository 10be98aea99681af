//! CPU time of processes, from `/proc`: what a benchmark charges to each
//! process of the system under test.

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
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, child_own, _)) = stat(child)
                && ppid == pid
            {
                total += child_own;
            }
        }
    }
    ticks(total)
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
}
