//! The commands of the controller group and their byte encoding.
//!
//! A command is proposed to the controller group as the bytes of
//! [`Command::encode`]: one format byte, [`COMMAND_FORMAT_VERSION`], then the
//! rkyv archive of the command. [`Command::decode`] checks the format byte
//! and validates the archive (bytecheck) before reading a field, so bytes
//! from a peer or from the disk can be anything: the worst they do is a
//! [`CommandError`].

use std::collections::BTreeMap;

use shardmq_schema::protocol::ErrorCode;

use super::limits::COMMAND_BYTES_MAX;
use super::state::{BrokerRegistration, NodeId, ReplicaPlace};

/// The format byte every encoded command starts with. A new format gets a
/// new value; a broker refuses formats it does not know rather than guess.
pub const COMMAND_FORMAT_VERSION: u8 = 1;

/// A change to the cluster metadata, replicated through the controller
/// group and applied by [`super::ClusterMetadata::apply`] on every broker.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Command {
    /// A broker starts: record it, or update its addresses, and mark it
    /// Active.
    RegisterBroker(BrokerRegistration),
    /// Create a topic and place its partitions' replicas on the Active
    /// brokers.
    CreateTopic {
        /// The topic's name.
        name: String,
        /// Its number of partitions, at least 1.
        partitions: u32,
        /// Replicas per partition, at least 1 and at most the number of
        /// Active brokers.
        replication_factor: u16,
        /// Configuration overrides.
        configs: BTreeMap<String, String>,
    },
    /// Delete a topic; its partitions' groups stop existing.
    DeleteTopic {
        /// The topic's name.
        name: String,
    },
    /// Set the replicas of one partition (after a Raft membership change);
    /// the first becomes the preferred leader.
    UpdateAssignment {
        /// The topic's name.
        topic: String,
        /// The partition's index.
        partition: u32,
        /// The new replicas, on distinct registered brokers.
        replicas: Vec<ReplicaPlace>,
    },
    /// Record the leaders partition groups reported; stale terms and
    /// unknown groups are ignored.
    RecordLeaders {
        /// One record per group.
        leaders: Vec<LeaderRecord>,
    },
    /// Make another replica the preferred leader of a partition (a planned
    /// leadership transfer).
    MigrateLeader {
        /// The topic's name.
        topic: String,
        /// The partition's index.
        partition: u32,
        /// The replica's broker that should lead.
        to: NodeId,
    },
    /// The controller's leader has not heard from a broker within the
    /// session timeout.
    MarkBrokerFailed {
        /// The broker.
        node_id: NodeId,
    },
    /// The controller's leader hears from a Failed broker again.
    MarkBrokerActive {
        /// The broker.
        node_id: NodeId,
    },
}

/// The leader of one partition group in one term, as a replica reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct LeaderRecord {
    /// The partition's Raft group id.
    pub group: u64,
    /// The broker that leads it.
    pub leader: NodeId,
    /// The Raft term of that leadership.
    pub term: u64,
}

/// Why bytes are not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No bytes at all.
    #[error("controller command is empty")]
    Empty,
    /// More bytes than any valid command has.
    #[error("controller command is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its length.
        len: usize,
        /// [`COMMAND_BYTES_MAX`].
        max: usize,
    },
    /// A format byte this build does not know, from a newer (or corrupt)
    /// broker.
    #[error(
        "controller command has format {version}, this broker reads format \
         {COMMAND_FORMAT_VERSION} only: upgrade every broker before using newer commands"
    )]
    UnsupportedFormat {
        /// The format byte found.
        version: u8,
    },
    /// The archive failed validation.
    #[error("controller command is corrupt: {reason}")]
    Corrupt {
        /// What the validator found.
        reason: String,
    },
}

impl CommandError {
    /// The wire code for a client or peer that sent such bytes.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidRequest
    }
}

impl Command {
    /// The command's bytes: [`COMMAND_FORMAT_VERSION`], then its rkyv
    /// archive.
    ///
    /// # Panics
    ///
    /// Only if the archive would exceed rkyv's 2 GiB relative-pointer range,
    /// hundreds of times more than [`COMMAND_BYTES_MAX`]: a command that big
    /// is a bug of its maker.
    pub fn encode(&self) -> Vec<u8> {
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .expect("a controller command archives within rkyv's offset range");
        let mut bytes = Vec::with_capacity(1 + archive.len());
        bytes.push(COMMAND_FORMAT_VERSION);
        bytes.extend_from_slice(&archive);
        bytes
    }

