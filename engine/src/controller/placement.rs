//! Where the replicas of a new topic's partitions go.
//!
//! Round-robin over the brokers, continued from topic to topic by a cursor
//! the metadata keeps ([`super::ClusterMetadata::placement_cursor`]).
//! Partition `p` of a topic placed at cursor `cursor` takes position
//! `c = cursor + p` of the rotation; with the `n` brokers sorted by id:
//!
//! - its replicas are the brokers at `(c + k) % n` for `k` in
//!   `0..replication_factor`: distinct, and the first, the preferred leader,
//!   advances by one broker per position, so preferred leaders spread evenly
//!   over the brokers;
//! - its shard index is `s = (c / n) % shards(first)`, and every replica
//!   takes shard `s % shards(broker)`. With equal shard counts that is the
//!   same shard on every replica, so a shard's Raft traffic goes mostly to
//!   its counterparts on other brokers; and since each broker is first at
//!   every `n`-th position, the partitions it leads rotate over all its
//!   shards.
//!
//! Successive topics continue the rotation where the previous one stopped,
//! so the spread stays within one partition of even across topics as long as
//! the set of brokers does not change.

use super::limits::PARTITIONS_PER_TOPIC_MAX;
use super::state::{NodeId, ReplicaPlace};

/// Why a topic cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No broker to place on.
    #[error("no active broker to place replicas on: start a broker, or wait for one to register")]
    NoBrokers,
    /// A topic needs at least one partition.
    #[error("a topic needs at least 1 partition")]
    NoPartitions,
    /// More partitions than a topic may have.
    #[error("{asked} partitions is more than the {max} a topic may have")]
    TooManyPartitions {
        /// Partitions asked for.
        asked: u32,
        /// [`PARTITIONS_PER_TOPIC_MAX`].
        max: u32,
    },
    /// The replication factor is 0 or more than there are brokers.
    #[error(
        "replication factor {asked} cannot be placed on {brokers} brokers: \
         it must be between 1 and the number of brokers"
    )]
    ReplicationFactor {
        /// Replication factor asked for.
        asked: u16,
        /// Brokers to place on.
        brokers: usize,
    },
    /// A broker with no shard.
    #[error("broker {node_id} has no shard")]
    NoShards {
        /// The broker.
        node_id: NodeId,
    },
    /// The same broker twice.
    #[error("broker {node_id} is listed twice")]
    DuplicateBroker {
        /// The broker.
        node_id: NodeId,
    },
}

