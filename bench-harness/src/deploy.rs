//! The servers one side of a run needs, started and stopped together: a
//! single `shardmq-broker`, a cluster of them, a running broker the
//! harness was pointed at, or `nats-server -js` alone or as a cluster.
//!
//! A cluster runs on 127.0.0.1: every server has its own free ports and
//! its own temporary data directory. A shardmq cluster is a static one
//! (`--peers`), one shard per broker (the brokers share the machine's
//! cores); it is ready once every broker answers `/health` with 200 (it
//! registered with the controller) and the controller has a leader with
//! every broker active. A broker pins its shard threads to the first CPUs
//! it is allowed to run on, so brokers started alike would all put shard 0
//! on the same core; broker i is therefore started allowed on the i-th
//! CPU of the harness's own set only, round-robin (with two CPUs: brokers
//! 1 and 3 on the first, broker 2 on the second), as an operator
//! co-locating brokers would pin them. nats-servers are not pinned (their
//! Go runtime spreads over every CPU, as they are normally run). A NATS cluster is three servers with JetStream,
//! each routing to the others; it is ready once a stream with a replica on
//! every server can be created.
//!
//! Servers are stopped when the [`Deployment`] is stopped or dropped, and
//! one of them can be killed (SIGKILL) for a failover measurement.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shardmq_client::{Admin, BrokerStatus, ClientConfig};
use tokio::time::Instant;

use crate::procs::{self, ProcError, ServerProcess, START_TIMEOUT};

/// Name of the clusters the harness starts (shardmq's cluster id and the
/// NATS cluster name).
pub const CLUSTER_NAME: &str = "shardmq-bench";
/// Prefix of the NATS server names; server i is `<prefix><i>`.
pub const NATS_SERVER_PREFIX: &str = "shardmq-bench-nats-";
/// Stream created and deleted to check that a NATS cluster is ready.
const NATS_PROBE_STREAM: &str = "shardmq-bench-probe";
/// Interval of the readiness polls.
const POLL: Duration = Duration::from_millis(100);

/// What one side of a run runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum System {
    /// `brokers` shardmq brokers of `shards` shards each (one broker: no
    /// peers; more: a static cluster).
    Shardmq {
        /// Brokers (1 or 3).
        brokers: u32,
        /// Shards of each broker.
        shards: u32,
    },
    /// A shardmq broker (or cluster) the harness did not start.
    ShardmqExternal {
        /// Its bootstrap address(es), comma-separated.
        bootstrap: String,
    },
    /// `nodes` nats-servers with JetStream (more than one: a cluster).
    Nats {
        /// Servers (1 or 3).
        nodes: u32,
    },
}

/// The binaries servers are started from.
#[derive(Debug, Clone, Default)]
pub struct Binaries {
    /// `shardmq-broker`.
    pub broker: Option<PathBuf>,
    /// `nats-server`.
    pub nats: Option<PathBuf>,
}

/// One server of a deployment.
#[derive(Debug)]
struct Node {
    /// The id the servers use for it: the node id for shardmq ("2"), the
    /// server name for NATS.
    id: String,
    /// Its name in reports: "shardmq-broker", "shardmq-broker 2",
    /// "nats-server 3".
    name: String,
    /// Its client address.
    addr: String,
    /// Port of its Prometheus endpoint on 127.0.0.1 (shardmq brokers).
    metrics_port: Option<u16>,
    process: ServerProcess,
}

/// The running servers of one side.
#[derive(Debug)]
pub struct Deployment {
    system: System,
    nodes: Vec<Node>,
    /// Client addresses (for an external broker, those given).
    bootstrap: Vec<String>,
    /// Facts for the report: server version, flags, topology.
    config: BTreeMap<String, String>,
}

impl Deployment {
    /// Starts the servers of `system` under `data_parent` and waits until
    /// they are ready.
    pub async fn start(
        system: &System,
        bins: &Binaries,
        data_parent: &Path,
    ) -> Result<Self, ProcError> {
        match system {
            System::ShardmqExternal { bootstrap } => {
                let mut config = BTreeMap::new();
                config.insert("server".into(), format!("external broker at {bootstrap}"));
                config.insert(
                    "server_cpu".into(),
                    "not measured (the broker was not started by the harness)".into(),
                );
                Ok(Self {
                    system: system.clone(),
                    nodes: Vec::new(),
                    bootstrap: split_addrs(bootstrap),
                    config,
                })
            }
            System::Shardmq { brokers, shards } => {
                let bin = bins.broker.as_deref().ok_or_else(|| {
                    ProcError("no shardmq-broker binary to start brokers from".into())
                })?;
                if *brokers <= 1 {
                    start_single_broker(system, bin, *shards, data_parent).await
                } else {
                    start_broker_cluster(system, bin, *brokers, *shards, data_parent).await
                }
            }
            System::Nats { nodes } => {
                let bin = bins
                    .nats
                    .as_deref()
                    .ok_or_else(|| ProcError("no nats-server binary".into()))?;
                if *nodes <= 1 {
                    start_single_nats(system, bin, data_parent).await
                } else {
                    start_nats_cluster(system, bin, *nodes, data_parent).await
                }
            }
        }
    }