    /// Reads a command from `bytes` (from [`Command::encode`]), validating
    /// all of it. `bytes` need not be aligned.
    pub fn decode(bytes: &[u8]) -> Result<Command, CommandError> {
        let (&version, archive) = bytes.split_first().ok_or(CommandError::Empty)?;
        if bytes.len() > COMMAND_BYTES_MAX {
            return Err(CommandError::TooLarge {
                len: bytes.len(),
                max: COMMAND_BYTES_MAX,
            });
        }
        if version != COMMAND_FORMAT_VERSION {
            return Err(CommandError::UnsupportedFormat { version });
        }
        // The archive follows a one-byte header, so it is never aligned where
        // it lies; the validator requires alignment.
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(archive.len());
        aligned.extend_from_slice(archive);
        rkyv::from_bytes::<Command, rkyv::rancor::Error>(&aligned).map_err(|e| {
            CommandError::Corrupt {
                reason: e.to_string(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn samples() -> Vec<Command> {
        vec![
            Command::RegisterBroker(BrokerRegistration {
                node_id: 3,
                inter_broker_addr: "10.0.0.3:9100".into(),
                client_host: "broker-3.example".into(),
                client_port: 9092,
                shard_ports: vec![9200, 9201, 9202, 9203],
                incarnation: 0xdead_beef_cafe,
            }),
            Command::CreateTopic {
                name: "orders".into(),
                partitions: 12,
                replication_factor: 3,
                configs: BTreeMap::from([("retention.ms".into(), "3600000".into())]),
            },
            Command::DeleteTopic {
                name: "orders".into(),
            },
            Command::UpdateAssignment {
                topic: "orders".into(),
                partition: 4,
                replicas: vec![
                    ReplicaPlace {
                        node_id: 2,
                        shard: 1,
                    },
                    ReplicaPlace {
                        node_id: 5,
                        shard: 0,
                    },
                ],
            },
            Command::RecordLeaders {
                leaders: vec![
                    LeaderRecord {
                        group: 1 << 32,
                        leader: 2,
                        term: 9,
                    },
                    LeaderRecord {
                        group: (1 << 32) | 1,
                        leader: 3,
                        term: 1,
                    },
                ],
            },
            Command::MigrateLeader {
                topic: "orders".into(),
                partition: 0,
                to: 5,
            },
            Command::MarkBrokerFailed { node_id: 2 },
            Command::MarkBrokerActive { node_id: 2 },
        ]
    }

    #[test]
    fn every_command_round_trips() {
        for command in samples() {
            let bytes = command.encode();
            assert_eq!(bytes[0], COMMAND_FORMAT_VERSION);
            assert_eq!(Command::decode(&bytes), Ok(command));
        }
    }

    #[test]
    fn decode_reads_unaligned_input() {
        for command in samples() {
            let bytes = command.encode();
            for shift in 1..8 {
                let mut buffer = vec![0u8; shift];
                buffer.extend_from_slice(&bytes);
                assert_eq!(Command::decode(&buffer[shift..]), Ok(command.clone()));
            }
        }
    }

    #[test]
    fn decode_refuses_what_is_not_a_command() {
        let good = samples()[1].encode();
        assert_eq!(Command::decode(&[]), Err(CommandError::Empty));

        let mut newer = good.clone();
        newer[0] = COMMAND_FORMAT_VERSION + 1;
        assert_eq!(
            Command::decode(&newer),
            Err(CommandError::UnsupportedFormat {
                version: COMMAND_FORMAT_VERSION + 1
            })
        );

        let huge = vec![COMMAND_FORMAT_VERSION; COMMAND_BYTES_MAX + 1];
        assert!(matches!(
            Command::decode(&huge),
            Err(CommandError::TooLarge { .. })
        ));

        for len in 1..good.len() {
            assert!(
                matches!(
                    Command::decode(&good[..len]),
                    Err(CommandError::Corrupt { .. })
                ),
                "truncated to {len}"
            );
        }
        assert_eq!(
            CommandError::Empty.code(),
            shardmq_schema::protocol::ErrorCode::InvalidRequest
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Command::decode(&bytes);
            let mut versioned = vec![COMMAND_FORMAT_VERSION];
            versioned.extend_from_slice(&bytes);
            let _ = Command::decode(&versioned);
        }

        #[test]
        fn decode_never_panics_on_mutated_commands(
            which in 0usize..8,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = samples()[which].encode();
            for (at, value) in flips {
                let i = at.index(bytes.len() - 1) + 1;
                bytes[i] = value;
            }
            // Whatever decodes must encode again to a command that decodes
            // to itself.
            if let Ok(command) = Command::decode(&bytes) {
                prop_assert_eq!(Command::decode(&command.encode()), Ok(command));
            }
        }
    }
}
