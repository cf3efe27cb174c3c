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

use shardmq_net::ports::PortRange;

/// How long a server may take to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(15);
/// Ports tried per [`free_port`] call, and the size of each harness
/// process's block of ports (a 3-broker cluster and a 3-node NATS cluster
/// take 18 at once).
const PORT_BLOCK: u16 = 40;
/// Blocks between 12,000 and 20,000.
const PORT_BLOCKS: u16 = 200;
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

/// The harness's ports: blocks of [`PORT_BLOCK`] between 12,000 and
/// 20,000, apart from the test suites' (`shardmq_net::ports`).
const HARNESS_PORTS: PortRange = PortRange {
    base: 12_000,
    block: PORT_BLOCK,
    blocks: PORT_BLOCKS,
};

/// A free port on 127.0.0.1 below the kernel's ephemeral range, from this
/// harness process's own block (`shardmq_net::ports` says why).
pub fn free_port() -> Result<u16, ProcError> {
    HARNESS_PORTS.free_port().ok_or_else(|| {
        let start = HARNESS_PORTS.block_start();
        ProcError(format!(
            "no free port on 127.0.0.1 in {start}..{}",
            start + PORT_BLOCK
        ))
    })
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

/// Open files the servers a run starts may have: NATS JetStream keeps
/// several files open per stream, and 10,000 streams of 3 replicas on three
/// servers of one machine need more than a default limit allows.
const OPEN_FILES_WANTED: u64 = 1 << 20;

/// Raises this process's open-file limit, which the servers it starts
/// inherit: to [`OPEN_FILES_WANTED`] when allowed (root), else the soft
/// limit to the hard one. Returns the soft limit in force.
pub fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the plain struct above.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(OPEN_FILES_WANTED);
        let want = OPEN_FILES_WANTED.min(nr_open);
        if lim.rlim_max < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return want;
            }
        }
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            soft.rlim_cur
        } else {
            lim.rlim_cur
        }
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

/// Starts a local `shardmq-broker` with `shards` shards; returns it and
/// the port of its metrics endpoint on 127.0.0.1.
pub async fn start_broker(
    bin: &Path,
    shards: u32,
    data_parent: &Path,
) -> Result<(ServerProcess, u16), ProcError> {
    let data = data_dir(data_parent, "shardmq-bench-broker.")?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let metrics_port = free_port()?;
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut command = Command::new(bin);
    command
        .arg("--data-dir")
        .arg(data.path())
        .args(["--shards", &shards.to_string()])
        .args(["--listen", &addr, "--metrics", &metrics]);
    let server = ServerProcess::start("shardmq-broker", command, addr, data).await?;
    Ok((server, metrics_port))
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
