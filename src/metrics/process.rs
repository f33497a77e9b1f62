//! The standard `process_*` metrics (as Prometheus' own clients name them), read from
//! `/proc/self` at each scrape. A value that cannot be read (another OS, a restricted /proc) is
//! left out rather than failing the scrape.

use std::path::Path;

use super::Scrape;

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux for
/// every architecture the appliance runs on).
const USER_HZ: f64 = 100.0;

/// Adds `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds` and
/// `process_start_time_seconds`.
pub fn collect(scrape: &mut Scrape) {
    collect_from(scrape, Path::new("/proc"), Path::new("/proc/self"));
}

fn collect_from(scrape: &mut Scrape, proc_root: &Path, me: &Path) {
    let stat = std::fs::read_to_string(me.join("stat")).ok();
    // Fields after the command name (which may hold spaces) start at field 3 (`state`).
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        scrape.counter_seconds(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            (utime + stime) as f64 / USER_HZ,
        );
    }
    let status = std::fs::read_to_string(me.join("status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    if let Some(rss) = kib("VmRSS:") {
        scrape.gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            (rss * 1024) as f64,
        );
    }
    if let Some(vsz) = kib("VmSize:") {
        scrape.gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            (vsz * 1024) as f64,
        );
    }
    if let Ok(dir) = std::fs::read_dir(me.join("fd")) {
        scrape.gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            dir.count() as f64,
        );
    }
    let max_fds = std::fs::read_to_string(me.join("limits"))
        .ok()
        .and_then(|l| {
            l.lines()
                .find_map(|l| l.strip_prefix("Max open files"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        });
    if let Some(max) = max_fds {
        scrape.gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            max as f64,
        );
    }
    let boot = std::fs::read_to_string(proc_root.join("stat"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
    if let (Some(boot), Some(start)) = (boot, field(22)) {
        scrape.gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            boot as f64 + start as f64 / USER_HZ,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let mut s = Scrape::default();
        collect(&mut s);
        let out = s.encode();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(out.contains(name), "{name} missing from\n{out}");
        }
        let rss: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse().ok())
            .expect("rss");
        assert!(rss > 1e6, "{out}");
    }

    #[test]
    fn a_command_name_with_spaces_and_parens_does_not_shift_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = dir.path().join("self");
        std::fs::create_dir_all(me.join("fd")).expect("mkdir");
        let mut stat = String::from("42 (a b) c) S");
        // Fields 4..=22: field 14 utime = 250 ticks, 15 stime = 50, 22 starttime = 1000.
        for n in 4..=22 {
            stat.push_str(match n {
                14 => " 250",
                15 => " 50",
                22 => " 1000",
                _ => " 0",
            });
        }
        std::fs::write(me.join("stat"), stat).expect("write");
        std::fs::write(dir.path().join("stat"), "cpu 1 2\nbtime 1700000000\n").expect("write");
        let mut s = Scrape::default();
        collect_from(&mut s, dir.path(), &me);
        let out = s.encode();
        assert!(out.contains("process_cpu_seconds_total 3"), "{out}");
        assert!(
            out.contains("process_start_time_seconds 1700000010"),
            "{out}"
        );
        assert!(out.contains("process_open_fds 0"), "{out}");
    }
}
