//! The broker's identity on disk: `broker.json` in the data directory holds
//! the cluster id, the node id and the incarnation, a random number drawn
//! when the data directory is first used.
//!
//! The incarnation is what lets the cluster tell a broker that restarted
//! with its data from one whose data directory was wiped (or a second
//! broker started with the same id): the controller records each broker's
//! incarnation when it registers, and every inter-broker connection's
//! handshake carries it. A broker whose Raft state was lost must not vote
//! again in terms it already voted in, so it is refused until an operator
//! acts.
//!
//! Broker view: read once by the main thread at start-up.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the identity file in the data directory.
pub const IDENTITY_FILE: &str = "broker.json";

/// Who this broker is. Broker view: one per process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerIdentity {
    /// The cluster the data directory belongs to.
    pub cluster_id: String,
    /// The node id the data directory belongs to.
    pub node_id: i32,
    /// Drawn when the data directory was first used; never 0.
    pub incarnation: u64,
}

/// Why the identity cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The file could not be read or written.
    #[error("broker identity {path}: {op} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("broker identity {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
    /// The data directory belongs to another broker or cluster.
    #[error(
        "the data directory {dir} belongs to node {found_node} of cluster {found_cluster:?}, \
         but this broker is node {node} of cluster {cluster:?}: start it with its own data \
         directory, or with --node-id {found_node} and cluster id {found_cluster:?}"
    )]
    Mismatch {
        dir: PathBuf,
        found_cluster: String,
        found_node: i32,
        cluster: String,
        node: i32,
    },
}

/// A random, non-zero 64-bit number from the kernel.
fn random_u64() -> Result<u64, std::io::Error> {
    let mut bytes = [0u8; 8];
    loop {
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))?;
        let n = u64::from_le_bytes(bytes);
        if n != 0 {
            return Ok(n);
        }
    }
}

impl BrokerIdentity {
    /// Reads the identity of `dir`, or creates it (durably) when the
    /// directory has none. Refuses a directory of another node or cluster.
    pub fn load_or_create(
        dir: &Path,
        cluster_id: &str,
        node_id: i32,
    ) -> Result<(Self, bool), IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| IdentityError::Io { op, path, source }
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let found: BrokerIdentity =
                    serde_json::from_slice(&bytes).map_err(|error| IdentityError::Invalid {
                        path: path.clone(),
                        message: error.to_string(),
                    })?;
                if found.node_id != node_id || found.cluster_id != cluster_id {
                    return Err(IdentityError::Mismatch {
                        dir: dir.to_owned(),
                        found_cluster: found.cluster_id,
                        found_node: found.node_id,
                        cluster: cluster_id.to_owned(),
                        node: node_id,
                    });
                }
                Ok((found, false))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let identity = BrokerIdentity {
                    cluster_id: cluster_id.to_owned(),
                    node_id,
                    incarnation: random_u64().map_err(io("read /dev/urandom", &path))?,
                };
                let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
                let bytes = serde_json::to_vec_pretty(&identity).expect("identity serialises");
                let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
                file.write_all(&bytes).map_err(io("write", &tmp))?;
                file.sync_all().map_err(io("fsync", &tmp))?;
                drop(file);
                std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io("fsync dir", dir))?;
                Ok((identity, true))
            }
            Err(source) => Err(IdentityError::Io {
                op: "read",
                path,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_read_back_and_another_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = BrokerIdentity::load_or_create(dir.path(), "c", 2).unwrap();
        assert!(created);
        assert_ne!(first.incarnation, 0);
        let (again, created) = BrokerIdentity::load_or_create(dir.path(), "c", 2).unwrap();
        assert!(!created);
        assert_eq!(again, first);
        let error = BrokerIdentity::load_or_create(dir.path(), "c", 3).unwrap_err();
        assert!(error.to_string().contains("belongs to node 2"), "{error}");
        let error = BrokerIdentity::load_or_create(dir.path(), "other", 2).unwrap_err();
        assert!(matches!(error, IdentityError::Mismatch { .. }));
    }
}
