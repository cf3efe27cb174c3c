//! Three voters of one partition, each with its own shard log, over a
//! simulated network: election, replication with identical bytes and
//! offsets, and a leader partitioned away (pre-vote and check-quorum), whose
//! uncommitted suffix is truncated when the partition heals.

mod raft_common;

use raft_common::{batch, log_entries, offsets, run, stamped, Cluster};
use shardmq_engine::raft::{ProduceWaiter, RaftError};

const P: u64 = 3;
const SEED: u64 = 0x5eed_0001;

/// Steps until every waiter resolved; returns the outcomes.
async fn resolve_all(
    c: &Cluster,
    waiters: Vec<(Vec<u8>, ProduceWaiter)>,
) -> Vec<(Vec<u8>, Result<shardmq_engine::raft::ProduceAck, RaftError>)> {
    let mut pending: Vec<_> = waiters.into_iter().map(|(b, w)| (b, w, None)).collect();
    for _ in 0..2_000 {
        for (_, w, out) in pending.iter_mut() {
            if out.is_none() {
                *out = w.try_result();
            }
        }
        if pending.iter().all(|p| p.2.is_some()) {
            return pending
                .into_iter()
                .map(|(b, _, o)| (b, o.unwrap()))
                .collect();
        }
        c.step(3).await;
    }
    panic!("produces not resolved within 2,000 ticks");
}

/// All nodes commit up to the same index and hold identical entries and
/// offsets up to it.
async fn assert_converged(c: &Cluster) -> u64 {
    let commit = c.commit(1);
    let reference = log_entries(c.node(1).log(), P, commit).await;
    let reference_offsets = offsets(c.node(1).log(), P, commit).await;
    assert_eq!(reference.len() as u64, commit);
    for id in 2..=3 {
        assert_eq!(c.commit(id), commit, "node {id} commit");
        assert_eq!(
            log_entries(c.node(id).log(), P, commit).await,
            reference,
            "node {id} entries"
        );
        assert_eq!(
            offsets(c.node(id).log(), P, commit).await,
            reference_offsets,
            "node {id} offsets"
        );
        assert_eq!(
            c.node(id).log().next_offset(P).unwrap(),
            c.node(1).log().next_offset(P).unwrap()
        );
    }
    commit
}

