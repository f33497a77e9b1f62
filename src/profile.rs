//! A sampling CPU profile of the running appliance, for the benchmark (`--features profile`).
//!
//! With `HSM_CA_PROFILE=FILE` set, the appliance samples its threads 999 times a second (a
//! `setitimer` profiler: it works where `perf` gets no samples) and, when it stops, writes the
//! functions that were on the CPU most often to FILE, by self and by inclusive samples, and every
//! sampled stack to FILE with the extension `.folded` (one line per stack, for flame graphs).

use std::collections::HashMap;
use std::fmt::Write as _;

/// A running profile; [`Profile::finish`] writes it.
pub struct Profile {
    guard: pprof::ProfilerGuard<'static>,
    path: std::path::PathBuf,
}

impl Profile {
    /// Starts sampling when `HSM_CA_PROFILE` names a file.
    pub fn from_env() -> Option<Profile> {
        let path = std::env::var_os("HSM_CA_PROFILE")?;
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(999)
            // Samples in libc and the PKCS#11 module count too (that is where device calls and
            // system calls spend); the unwinder's own libraries are left out.
            .blocklist(&["libgcc", "vdso", "ld-linux"])
            .build()
            .map_err(|e| tracing::warn!("profiler: {e}"))
            .ok()?;
        Some(Profile {
            guard,
            path: path.into(),
        })
    }

    /// Writes the hottest functions to the file.
    pub fn finish(self) {
        let report = match self.guard.report().build() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("profiler: {e}");
                return;
            }
        };
        let mut total = 0isize;
        let mut own: HashMap<String, isize> = HashMap::new();
        let mut inclusive: HashMap<String, isize> = HashMap::new();
        let mut folded = String::new();
        for (frames, count) in &report.data {
            total += count;
            let names: Vec<String> = frames
                .frames
                .iter()
                .flatten()
                .map(|symbol| short(&symbol.name()))
                .collect();
            let _ = writeln!(
                folded,
                "{};{} {count}",
                frames.thread_name,
                names.iter().rev().cloned().collect::<Vec<_>>().join(";")
            );
            if let Some(first) = names.first() {
                *own.entry(first.clone()).or_default() += count;
            }
            let mut seen = std::collections::HashSet::new();
            for name in names {
                if seen.insert(name.clone()) {
                    *inclusive.entry(name).or_default() += count;
                }
            }
        }
        let mut out = format!("{total} samples\n");
        for (title, table) in [("self", &own), ("inclusive", &inclusive)] {
            let mut rows: Vec<_> = table.iter().collect();
            rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let _ = writeln!(out, "\n{title}:");
            for (name, count) in rows.into_iter().take(60) {
                let share = 100.0 * *count as f64 / total.max(1) as f64;
                let _ = writeln!(out, "{share:6.2}%  {count:7}  {name}");
            }
        }
        // The whole stacks too, one line each in the folded form flame-graph tools read.
        let _ = std::fs::write(self.path.with_extension("folded"), folded);
        if let Err(e) = std::fs::write(&self.path, out) {
            tracing::warn!("profiler: cannot write {}: {e}", self.path.display());
        }
    }
}

/// A symbol without its hash suffix and generic arguments, short enough to read.
fn short(name: &str) -> String {
    let name = name.rsplit_once("::h").map_or(name, |(head, tail)| {
        if tail.len() == 16 && tail.bytes().all(|b| b.is_ascii_hexdigit()) {
            head
        } else {
            name
        }
    });
    let mut out = String::with_capacity(name.len());
    let mut depth = 0usize;
    for c in name.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.chars().take(160).collect()
}