/// The replicas of each of `partitions` partitions, by partition index,
/// placed over `brokers` (node id and shard count of each; any order) from
/// position `cursor` of the rotation, as the module documentation describes.
/// The first replica of each partition is its preferred leader.
///
/// Positions wrap around at `u64::MAX`, which a cursor advanced by partition
/// counts does not reach.
pub fn place(
    brokers: &[(NodeId, u16)],
    partitions: u32,
    replication_factor: u16,
    cursor: u64,
) -> Result<Vec<Vec<ReplicaPlace>>, PlacementError> {
    if brokers.is_empty() {
        return Err(PlacementError::NoBrokers);
    }
    if partitions == 0 {
        return Err(PlacementError::NoPartitions);
    }
    if partitions > PARTITIONS_PER_TOPIC_MAX {
        return Err(PlacementError::TooManyPartitions {
            asked: partitions,
            max: PARTITIONS_PER_TOPIC_MAX,
        });
    }
    if replication_factor == 0 || usize::from(replication_factor) > brokers.len() {
        return Err(PlacementError::ReplicationFactor {
            asked: replication_factor,
            brokers: brokers.len(),
        });
    }
    let mut sorted = brokers.to_vec();
    sorted.sort_unstable();
    for (i, &(node_id, shards)) in sorted.iter().enumerate() {
        if shards == 0 {
            return Err(PlacementError::NoShards { node_id });
        }
        if i > 0 && sorted[i - 1].0 == node_id {
            return Err(PlacementError::DuplicateBroker { node_id });
        }
    }

    let n = sorted.len() as u64;
    let placed = (0..partitions)
        .map(|p| {
            let c = cursor.wrapping_add(u64::from(p));
            let first = c % n;
            let (_, first_shards) = sorted[first as usize];
            let s = (c / n) % u64::from(first_shards);
            (0..u64::from(replication_factor))
                .map(|k| {
                    // k < n, so first + k < 2n cannot overflow.
                    let (node_id, shards) = sorted[((first + k) % n) as usize];
                    ReplicaPlace {
                        node_id,
                        shard: (s % u64::from(shards)) as u16,
                    }
                })
                .collect()
        })
        .collect();
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn nodes(places: &[ReplicaPlace]) -> Vec<NodeId> {
        places.iter().map(|r| r.node_id).collect()
    }

    #[test]
    fn three_brokers_rotate_leaders_then_shards() {
        let brokers = [(3, 2), (1, 2), (2, 2)];
        let placed = place(&brokers, 7, 2, 0).unwrap();
        let got: Vec<(Vec<NodeId>, u16)> = placed.iter().map(|p| (nodes(p), p[0].shard)).collect();
        assert_eq!(
            got,
            vec![
                (vec![1, 2], 0),
                (vec![2, 3], 0),
                (vec![3, 1], 0),
                (vec![1, 2], 1),
                (vec![2, 3], 1),
                (vec![3, 1], 1),
                (vec![1, 2], 0),
            ]
        );
        for p in &placed {
            assert!(p.iter().all(|r| r.shard == p[0].shard), "{p:?}");
        }
    }

    #[test]
    fn the_cursor_continues_the_rotation() {
        let brokers = [(1, 4), (2, 4), (3, 4)];
        let whole = place(&brokers, 10, 3, 5).unwrap();
        let first = place(&brokers, 4, 3, 5).unwrap();
        let rest = place(&brokers, 6, 3, 9).unwrap();
        assert_eq!(whole, [first, rest].concat());
    }

    #[test]
    fn a_broker_with_fewer_shards_takes_the_index_modulo_its_count() {
        let placed = place(&[(1, 4), (2, 1)], 8, 2, 0).unwrap();
        for p in &placed {
            let by_node: BTreeMap<NodeId, u16> = p.iter().map(|r| (r.node_id, r.shard)).collect();
            assert_eq!(by_node[&2], 0);
        }
        // Broker 1 leads positions 0, 2, 4, 6: shards 0, 1, 2, 3.
        let led_by_1: Vec<u16> = placed
            .iter()
            .filter(|p| p[0].node_id == 1)
            .map(|p| p[0].shard)
            .collect();
        assert_eq!(led_by_1, vec![0, 1, 2, 3]);
    }

    #[test]
    fn place_refuses_what_cannot_be_placed() {
        // (brokers, partitions, replication factor, the refusal)
        type Case = (&'static [(NodeId, u16)], u32, u16, PlacementError);
        let cases: &[Case] = &[
            (&[], 1, 1, PlacementError::NoBrokers),
            (&[(1, 1)], 0, 1, PlacementError::NoPartitions),
            (
                &[(1, 1)],
                PARTITIONS_PER_TOPIC_MAX + 1,
                1,
                PlacementError::TooManyPartitions {
                    asked: PARTITIONS_PER_TOPIC_MAX + 1,
                    max: PARTITIONS_PER_TOPIC_MAX,
                },
            ),
            (
                &[(1, 1)],
                1,
                0,
                PlacementError::ReplicationFactor {
                    asked: 0,
                    brokers: 1,
                },
            ),
            (
                &[(1, 1), (2, 1)],
                1,
                3,
                PlacementError::ReplicationFactor {
                    asked: 3,
                    brokers: 2,
                },
            ),
            (
                &[(1, 1), (2, 0)],
                1,
                1,
                PlacementError::NoShards { node_id: 2 },
            ),
            (
                &[(1, 1), (1, 2)],
                1,
                1,
                PlacementError::DuplicateBroker { node_id: 1 },
            ),
        ];
        for (brokers, partitions, rf, expected) in cases {
            assert_eq!(
                place(brokers, *partitions, *rf, 0).as_ref(),
                Err(expected),
                "{brokers:?} {partitions} {rf}"
            );
        }
    }

    #[test]
    fn positions_wrap_without_overflow() {
        let placed = place(&[(1, 3), (2, 3)], 4, 2, u64::MAX - 1).unwrap();
        assert_eq!(placed.len(), 4);
    }

    fn spread_within_one<K: Ord>(counts: &BTreeMap<K, usize>, keys: usize) -> bool {
        let max = counts.values().copied().max().unwrap_or(0);
        let min = if counts.len() < keys {
            0
        } else {
            counts.values().copied().min().unwrap_or(0)
        };
        max - min <= 1
    }

    proptest! {
        #[test]
        fn replicas_are_distinct_brokers_on_valid_shards(
            shard_counts in proptest::collection::vec(1u16..6, 1..8),
            partitions in 1u32..64,
            rf_seed in any::<u16>(),
            cursor in any::<u64>(),
        ) {
            let brokers: Vec<(NodeId, u16)> =
                shard_counts.iter().enumerate().map(|(i, &s)| (i as NodeId * 3 + 1, s)).collect();
            let rf = rf_seed % brokers.len() as u16 + 1;
            let placed = place(&brokers, partitions, rf, cursor).unwrap();
            prop_assert_eq!(placed.len(), partitions as usize);
            let shards: BTreeMap<NodeId, u16> = brokers.iter().copied().collect();
            for p in &placed {
                prop_assert_eq!(p.len(), rf as usize);
                for (i, r) in p.iter().enumerate() {
                    prop_assert!(p[..i].iter().all(|o| o.node_id != r.node_id), "{:?}", p);
                    prop_assert!(r.shard < shards[&r.node_id], "{:?}", p);
                }
            }
        }

        #[test]
        fn leaders_spread_evenly_over_brokers_and_shards_across_topics(
            broker_count in 1usize..7,
            shards in 1u16..5,
            topics in proptest::collection::vec((1u32..40, any::<u16>()), 1..20),
        ) {
            let brokers: Vec<(NodeId, u16)> =
                (0..broker_count).map(|i| (i as NodeId, shards)).collect();
            let mut cursor = 0u64;
            let mut per_broker: BTreeMap<NodeId, usize> = BTreeMap::new();
            let mut per_shard: BTreeMap<(NodeId, u16), usize> = BTreeMap::new();
            for (partitions, rf_seed) in topics {
                let rf = rf_seed % broker_count as u16 + 1;
                for p in place(&brokers, partitions, rf, cursor).unwrap() {
                    *per_broker.entry(p[0].node_id).or_insert(0) += 1;
                    *per_shard.entry((p[0].node_id, p[0].shard)).or_insert(0) += 1;
                    prop_assert!(p.iter().all(|r| r.shard == p[0].shard));
                }
                cursor += u64::from(partitions);
                prop_assert!(spread_within_one(&per_broker, broker_count), "{:?}", per_broker);
                prop_assert!(
                    spread_within_one(&per_shard, broker_count * usize::from(shards)),
                    "{:?}",
                    per_shard
                );
            }
        }
    }
}
