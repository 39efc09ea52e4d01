//! Process and runtime gauges, read when metrics are scraped: the standard Prometheus process
//! series (`process_resident_memory_bytes`, `process_open_fds`, `process_cpu_seconds_total`,
//! from `/proc/self`; absent on systems without it) and the async tasks alive in the runtime
//! (`websocket_gateway_runtime_tasks`), which the soak run watches for leaks.

use prometheus::{Counter, IntGauge, Registry};

use super::metrics::PREFIX;

/// Gauges refreshed by [`ProcessGauges::update`].
pub struct ProcessGauges {
    rss: IntGauge,
    fds: IntGauge,
    /// A counter (what the name promises to Prometheus), moved up to the kernel's figure.
    cpu: Counter,
    tasks: IntGauge,
}

impl ProcessGauges {
    pub fn new(registry: &Registry) -> Self {
        let int = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique gauge");
            g
        };
        let cpu = Counter::new("process_cpu_seconds_total", "User and system CPU time spent.")
            .expect("valid counter");
        registry.register(Box::new(cpu.clone())).expect("unique counter");
        Self {
            rss: int("process_resident_memory_bytes", "Resident memory size in bytes."),
            fds: int("process_open_fds", "Open file descriptors."),
            cpu,
            tasks: int(&format!("{PREFIX}_runtime_tasks"), "Async tasks alive in the runtime."),
        }
    }

    /// Reads the current values.
    pub fn update(&self) {
        if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        {
            self.rss.set(pages * PAGE_SIZE);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.fds.set(dir.count() as i64);
        }
        if let Some(ticks) =
            std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| cpu_ticks(&s))
        {
            let behind = ticks as f64 / CLOCK_TICKS - self.cpu.get();
            if behind > 0.0 {
                self.cpu.inc_by(behind);
            }
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.tasks.set(rt.metrics().num_alive_tasks() as i64);
        }
    }
}

/// USER_HZ: 100 on every Linux architecture wsgw builds for.
const CLOCK_TICKS: f64 = 100.0;

/// The page size of every Linux architecture wsgw builds for.
const PAGE_SIZE: i64 = 4096;

/// utime + stime (fields 14 and 15) of a `/proc/…/stat` line; the command name in parentheses
/// may hold spaces, so fields are counted after its closing parenthesis.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    Some(fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_user_plus_system_after_the_command_name() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 0 0";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn the_gauges_read_this_process() {
        let r = Registry::new();
        let g = ProcessGauges::new(&r);
        g.update();
        assert!(g.rss.get() > 0 && g.fds.get() > 0, "rss {} fds {}", g.rss.get(), g.fds.get());
    }
}
