//! What the kernel knows about a process: CPU time and resident memory.

use anyhow::{Context as _, bail, ensure};

/// Clock ticks per second for `/proc/<pid>/stat` times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in ticks.
pub fn parse_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    if fields.len() < 13 {
        bail!("malformed /proc/<pid>/stat: {} fields", fields.len() + 2);
    }
    let utime: u64 = fields[11].parse().context("utime")?;
    let stime: u64 = fields[12].parse().context("stime")?;
    Ok(utime + stime)
}

/// CPU time the process (all its threads) has used, in microseconds.
pub fn cpu_micros(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    Ok(parse_cpu_ticks(&stat)? * 1_000_000 / clock_ticks_per_second())
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
pub fn parse_rss(status: &str) -> anyhow::Result<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/<pid>/status")?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .context("malformed VmRSS")?;
    Ok(kib * 1024)
}

/// Resident memory of the process, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    parse_rss(&status)
}

/// CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most size_of::<cpu_set_t>() bytes.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Pin the calling process (and the threads it starts afterwards) to `cpu`.
pub fn pin_self(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: as above; the set holds one valid CPU index.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "cannot pin to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// CPU time on the whole machine, in microseconds: busy (user, nice,
/// system, irq, softirq: tick accounting also charges interrupt time to the
/// interrupted task, so this is what processes' own CPU times add up to) and
/// stolen by the hypervisor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineCpu {
    pub busy_micros: u64,
    pub steal_micros: u64,
}

/// Parse the aggregate `cpu` line of `/proc/stat`.
pub fn parse_machine_cpu(stat: &str) -> anyhow::Result<MachineCpu> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().context("malformed /proc/stat"))
        .collect::<anyhow::Result<_>>()?;
    ensure!(ticks.len() >= 8, "malformed /proc/stat cpu line");
    // user nice system idle iowait irq softirq steal ...
    let micros = |t: u64| t * 1_000_000 / clock_ticks_per_second();
    Ok(MachineCpu {
        busy_micros: micros(ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]),
        steal_micros: micros(ticks[7]),
    })
}

pub fn machine_cpu() -> anyhow::Result<MachineCpu> {
    parse_machine_cpu(&std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?)
}

/// CPU time of this process plus its reaped children (Envoys, h2load and
/// servers once stopped), in microseconds.
pub fn own_cpu_micros() -> u64 {
    let usage = |who| {
        // SAFETY: a zeroed rusage is valid; getrusage fills it.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut u) } != 0 {
            return 0;
        }
        let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        tv(u.ru_utime) + tv(u.ru_stime)
    };
    usage(libc::RUSAGE_SELF) + usage(libc::RUSAGE_CHILDREN)
}

/// 1-minute load average: a sign of other work on the machine.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_odd_names() {
        let stat = "4242 (envoy (main) x) S 1 4242 4242 0 -1 4194560 9046 0 0 0 1234 56 0 0 20 0 9 0 1683 2205 1\n";
        assert_eq!(parse_cpu_ticks(stat).unwrap(), 1290);
        assert!(parse_cpu_ticks("4242 (x) S 1 2").is_err());
    }

    #[test]
    fn rss_is_read_in_bytes() {
        let status = "Name:\tenvoy\nVmPeak:\t  999 kB\nVmRSS:\t   51200 kB\nThreads:\t9\n";
        assert_eq!(parse_rss(status).unwrap(), 51200 * 1024);
        assert!(parse_rss("Name: x\n").is_err());
    }

    #[test]
    fn machine_cpu_counts_busy_and_steal() {
        let hz = clock_ticks_per_second();
        let stat = "cpu  100 5 50 1000 7 3 9 2 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let cpu = parse_machine_cpu(stat).unwrap();
        assert_eq!(cpu.busy_micros, 167 * 1_000_000 / hz);
        assert_eq!(cpu.steal_micros, 2 * 1_000_000 / hz);
        assert!(parse_machine_cpu("intr 1 2\n").is_err());
    }

    #[test]
    fn this_process_is_measurable() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        cpu_micros(pid).unwrap();
        assert!(!allowed_cpus().is_empty());
        machine_cpu().unwrap();
        assert!(own_cpu_micros() > 0);
    }
}
