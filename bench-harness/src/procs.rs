//! Server processes the harness starts and stops itself: local
//! `shardmq-broker`s and, with `--peer nats`, local `nats-server -js`
//! (one of each, or clusters of them: [`crate::deploy`]).
//!
//! Each runs in a fresh temporary data directory on 127.0.0.1 ports, writes
//! its output to a log file beside that directory, and is stopped (SIGTERM,
//! then SIGKILL after a grace period) when its [`ServerProcess`] is stopped
//! or dropped, so an error or Ctrl-C never leaves one running.

use std::fmt;
use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(15);
/// Ports tried per [`free_port`] call, and the size of each harness
/// process's block of ports (a 3-broker cluster and a 3-node NATS cluster
/// take 18 at once).
const PORT_BLOCK: u16 = 40;
/// Blocks between 12,000 and 20,000.
const PORT_BLOCKS: u32 = 200;
/// Lines of a server's log quoted in an error.
const LOG_TAIL_LINES: usize = 20;

/// A server that could not be started.
#[derive(Debug)]
pub struct ProcError(pub String);

impl fmt::Display for ProcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProcError {}

/// Whether `port` on 127.0.0.1 can be bound the way a server binds it:
/// without SO_REUSEADDR (glommio, which the broker runs on, sets only SO_REUSEPORT), so a port that a
/// connection of an earlier server still holds in TIME_WAIT counts as
/// taken. std's `TcpListener::bind` sets SO_REUSEADDR and would miss it.
fn bindable_as_server(port: u16) -> bool {
    let Ok(socket) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
    else {
        return false;
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    socket.bind(&addr.into()).is_ok()
}

/// A free port on 127.0.0.1 below the kernel's ephemeral range (32768 and
/// up). The broker binds with SO_REUSEPORT, so a port the kernel hands out
/// for port 0 could silently be shared with another broker; ports here are
/// never handed out that way. Each harness process takes its own block of
/// ports, by pid, apart from the blocks the test suites use.
pub fn free_port() -> Result<u16, ProcError> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let block = 12_000 + (std::process::id() % PORT_BLOCKS) as u16 * PORT_BLOCK;
    for _ in 0..PORT_BLOCK {
        let port = block + NEXT.fetch_add(1, Ordering::Relaxed) % PORT_BLOCK;
        if bindable_as_server(port) {
            return Ok(port);
        }
    }
    Err(ProcError(format!(
        "no free port on 127.0.0.1 in {block}..{}",
        block + PORT_BLOCK
    )))
}

/// Finds `name` on `PATH`, then in the sbin directories Debian installs
/// daemons into (which a non-root `PATH` may lack).
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The first line a binary prints for `--version`, or "unknown".
pub fn binary_version(bin: &Path, flag: &str) -> String {
    Command::new(bin)
        .arg(flag)
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The HTTP status of `GET path` on 127.0.0.1:`port`, or `None` when
/// nothing answers within a second. Enough HTTP/1.0 for a health check.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        match stream.read(&mut head[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
        if head[..len].contains(&b'\n') {
            break;
        }
    }
    // "HTTP/1.1 200 OK"
    let line = std::str::from_utf8(&head[..len]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The CPUs this process may run on, in order (empty when unknown).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bitmask the kernel fills; the CPU_* helpers
    // index within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|cpu| libc::CPU_ISSET(*cpu, &set))
            .collect()
    }
}

/// Makes `command`'s process start allowed on `cpu` only (its threads
/// inherit the mask, and a broker pins its shards to the CPUs it is
/// allowed).
pub fn restrict_to_cpu(command: &mut Command, cpu: usize) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes the sched_setaffinity system call on a set built on its stack,
    // which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A running server process the harness owns.
#[derive(Debug)]
pub struct ServerProcess {
    /// e.g. "shardmq-broker", "nats-server 2".
    name: String,
    child: Option<Child>,
    /// Where it accepts clients (HOST:PORT).
    addr: String,
    log: PathBuf,
    /// Its data directory, removed when the process is dropped.
    _data: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts `command` (whose output goes to a log file beside `data`) and
    /// waits until `addr` accepts connections.
    pub async fn start(
        name: &str,
        command: Command,
        addr: String,
        data: tempfile::TempDir,
    ) -> Result<Self, ProcError> {
        let mut server = Self::spawn(name, command, addr, data)?;
        server.wait_accepting().await?;
        Ok(server)
    }

