//! CPU time of processes and of the whole machine, from `/proc`: what the
//! scenarios report beside their figures, and how the stack finds its
//! PostgreSQL server's processes.

/// The fields of `/proc/<pid>/stat` from the third (the state) on.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// Field `n` (1-based, as `man proc` numbers them, 3 or more) of `fields`.
fn stat_field(fields: &[String], n: usize) -> Option<f64> {
    fields.get(n.checked_sub(3)?)?.parse().ok()
}

/// CPU seconds (user + system) process `pid` has used so far, from
/// `/proc/<pid>/stat` (fields 14 and 15, in clock ticks of 1/100 s, the
/// value Linux gives `CLK_TCK` on every architecture it runs on).
pub fn process_cpu_s(pid: u32) -> Option<f64> {
    let fields = stat_fields(pid)?;
    Some((stat_field(&fields, 14)? + stat_field(&fields, 15)?) / 100.0)
}

/// The parent of process `pid`.
pub fn parent_pid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// CPU seconds the PostgreSQL server whose postmaster is `postmaster` has
/// used so far: the postmaster, every backend alive, and those that have
/// exited (their time is added to the postmaster's children's, fields 16
/// and 17, once it has reaped them), so the sum never drops when a backend
/// exits.
pub fn postgres_cpu_s(postmaster: u32) -> Option<f64> {
    let own = stat_fields(postmaster)?;
    let mut ticks: f64 = [14, 15, 16, 17]
        .iter()
        .map(|&n| stat_field(&own, n))
        .sum::<Option<f64>>()?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(fields) = stat_fields(pid) else {
            continue;
        };
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(postmaster) {
            ticks +=
                stat_field(&fields, 14).unwrap_or(0.0) + stat_field(&fields, 15).unwrap_or(0.0);
        }
    }
    Some(ticks / 100.0)
}

/// CPU seconds every process on the machine has used so far, ours and
/// anyone else's: the busy time of `/proc/stat`'s first line (user, nice,
/// system, irq, softirq and steal, in ticks of 1/100 s).
pub fn machine_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| fields.get(i).copied())
        .sum::<Option<f64>>()?;
    Some(busy / 100.0)
}
