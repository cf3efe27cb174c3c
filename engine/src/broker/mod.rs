//! The broker process: N shards (glommio executors pinned one per core),
//! joined by a channel mesh, each serving clients on the shared client port
//! and on its own port and other brokers on its inter-broker port; the
//! metrics endpoint on a thread; signals on another.
//!
//! * [`identity`]: the data directory's cluster id, node id and
//!   incarnation.
//! * [`shard`]: one shard's start-up, serving and stop.
//! * [`handler`]: the request handler (every api of the client protocol).
//! * [`router`]: the mesh messages and [`ShardRouter`], which runs a
//!   partition operation on the owning shard.
//! * [`service`]: the vocabulary of the partition service (errors, fetch
//!   arguments, what readers may see).
//! * [`raft_service`]: [`RaftService`], a shard's replicas (every partition
//!   a raft-rs group across its brokers) driven by the shard's loop.
//! * [`controller_service`]: the controller replica on shard 0 around the
//!   state machine of `crate::controller`.
//! * [`view`]: [`ClusterView`], the metadata shards route by.
//! * [`transport`]: the shard loop's transport over `net`'s inter-broker
//!   links, the inbound handler, and who may connect.
//! * [`raft_codec`]: raft-rs messages in and out of inter-broker frames.
//!
//! Process rules: SIGTERM or SIGINT stops every shard cleanly (stop
//! accepting, finish in-flight requests, sync the shard log) and the
//! process exits 0; a second signal exits at once with 130. A panic on any
//! thread prints the panic and stops the whole process with exit code 101,
//! so no half-alive broker remains. A shard that fails to start stops the
//! process with an error.

pub mod controller_service;
pub mod handler;
pub mod identity;
pub mod raft_codec;
pub mod raft_service;
pub mod router;
pub mod service;
pub mod shard;
pub mod transport;
pub mod view;

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use futures_channel::oneshot;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

pub use handler::BrokerHandler;
pub use identity::{BrokerIdentity, IdentityError};
pub use raft_service::RaftService;
pub use router::{ShardMsg, ShardRouter};
pub use service::ServiceError;
pub use shard::EXIT_REFUSED;
pub use view::ClusterView;

use crate::config::{Config, ConfigError};
use crate::metrics::{BrokerMetrics, MetricsBindError, MetricsServer};
use shard::{run_shard, ShardStart};

/// Why the broker could not run.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] MetricsBindError),
    /// A directory, thread or executor could not be made.
    #[error("{0}")]
    Setup(String),
    /// The data directory belongs to another broker or cannot be read.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A shard failed.
    #[error(transparent)]
    Shard(#[from] shard::ShardError),
}

/// Makes a panic on any thread stop the process with exit code 101 after
/// printing it: a shard that panicked must not leave a half-alive broker.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let thread = std::thread::current();
        eprintln!(
            "shardmq-broker: thread {} panicked; stopping the broker",
            thread.name().unwrap_or("unnamed")
        );
        std::process::exit(101);
    }));
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
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

/// Runs the broker until SIGTERM or SIGINT; returns once every shard
/// stopped cleanly.
pub fn run(config: Config) -> Result<(), BrokerError> {
    config.validate()?;
    let shards = config.shard_count();
    std::fs::create_dir_all(&config.broker.data_dir).map_err(|error| {
        BrokerError::Setup(format!(
            "cannot create broker.data_dir {}: {error}",
            config.broker.data_dir.display()
        ))
    })?;
    let (identity, created) = BrokerIdentity::load_or_create(
        &config.broker.data_dir,
        &config.cluster.cluster_id,
        config.broker.node_id,
    )?;
    if created {
        tracing::info!(incarnation = identity.incarnation, "new data directory");
    }
    let metrics = Arc::new(BrokerMetrics::new(config.broker.node_id, shards));
    let metrics_server = MetricsServer::start(config.monitoring.metrics_listen, metrics.clone())?;
    tracing::info!(
        node_id = config.broker.node_id,
        shards,
        listen = %config.broker.listen,
        metrics = %metrics_server.local_addr(),
        data_dir = %config.broker.data_dir.display(),
        "starting"
    );

    let mut stops = Vec::with_capacity(shards);
    let mut stop_receivers = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (stop, receiver) = oneshot::channel::<()>();
        stops.push(stop);
        stop_receivers.push(receiver);
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|error| BrokerError::Setup(format!("cannot watch signals: {error}")))?;
    let signal_metrics = metrics.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stops = Some(stops);
            for signal in signals.forever() {
                match stops.take() {
                    Some(stops) => {
                        tracing::info!(signal, "stopping on signal");
                        signal_metrics.stopping.store(true, Ordering::Relaxed);
                        for stop in stops {
                            let _ = stop.send(());
                        }
                    }
                    None => {
                        eprintln!("shardmq-broker: second signal {signal}; exiting now");
                        std::process::exit(130);
                    }
                }
            }
        })
        .map_err(|error| BrokerError::Setup(format!("cannot start the signal thread: {error}")))?;

    let cpus = if config.broker.pin_shards {
        allowed_cpus()
    } else {
        Vec::new()
    };
    let mesh = MeshBuilder::full(shards, shard::MESH_CHANNEL_CAPACITY);
    let (done, finished) = mpsc::channel::<(u16, Result<(), shard::ShardError>)>();
    let mut handles = Vec::with_capacity(shards);
    for (index, stop) in stop_receivers.into_iter().enumerate() {
        let shard = index as u16;
        let placement = match cpus.get(index % cpus.len().max(1)) {
            Some(cpu) => Placement::Fixed(*cpu),
            None => Placement::Unbound,
        };
        let ready_metrics = metrics.clone();
        let start = ShardStart {
            shard,
            config: config.clone(),
            identity: identity.clone(),
            mesh: mesh.clone(),
            metrics: metrics.shards[index].clone(),
            stop,
            ready: Box::new(move || {
                ready_metrics.shards_ready.fetch_add(1, Ordering::Relaxed);
            }),
        };
        let done = done.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{index}"))
            .io_memory(config.broker.io_memory_bytes)
            .spawn(move || async move {
                let result = run_shard(start).await;
                let _ = done.send((shard, result));
            })
            .map_err(|error| {
                BrokerError::Setup(format!(
                    "cannot start the executor of shard {index}: {error}"
                ))
            })?;
        handles.push(handle);
    }
    drop(done);
    for _ in 0..shards {
        match finished.recv() {
            Ok((_, Ok(()))) => {}
            Ok((shard, Err(error))) => {
                tracing::error!(shard, %error, "shard failed");
                return Err(error.into());
            }
            Err(_) => return Err(BrokerError::Setup("a shard ended without reporting".into())),
        }
    }
    for handle in handles {
        let _ = handle.join();
    }
    metrics_server.stop();
    tracing::info!("stopped");
    Ok(())
}