    /// What runs.
    pub fn system(&self) -> &System {
        &self.system
    }

    /// Every server's client address.
    pub fn bootstrap(&self) -> &[String] {
        &self.bootstrap
    }

    /// Facts about the servers for the report.
    pub fn config(&self) -> &BTreeMap<String, String> {
        &self.config
    }

    /// Server processes started here.
    pub fn server_count(&self) -> u32 {
        self.nodes.len() as u32
    }

    /// (report name, pid) of every running server, in node order.
    pub fn processes(&self) -> Vec<(String, u32)> {
        self.nodes
            .iter()
            .filter_map(|n| n.process.pid().map(|pid| (n.name.clone(), pid)))
            .collect()
    }

    /// (report name, metrics port on 127.0.0.1) of every running server
    /// with a Prometheus endpoint, in node order.
    pub fn metrics_ports(&self) -> Vec<(String, u16)> {
        self.nodes
            .iter()
            .filter(|n| n.process.pid().is_some())
            .filter_map(|n| n.metrics_port.map(|port| (n.name.clone(), port)))
            .collect()
    }

    /// The report name of the server the servers call `id`.
    pub fn name_of(&self, id: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.name.as_str())
    }

    /// The ids the servers use for one another, in node order.
    pub fn node_ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.id.clone()).collect()
    }

    /// An error with the log of the first server that is no longer
    /// running (killed ones excepted).
    pub fn check_running(&mut self) -> Result<(), ProcError> {
        for node in &mut self.nodes {
            if node.process.pid().is_some() && !node.process.is_running() {
                return Err(ProcError(format!(
                    "{} is no longer running; its log:\n{}",
                    node.name,
                    node.process.log_tail()
                )));
            }
        }
        Ok(())
    }

    /// SIGKILL to the server the servers call `id`; the client address it
    /// had, which is also removed from [`bootstrap`](Self::bootstrap).
    pub fn kill(&mut self, id: &str) -> Option<String> {
        let node = self.nodes.iter_mut().find(|n| n.id == id)?;
        node.process.kill()?;
        let addr = node.addr.clone();
        self.bootstrap.retain(|a| *a != addr);
        Some(addr)
    }

    /// Stops every server (SIGTERM, then SIGKILL after a grace period);
    /// a line for each that did not exit cleanly.
    pub fn stop(&mut self) -> Vec<String> {
        let mut unclean = Vec::new();
        for node in &mut self.nodes {
            if node.process.pid().is_none() {
                continue;
            }
            if let Some(status) = node.process.stop() {
                // nats-server exits with 1 after a SIGTERM it handled
                // cleanly.
                let nats = node.name.starts_with("nats-server");
                if !(status.success() || (nats && status.code() == Some(1))) {
                    unclean.push(format!(
                        "{} exited with {status}; the end of its log:\n{}",
                        node.name,
                        node.process.log_tail()
                    ));
                }
            }
        }
        unclean
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.stop();
    }
}

