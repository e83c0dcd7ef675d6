//! Process plumbing: brokers that die with the test process, cleanup at exit, stale run dirs.
//!
//! * Tied children are spawned from ONE dedicated long-lived thread with `PR_SET_PDEATHSIG =
//!   SIGKILL` (the death signal fires when the spawning *thread* exits, so spawning from a test
//!   thread would kill the broker when that test ends). If the test process dies, even by SIGKILL,
//!   the kernel kills its brokers.
//! * An `atexit` hook SIGKILLs tied children still registered and removes the run dirs of this
//!   process (statics like [`super::shared`] are never dropped).
//! * Each run dir holds an `owners` file (`pid starttime` lines). A dir none of whose owners is
//!   alive is stale and removed by the next process that starts a node.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

/// Pids to SIGKILL and dirs to remove when this process exits.
#[derive(Default)]
struct Registry {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pids: Vec::new(),
    dirs: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

#[allow(unsafe_code)]
fn install_atexit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: `on_exit` is a plain `extern "C" fn()` with no arguments, as atexit requires.
        let rc = unsafe { libc::atexit(on_exit) };
        if rc != 0 {
            eprintln!("er-tests: atexit registration failed; brokers still die with the process");
        }
    });
}

#[allow(unsafe_code)]
extern "C" fn on_exit() {
    let reg = std::mem::take(&mut *registry());
    for &pid in &reg.pids {
        // SAFETY: plain syscalls on a pid this process spawned and has not reaped yet (it is
        // unregistered when reaped), so the pid cannot have been reused.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
            libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
        }
    }
    for dir in &reg.dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub(crate) fn register_pid(pid: u32) {
    install_atexit();
    registry().pids.push(pid);
}

pub(crate) fn unregister_pid(pid: u32) {
    registry().pids.retain(|&p| p != pid);
}

pub(crate) fn register_dir(dir: &Path) {
    install_atexit();
    registry().dirs.push(dir.to_path_buf());
}

pub(crate) fn unregister_dir(dir: &Path) {
    registry().dirs.retain(|d| d != dir);
}

/// Makes `cmd`'s child get SIGKILL when the spawning thread dies.
#[allow(unsafe_code)]
fn set_pdeathsig(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec; it only calls the
    // async-signal-safe `prctl` and `getppid` and builds errors without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody would ever kill us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Makes `cmd`'s child the leader of a new session, so it survives its parent and the terminal.
#[allow(unsafe_code)]
pub(crate) fn set_detached(cmd: &mut Command) {
    // SAFETY: runs between fork and exec; `setsid` is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that it dies with this process (see the module docs), and registers it for the
/// atexit hook. Call [`unregister_pid`] once the child has been reaped.
pub(crate) fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("er-tests-spawner".into())
            .spawn(move || {
                // Lives as long as the process: the sender is in a static and never dropped.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the er-tests spawner thread");
        tx
    });
    set_pdeathsig(&mut cmd);
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread gone"))?;
    let child = reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread gone"))??;
    register_pid(child.id());
    Ok(child)
}

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`), or `None` if
/// the process does not exist or is a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parens: fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// True if `pid` is alive and (when given) still the process that started at `start`.
pub fn is_alive(pid: u32, start: Option<u64>) -> bool {
    match start_time(pid) {
        None => false,
        Some(t) => start.is_none_or(|s| s == t),
    }
}

/// Adds `pid` as an owner of `dir`: the dir is kept as long as any owner lives.
pub(crate) fn add_owner(dir: &Path, pid: u32) -> Result<()> {
    use std::io::Write;
    let start = start_time(pid).unwrap_or(0);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("owners"))
        .with_context(|| format!("writing owners of {}", dir.display()))?;
    writeln!(f, "{pid} {start}")?;
    Ok(())
}

fn owners_alive(dir: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(dir.join("owners")).ok()?;
    Some(text.lines().any(|line| {
        let mut it = line.split_whitespace();
        let pid = it.next().and_then(|p| p.parse().ok());
        let start = it.next().and_then(|s| s.parse().ok());
        pid.is_some_and(|pid| is_alive(pid, start))
    }))
}

/// `<cache>/run`: parent of all node data dirs.
pub fn run_dir() -> PathBuf {
    super::dist::cache_dir().join("run")
}

/// Removes run dirs whose owners are all dead (left by killed test processes). Dirs without an
/// `owners` file are removed once older than 10 minutes (a crash right after creating them).
pub fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(run_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let stale = match owners_alive(&path) {
            Some(alive) => !alive,
            None => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > Duration::from_secs(600)),
        };
        if stale {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Sends `sig` to `pid`. Returns false if there is no such process.
#[allow(unsafe_code)]
pub(crate) fn signal(pid: u32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// Stops a process that is not our child (e.g. a detached broker found in the state file):
/// SIGTERM, wait up to `grace`, then SIGKILL. `start` guards against pid reuse.
pub fn stop_pid(pid: u32, start: Option<u64>, grace: Duration) {
    if !is_alive(pid, start) {
        return;
    }
    signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !is_alive(pid, start) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if is_alive(pid, start) {
        signal(pid, libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_alive(pid, start) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
