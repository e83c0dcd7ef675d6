//! Child processes measured from the outside: spawned so they die with er-bench, sampled from
//! `/proc/<pid>` (CPU ticks and resident memory) every 100 ms.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How often the sampler reads `/proc`.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// A child process with its output in a log file. Killed on drop.
#[derive(Debug)]
pub struct Child {
    name: String,
    child: Option<std::process::Child>,
    pid: u32,
    logs: Vec<PathBuf>,
}

type SpawnJob = (Command, mpsc::Sender<io::Result<std::process::Child>>);

/// Makes `cmd`'s child get SIGKILL when the spawning thread dies, so a killed er-bench leaves no
/// replicator running.
#[allow(unsafe_code)]
fn set_pdeathsig(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only calls the
    // async-signal-safe `prctl`; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Spawns from one long-lived thread: the death signal fires when the spawning *thread* exits,
/// and tokio's blocking threads come and go.
fn spawn_tied(mut cmd: Command) -> io::Result<std::process::Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("er-bench-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the spawner thread");
        Mutex::new(tx)
    });
    set_pdeathsig(&mut cmd);
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread gone"))?
}

impl Child {
    /// Starts `program args...` with `env`, stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: &Path,
    ) -> Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child =
            spawn_tied(cmd).with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            pid: child.id(),
            child: Some(child),
            logs: vec![log.to_owned()],
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Adds a log file the process writes itself (read after its stdout/stderr).
    pub fn with_log(mut self, log: PathBuf) -> Self {
        self.logs.push(log);
        self
    }

    /// The log files: stdout/stderr first.
    pub fn log_paths(&self) -> &[PathBuf] {
        &self.logs
    }

    /// Everything logged so far.
    pub fn log_text(&self) -> String {
        self.logs
            .iter()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }

    /// The last `n` log lines.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until the log contains `needle`; fails early if the process exits.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            if !self.is_running() {
                anyhow::bail!(
                    "{} exited before logging {needle:?}:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!(
            "{} did not log {needle:?} within {timeout:?}:\n{}",
            self.name,
            self.log_tail(30)
        )
    }

    /// SIGKILL, no chance to clean up (a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if matches!(c.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.pid.to_string())
                .status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// utime + stime in clock ticks.
    pub cpu_ticks: u64,
    /// VmRSS in KiB.
    pub rss_kib: u64,
}

/// The readings of one process.
#[derive(Debug, Clone)]
pub struct Series {
    /// Role, e.g. `agent`, `hub`, `mm2`.
    pub label: String,
    /// Process id.
    pub pid: u32,
    /// Readings, oldest first.
    pub samples: Vec<Sample>,
    /// VmHWM (peak resident set) at the last reading, KiB.
    pub hwm_kib: u64,
}

/// utime + stime (ticks) and VmRSS / VmHWM (KiB) of `pid`, or `None` once it is gone.
fn read_proc(pid: u32) -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parens: fields after the last ')' start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some((utime + stime, field("VmRSS:"), field("VmHWM:")))
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace()
                .next()
                .map(|st| st != "Z" && st != "X")
        })
        .unwrap_or(false)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on every Linux we know of).
pub fn clock_ticks() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Samples a set of processes every [`SAMPLE_INTERVAL`] on its own thread.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    series: Arc<Mutex<Vec<Series>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling `(label, pid)` pairs.
    pub fn start(procs: &[(&str, u32)]) -> Self {
        let series = Arc::new(Mutex::new(
            procs
                .iter()
                .map(|(label, pid)| Series {
                    label: (*label).to_owned(),
                    pid: *pid,
                    samples: Vec::new(),
                    hwm_kib: 0,
                })
                .collect::<Vec<_>>(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (series, stop) = (series.clone(), stop.clone());
            std::thread::Builder::new()
                .name("er-bench-sampler".into())
                .spawn(move || {
                    loop {
                        Self::sample_once(&series);
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(SAMPLE_INTERVAL);
                    }
                })
                .expect("spawning the sampler thread")
        };
        Self {
            stop,
            series,
            thread: Some(thread),
        }
    }

    fn sample_once(series: &Mutex<Vec<Series>>) {
        let mut all = series.lock().unwrap_or_else(|e| e.into_inner());
        for s in all.iter_mut() {
            if let Some((ticks, rss, hwm)) = read_proc(s.pid) {
                s.samples.push(Sample {
                    at: Instant::now(),
                    cpu_ticks: ticks,
                    rss_kib: rss,
                });
                s.hwm_kib = s.hwm_kib.max(hwm);
            }
        }
    }

    /// Takes a last reading (call while the processes still run), stops, returns the readings.
    pub fn finish(mut self) -> Vec<Series> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Self::sample_once(&self.series);
        std::mem::take(&mut *self.series.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Series {
    /// CPU seconds between the last reading at or before `from` and the first at or after `to`
    /// (so the window is covered, rounded out to the sampling interval).
    pub fn cpu_between(&self, from: Instant, to: Instant) -> Option<f64> {
        let first = self
            .samples
            .iter()
            .rev()
            .find(|s| s.at <= from)
            .or(self.samples.first())?;
        let last = self
            .samples
            .iter()
            .find(|s| s.at >= to)
            .or(self.samples.last())?;
        Some(last.cpu_ticks.saturating_sub(first.cpu_ticks) as f64 / clock_ticks())
    }

    /// CPU seconds of the process's whole life up to the last reading.
    pub fn cpu_lifetime(&self) -> f64 {
        self.samples
            .last()
            .map_or(0.0, |s| s.cpu_ticks as f64 / clock_ticks())
    }

    /// Peak resident memory in MiB: the larger of the sampled VmRSS and the kernel's VmHWM.
    pub fn peak_rss_mib(&self) -> f64 {
        let sampled = self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        sampled.max(self.hwm_kib) as f64 / 1024.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let sampler = Sampler::start(&[("self", std::process::id())]);
        let t0 = Instant::now();
        // Burn some CPU so the tick counter moves.
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(350) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let t1 = Instant::now();
        let series = sampler.finish();
        let s = &series[0];
        assert!(s.samples.len() >= 3, "{} samples", s.samples.len());
        assert!(s.peak_rss_mib() > 1.0);
        let cpu = s.cpu_between(t0, t1).expect("window covered");
        assert!(cpu > 0.1, "cpu {cpu}");
    }
}