fn split_addrs(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

fn localhost(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

async fn start_single_broker(
    system: &System,
    bin: &Path,
    shards: u32,
    data_parent: &Path,
) -> Result<Deployment, ProcError> {
    eprintln!(
        "starting {} ({shards} shards, data under {})",
        bin.display(),
        data_parent.display()
    );
    let (server, metrics_port) = procs::start_broker(bin, shards, data_parent).await?;
    let addr = server.addr().to_owned();
    let mut config = BTreeMap::new();
    config.insert(
        "server".into(),
        format!("shardmq-broker started by the harness, {shards} shards, 127.0.0.1"),
    );
    config.insert("shards".into(), shards.to_string());
    Ok(Deployment {
        system: system.clone(),
        nodes: vec![Node {
            id: "1".into(),
            name: "shardmq-broker".into(),
            addr: addr.clone(),
            metrics_port: Some(metrics_port),
            process: server,
        }],
        bootstrap: vec![addr],
        config,
    })
}

/// Ports of one broker of a cluster.
#[derive(Debug, Clone, Copy)]
struct BrokerPorts {
    client: u16,
    metrics: u16,
    peer: u16,
    shard_base: u16,
}

async fn start_broker_cluster(
    system: &System,
    bin: &Path,
    brokers: u32,
    shards: u32,
    data_parent: &Path,
) -> Result<Deployment, ProcError> {
    eprintln!(
        "starting {brokers} x {} ({shards} shard(s) each, static peers, data under {})",
        bin.display(),
        data_parent.display()
    );
    let mut ports = Vec::new();
    for _ in 0..brokers {
        ports.push(BrokerPorts {
            client: procs::free_port()?,
            metrics: procs::free_port()?,
            peer: procs::free_port()?,
            shard_base: procs::free_port()?,
        });
    }
    // Shard s of a broker listens for peers on PEER + s and for clients on
    // SHARD_BASE + s: the pickers hand out single ports, so more than one
    // shard per broker needs ports that were not checked.
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{}", i + 1, p.peer))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let node_id = i + 1;
        let data = procs::data_dir(data_parent, &format!("shardmq-bench-broker-{node_id}."))?;
        let mut command = Command::new(bin);
        // The brokers share this machine's cores: unpinned, the kernel runs
        // each where a core is idle, as it does the peer's servers (pinned,
        // all three would put their shard on the first CPU).
        command
            .args(["--pin-shards", "false"])
            .args(["--node-id", &node_id.to_string()])
            .args(["--peers", &peers])
            .args(["--cluster-id", CLUSTER_NAME])
            .args(["--listen", &localhost(p.client)])
            .args(["--metrics", &localhost(p.metrics)])
            .args(["--shard-port-base", &p.shard_base.to_string()])
            .args(["--shards", &shards.to_string()])
            .arg("--data-dir")
            .arg(data.path());
        let name = format!("shardmq-broker {node_id}");
        let process = ServerProcess::spawn(&name, command, localhost(p.client), data)?;
        nodes.push(Node {
            id: node_id.to_string(),
            name,
            addr: localhost(p.client),
            metrics_port: Some(p.metrics),
            process,
        });
    }
    let mut deployment = Deployment {
        system: system.clone(),
        bootstrap: nodes.iter().map(|n| n.addr.clone()).collect(),
        nodes,
        config: BTreeMap::new(),
    };
    // Healthy: registered with the controller.
    for (node, p) in deployment.nodes.iter_mut().zip(&ports) {
        let metrics = p.metrics;
        node.process
            .wait_until("answer /health with 200 on", &localhost(metrics), || {
                procs::http_status(metrics, "/health") == Some(200)
            })
            .await?;
    }
    wait_cluster_formed(&mut deployment, brokers).await?;
    let config = &mut deployment.config;
    config.insert(
        "server".into(),
        format!(
            "{brokers} shardmq-brokers started by the harness (a static cluster on 127.0.0.1), \
             {shards} shard(s) each"
        ),
    );
    config.insert("brokers".into(), brokers.to_string());
    config.insert("shards".into(), shards.to_string());
    config.insert(
        "broker_cpus".into(),
        "not pinned (--pin-shards false): the kernel places the brokers' threads, as it does \
         the peer's servers"
            .into(),
    );
    config.insert(
        "broker_flags".into(),
        "--pin-shards false --node-id N --peers 1@..,2@..,3@.. --cluster-id shardmq-bench \
         --listen .. --metrics .. --shard-port-base .. --shards 1 --data-dir <fresh temporary \
         directory> (no config file: every other setting at its default)"
            .into(),
    );
    Ok(deployment)
}

/// Waits until the controller has a leader and `brokers` brokers are
/// active, as the cluster describes itself to a client.
async fn wait_cluster_formed(deployment: &mut Deployment, brokers: u32) -> Result<(), ProcError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        deployment.check_running()?;
        let config = ClientConfig::new(deployment.bootstrap.clone());
        let last = match Admin::connect(config).await {
            Ok(admin) => match admin.describe_cluster().await {
                Ok(d) => {
                    let active = d
                        .brokers
                        .iter()
                        .filter(|b| b.status == BrokerStatus::Active)
                        .count();
                    if d.controller_id >= 0 && active as u32 >= brokers {
                        return Ok(());
                    }
                    format!(
                        "controller {} and {active} of {brokers} brokers active",
                        d.controller_id
                    )
                }
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(ProcError(format!(
                "the cluster did not form within {} s ({last})",
                START_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn start_single_nats(
    system: &System,
    bin: &Path,
    data_parent: &Path,
) -> Result<Deployment, ProcError> {
    let version = procs::binary_version(bin, "--version");
    eprintln!("starting {} ({version})", bin.display());
    let server = procs::start_nats(bin, data_parent).await?;
    let addr = server.addr().to_owned();
    let mut config = BTreeMap::new();
    config.insert("server".into(), version);
    config.insert(
        "flags".into(),
        "-js -a 127.0.0.1 -sd <fresh temporary directory>".into(),
    );
    config.insert(
        "sync_interval".into(),
        "default (2 minutes in nats-server 2.9)".into(),
    );
    Ok(Deployment {
        system: system.clone(),
        nodes: vec![Node {
            id: String::new(),
            name: "nats-server".into(),
            addr: addr.clone(),
            metrics_port: None,
            process: server,
        }],
        bootstrap: vec![addr],
        config,
    })
}

async fn start_nats_cluster(
    system: &System,
    bin: &Path,
    nodes_n: u32,
    data_parent: &Path,
) -> Result<Deployment, ProcError> {
    let version = procs::binary_version(bin, "--version");
    eprintln!(
        "starting {nodes_n} x {} ({version}, a JetStream cluster on 127.0.0.1)",
        bin.display()
    );
    let mut ports = Vec::new();
    for _ in 0..nodes_n {
        ports.push((procs::free_port()?, procs::free_port()?));
    }
    let routes = ports
        .iter()
        .map(|(_, cluster)| format!("nats://127.0.0.1:{cluster}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, (client, cluster)) in ports.iter().enumerate() {
        let n = i + 1;
        let id = format!("{NATS_SERVER_PREFIX}{n}");
        let data = procs::data_dir(data_parent, &format!("shardmq-bench-nats-{n}."))?;
        let mut command = Command::new(bin);
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &client.to_string()])
            .args(["-n", &id, "--cluster_name", CLUSTER_NAME])
            .args(["--cluster", &format!("nats://127.0.0.1:{cluster}")])
            .args(["--routes", &routes])
            .arg("-sd")
            .arg(data.path());
        let name = format!("nats-server {n}");
        let process = ServerProcess::spawn(&name, command, localhost(*client), data)?;
        nodes.push(Node {
            id,
            name,
            addr: localhost(*client),
            metrics_port: None,
            process,
        });
    }
    let mut deployment = Deployment {
        system: system.clone(),
        bootstrap: nodes.iter().map(|n| n.addr.clone()).collect(),
        nodes,
        config: BTreeMap::new(),
    };
    for node in &mut deployment.nodes {
        node.process.wait_accepting().await?;
    }
    wait_jetstream_cluster(&mut deployment, nodes_n).await?;
    let config = &mut deployment.config;
    config.insert("server".into(), version);
    config.insert("servers".into(), nodes_n.to_string());
    config.insert(
        "flags".into(),
        "-js -a 127.0.0.1 -p .. -n shardmq-bench-nats-N --cluster_name shardmq-bench --cluster \
         nats://127.0.0.1:.. --routes <all three> -sd <fresh temporary directory>"
            .into(),
    );
    config.insert(
        "sync_interval".into(),
        "default (2 minutes in nats-server 2.9)".into(),
    );
    Ok(deployment)
}

/// Waits until a stream with `replicas` replicas can be created (the
/// JetStream meta group has a leader and every server joined it).
async fn wait_jetstream_cluster(
    deployment: &mut Deployment,
    replicas: u32,
) -> Result<(), ProcError> {
    use async_nats::jetstream::{self, stream};
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        deployment.check_running()?;
        let connected = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(deployment.bootstrap.as_slice())
            .await;
        let last = match connected {
            Ok(client) => {
                let js = jetstream::new(client);
                let created = js
                    .create_stream(stream::Config {
                        name: NATS_PROBE_STREAM.to_owned(),
                        subjects: vec![format!("{NATS_PROBE_STREAM}.>")],
                        storage: stream::StorageType::File,
                        num_replicas: replicas as usize,
                        ..Default::default()
                    })
                    .await;
                match created {
                    Ok(_) => {
                        js.delete_stream(NATS_PROBE_STREAM)
                            .await
                            .map_err(|e| ProcError(format!("deleting the probe stream: {e}")))?;
                        return Ok(());
                    }
                    Err(e) => e.to_string(),
                }
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(ProcError(format!(
                "the NATS cluster did not accept an R{replicas} stream within {} s ({last})",
                START_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}
