//! CPU time and resident memory of a process, read from `/proc` (Linux only).
//!
//! CPU time is `utime + stime` from `/proc/PID/stat`, in clock ticks of `USER_HZ`, which the
//! kernel fixes at 100 for everything it exposes to user space; RSS is `VmRSS` from
//! `/proc/PID/status`.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};

/// `USER_HZ`: /proc reports CPU times in hundredths of a second on every Linux architecture.
const USER_HZ: u64 = 100;

/// Which process to read.
#[derive(Debug, Clone, Copy)]
pub enum Pid {
    Me,
    Other(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Self::Me => "/proc/self".to_owned(),
            Self::Other(pid) => format!("/proc/{pid}"),
        }
    }
}

/// User plus system CPU time the process has used so far.
pub fn cpu_time(pid: Pid) -> Result<Duration> {
    let path = format!("{}/stat", pid.dir());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_cpu(&text).with_context(|| format!("parsing {path}"))
}

fn parse_stat_cpu(text: &str) -> Result<Duration> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("no ')' in stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("stat has only {} fields", fields.len() + 2))?
            .parse::<u64>()
            .map_err(|e| anyhow!("field {}: {e}", i + 3))
    };
    let ticks = field(11)? + field(12)?;
    Ok(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// Resident set size in bytes.
pub fn rss_bytes(pid: Pid) -> Result<u64> {
    let path = format!("{}/status", pid.dir());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_rss(&text).with_context(|| format!("parsing {path}"))
}

fn parse_status_rss(text: &str) -> Result<u64> {
    let line = text
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS line"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let stat = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(stat).unwrap(), Duration::from_secs(3));
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tx\nVmRSS:\t  2048 kB\nThreads:\t1\n";
        assert_eq!(parse_status_rss(status).unwrap(), 2048 * 1024);
    }

    #[test]
    fn reads_own_process() {
        assert!(rss_bytes(Pid::Me).unwrap() > 0);
        cpu_time(Pid::Me).unwrap();
    }
}