#[test]
fn three_voters_replicate_and_survive_a_partitioned_leader() {
    eprintln!("seed {SEED:#x}");
    run(|| async {
        let c = Cluster::start(3, P, SEED).await;
        c.step_until("a leader", 500, |c| c.leader().is_some())
            .await;
        let leader = c.leader().unwrap();

        // Replication: 100 produces commit on a majority.
        let mut waiters = Vec::new();
        for i in 0..100 {
            let b = batch(2, i);
            let w = c.node(leader).produce(P, &b, false).unwrap();
            waiters.push((b, w));
            if i % 10 == 9 {
                c.step(1).await;
            }
        }
        let acks = resolve_all(&c, waiters).await;
        let mut next_offset = 0;
        for (b, r) in &acks {
            let ack = r.as_ref().expect("committed");
            assert_eq!(ack.base_offset, next_offset);
            next_offset += 2;
            let e =
                &log_entries(c.node(leader).log(), P, ack.index).await[(ack.index - 1) as usize];
            assert_eq!(e.3, stamped(b, ack.base_offset, ack.term));
        }
        let last_acked = acks.last().unwrap().1.as_ref().unwrap().index;
        c.step_until("followers commit", 500, |c| {
            (1..=3).all(|id| c.commit(id) >= last_acked)
        })
        .await;
        assert_converged(&c).await;

        // A follower is not the leader.
        let follower = (1..=3).find(|&id| id != leader).unwrap();
        match c.node(follower).produce(P, &batch(1, 999), false) {
            Err(RaftError::NotLeader {
                leader: Some(l), ..
            }) => assert_eq!(l, leader),
            other => panic!("expected NotLeader, got {other:?}"),
        }

        // Partition the leader away; it accepts proposals it cannot commit.
        let old_leader = leader;
        let old_term = c.node(old_leader).with_replica(P, |r| r.term()).unwrap();
        c.net.borrow_mut().isolated.insert(old_leader);
        let mut doomed = Vec::new();
        for i in 0..5 {
            let b = batch(1, 10_000 + i);
            doomed.push((b.clone(), c.node(old_leader).produce(P, &b, false).unwrap()));
        }
        // Acks Leader answers once the leader appended, though the entry
        // can never commit on this side of the partition.
        let early = std::cell::RefCell::new(
            c.node(old_leader)
                .produce(P, &batch(1, 19_999), true)
                .unwrap(),
        );
        let early_ack = std::cell::RefCell::new(None);
        c.step_until("the isolated leader's own append", 100, |_| {
            if early_ack.borrow().is_none() {
                *early_ack.borrow_mut() = early.borrow_mut().try_result();
            }
            early_ack.borrow().is_some()
        })
        .await;
        let early_ack = early_ack
            .into_inner()
            .unwrap()
            .expect("acked at the append");
        assert!(
            c.commit(old_leader) < early_ack.index,
            "answered before the entry committed"
        );
        assert!(doomed[0].1.ticket().index < early_ack.index);
        c.step_until("a new leader among the others", 1_000, |c| {
            (1..=3).any(|id| {
                id != old_leader
                    && c.node(id)
                        .with_replica(P, |r| r.is_leader() && r.term() > old_term)
                        .unwrap()
            })
        })
        .await;
        c.step_until("the old leader steps down", 1_000, |c| {
            !c.node(old_leader)
                .with_replica(P, |r| r.is_leader())
                .unwrap()
        })
        .await;
        let new_leader = (1..=3)
            .find(|&id| id != old_leader && c.node(id).with_replica(P, |r| r.is_leader()).unwrap())
            .unwrap();
        let mut waiters = Vec::new();
        for i in 0..50 {
            let b = batch(2, 20_000 + i);
            waiters.push((b.clone(), c.node(new_leader).produce(P, &b, false).unwrap()));
        }
        let acks2 = resolve_all(&c, waiters).await;
        assert!(
            acks2.iter().all(|(_, r)| r.is_ok()),
            "the majority side commits"
        );

        // Heal: the old leader truncates its suffix and catches up.
        c.net.borrow_mut().isolated.clear();
        let target = acks2.last().unwrap().1.as_ref().unwrap().index;
        c.step_until("the old leader catches up", 2_000, |c| {
            c.commit(old_leader) >= target
        })
        .await;
        c.step_until("all commit alike", 500, |c| {
            let c1 = c.commit(1);
            (2..=3).all(|id| c.commit(id) == c1)
        })
        .await;
        assert_converged(&c).await;
        let doomed = resolve_all(&c, doomed).await;
        for (_, r) in &doomed {
            assert!(
                matches!(r, Err(RaftError::ProposalDropped { .. })),
                "got {r:?}"
            );
        }
        // Every acknowledged produce is in the old leader's log, as acked.
        let entries = log_entries(c.node(old_leader).log(), P, target).await;
        for (b, r) in acks.iter().chain(&acks2) {
            let ack = r.as_ref().unwrap();
            let e = &entries[(ack.index - 1) as usize];
            assert_eq!((e.0, e.1), (ack.index, ack.term));
            assert_eq!(e.3, stamped(b, ack.base_offset, ack.term));
        }
    });
}

#[test]
fn a_follower_behind_the_compaction_point_restarts_from_a_snapshot() {
    eprintln!("seed {SEED:#x}");
    run(|| async {
        let c = Cluster::start(3, P, SEED).await;
        c.step_until("a leader", 500, |c| c.leader().is_some())
            .await;
        let leader = c.leader().unwrap();
        let lagging = (1..=3).find(|&id| id != leader).unwrap();
        c.net.borrow_mut().isolated.insert(lagging);
        let mut waiters = Vec::new();
        for i in 0..40 {
            let b = batch(2, i);
            waiters.push((b.clone(), c.node(leader).produce(P, &b, false).unwrap()));
        }
        let acks = resolve_all(&c, waiters).await;
        let commit = acks.last().unwrap().1.as_ref().unwrap().index;
        // The leader drops everything up to its commit: the data is the log.
        let log = c.node(leader).log();
        log.compact(P, commit - 9).await.unwrap();
        log.sync().await.unwrap();
        let first = log.first_index(P).unwrap();

        c.net.borrow_mut().isolated.clear();
        c.step_until("the lagging follower catches up", 2_000, |c| {
            c.commit(lagging) >= commit
        })
        .await;
        let follower = c.node(lagging).log();
        assert_eq!(follower.first_index(P).unwrap(), first);
        assert_eq!(
            follower.log_start_offset(P).unwrap(),
            log.log_start_offset(P).unwrap()
        );
        assert_eq!(
            follower.next_offset(P).unwrap(),
            log.next_offset(P).unwrap()
        );
        assert_eq!(
            log_entries(follower, P, commit).await,
            log_entries(log, P, commit).await
        );
        assert_eq!(
            offsets(follower, P, commit).await,
            offsets(log, P, commit).await
        );
        // And it keeps replicating after the snapshot.
        let w = c.node(leader).produce(P, &batch(1, 77), false).unwrap();
        let ack = resolve_all(&c, vec![(batch(1, 77), w)]).await;
        let index = ack[0].1.as_ref().unwrap().index;
        c.step_until("the follower has the new entry", 500, |c| {
            c.commit(lagging) >= index
        })
        .await;
    });
}