    /// Starts `command` (whose output goes to a log file beside `data`)
    /// without waiting for it: servers of a cluster wait for each other.
    pub fn spawn(
        name: &str,
        mut command: Command,
        addr: String,
        data: tempfile::TempDir,
    ) -> Result<Self, ProcError> {
        let mut log = data.path().as_os_str().to_owned();
        log.push(".log");
        let log = PathBuf::from(log);
        let log_file = File::create(&log)
            .map_err(|e| ProcError(format!("cannot create {}: {e}", log.display())))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| ProcError(format!("cannot open {}: {e}", log.display())))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err));
        let child = command
            .spawn()
            .map_err(|e| ProcError(format!("cannot start {name}: {e}")))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            addr,
            log,
            _data: data,
        })
    }

    /// Waits until the server's address accepts connections.
    pub async fn wait_accepting(&mut self) -> Result<(), ProcError> {
        let addr = self.addr.clone();
        self.wait_until("accept connections on", &addr, || {
            TcpStream::connect(&addr).is_ok()
        })
        .await
    }

    /// Waits until `ready` says so, polling every 50 ms for at most
    /// [`START_TIMEOUT`]; fails when the process exits first. `what` and
    /// `target` name the wait in the error.
    pub async fn wait_until(
        &mut self,
        what: &str,
        target: &str,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), ProcError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(ProcError(format!(
                        "{} exited during start-up ({status}); its log:\n{}",
                        self.name,
                        self.log_tail()
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(ProcError(format!(
                    "{} did not {what} {target} within {} s; its log:\n{}",
                    self.name,
                    START_TIMEOUT.as_secs(),
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// e.g. "shardmq-broker", "nats-server 2".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// HOST:PORT where it accepts clients.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL at once: the process dies with whatever it had not made
    /// durable (its data directory stays until it is dropped). Returns how
    /// it exited.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// Stops it: SIGTERM, then SIGKILL after [`STOP_GRACE`]. Returns how it
    /// exited.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on our own child's pid, which it still is:
            // the child has not been waited for yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

/// Whether servers' log files are kept when they are dropped (their data
/// directories are removed either way).
static KEEP_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Keep every server's log file from now on (`--keep-logs`): each is said
/// on stderr when its server is dropped.
pub fn keep_logs() {
    KEEP_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
        if KEEP_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("{}: log kept at {}", self.name, self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A temporary data directory under `parent` named after `prefix`.
pub fn data_dir(parent: &Path, prefix: &str) -> Result<tempfile::TempDir, ProcError> {
    std::fs::create_dir_all(parent)
        .map_err(|e| ProcError(format!("cannot create {}: {e}", parent.display())))?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .map_err(|e| {
            ProcError(format!(
                "cannot create a directory in {}: {e}",
                parent.display()
            ))
        })
}

/// Starts a local `shardmq-broker` with `shards` shards.
pub async fn start_broker(
    bin: &Path,
    shards: u32,
    data_parent: &Path,
) -> Result<ServerProcess, ProcError> {
    let data = data_dir(data_parent, "shardmq-bench-broker.")?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut command = Command::new(bin);
    command
        .arg("--data-dir")
        .arg(data.path())
        .args(["--shards", &shards.to_string()])
        .args(["--listen", &addr, "--metrics", &metrics]);
    ServerProcess::start("shardmq-broker", command, addr, data).await
}

/// Starts a local `nats-server -js` with its store in a fresh directory.
pub async fn start_nats(bin: &Path, data_parent: &Path) -> Result<ServerProcess, ProcError> {
    let data = data_dir(data_parent, "shardmq-bench-nats.")?;
    let port = free_port()?;
    let mut command = Command::new(bin);
    command
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(data.path());
    ServerProcess::start("nats-server", command, format!("127.0.0.1:{port}"), data).await
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn free_ports_are_below_the_ephemeral_range_and_bindable() {
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert_ne!(a, b);
        for port in [a, b] {
            assert!((12_000..20_000).contains(&port), "{port}");
        }
        // Any process may take a port between the pick and a later bind,
        // so bindability is checked over a few picks: most must bind.
        let bound = (0..8)
            .filter(|_| {
                let port = free_port().unwrap();
                TcpListener::bind(("127.0.0.1", port)).is_ok()
            })
            .count();
        assert!(bound >= 6, "only {bound} of 8 picked ports could be bound");
    }

    #[test]
    fn a_child_restricted_to_a_cpu_runs_there_only() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        let cpu = *cpus.last().unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "grep Cpus_allowed_list /proc/self/status"]);
        restrict_to_cpu(&mut command, cpu);
        let out = command.output().expect("sh runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.split_whitespace().last(),
            Some(cpu.to_string().as_str()),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_server_that_exits_at_once_is_reported_with_its_log() {
        let parent = tempfile::tempdir().unwrap();
        let data = data_dir(parent.path(), "x.").unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "echo broken config >&2; exit 3"]);
        let err = ServerProcess::start("fake", command, "127.0.0.1:1".into(), data)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("fake exited during start-up"), "{err}");
        assert!(err.contains("broken config"), "{err}");
    }

    #[tokio::test]
    async fn stop_ends_a_running_server() {
        let parent = tempfile::tempdir().unwrap();
        let data = data_dir(parent.path(), "x.").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // A "server" that runs until signalled; the test holds the port.
        let mut command = Command::new("sleep");
        command.arg("600");
        let mut server = ServerProcess::start("sleeper", command, addr, data)
            .await
            .unwrap();
        assert!(server.is_running());
        let status = server.stop().expect("exit status");
        assert!(!status.success());
        assert!(!server.is_running());
    }
}
