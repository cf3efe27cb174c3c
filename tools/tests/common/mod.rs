//! A real broker process for the tools' tests: built next to this crate's
//! binaries, started on free ports in a temporary directory, killed on drop.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod cluster;

/// Builds the broker binary next to this crate's binary and returns its path.
/// It is built with the profile of the tests themselves (optimised), which
/// the engine's own tests built already, so this is usually a no-op.
pub fn broker_binary() -> PathBuf {
    let ctl = Path::new(env!("CARGO_BIN_EXE_shardmqctl"));
    let profile_dir = ctl.parent().expect("binary directory");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", "shardmq-engine", "--bin", "shardmq-broker"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    } else {
        build.args(["--profile", "test"]);
    }
    let status = build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs to build the broker");
    assert!(status.success(), "building shardmq-broker failed: {status}");
    profile_dir.join("shardmq-broker")
}

/// A free port for a test broker (`shardmq_net::ports`).
pub fn free_port() -> u16 {
    shardmq_net::ports::test_port()
}

/// Whether `port` can be bound the way the broker binds it.
pub fn bindable_as_broker(port: u16) -> bool {
    shardmq_net::ports::bindable_as_server(port)
}

/// A broker process on free ports in a temporary directory, killed on drop.
pub struct Broker {
    pub child: Child,
    pub addr: String,
    _data: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let addr = format!("127.0.0.1:{}", free_port());
        let metrics = format!("127.0.0.1:{}", free_port());
        let child = Command::new(broker_binary())
            .args(["--listen", &addr, "--metrics", &metrics, "--shards", "2"])
            .arg("--data-dir")
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("broker starts");
        let mut broker = Broker {
            child,
            addr,
            _data: data,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&broker.addr).is_err() {
            if let Some(status) = broker.child.try_wait().expect("broker status") {
                panic!("broker exited before accepting connections: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "broker did not accept connections on {} within 30 s",
                broker.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
