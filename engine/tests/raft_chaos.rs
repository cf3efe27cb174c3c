//! Deterministic fault injection over several seeds: random message loss,
//! delays and partitions for a bounded number of ticks while producing,
//! then heal. Every replica converges to the same committed log, and nothing
//! that was committed (acknowledged, or seen as committed by any replica)
//! is lost or moved. The entry cache is tiny, so lagging followers are fed
//! through the async fetch path.

mod raft_common;

use raft_common::{batch, log_entries, offsets, run, stamped, Cluster};
use shardmq_engine::raft::{ProduceAck, ShardLoopConfig};

const P: u64 = 11;
const CHAOS_TICKS: u64 = 300;

/// Returns how many entry reads went through the async fetch path.
fn chaos(seed: u64) -> usize {
    eprintln!("chaos seed {seed} (replay: change SEEDS to [{seed}])");
    run(|| async move {
        let mut cfg = ShardLoopConfig::default();
        cfg.replica.entry_cache_bytes_max = 512;
        cfg.replica.max_size_per_msg = 2 << 10;
        let c = Cluster::start_with(3, P, seed, cfg).await;
        {
            let mut net = c.net.borrow_mut();
            net.default_link.drop_per_mille = 100;
            net.default_link.delay_max = 4;
        }
        let mut produced: Vec<(Vec<u8>, shardmq_engine::raft::ProduceWaiter)> = Vec::new();
        let mut acked: Vec<(Vec<u8>, ProduceAck)> = Vec::new();
        // (index, term) pairs some replica reported committed.
        let mut seen_committed: Vec<(u64, u64)> = Vec::new();
        for tick in 0..CHAOS_TICKS {
            {
                let mut net = c.net.borrow_mut();
                if net.rng.chance(30) {
                    net.isolated.clear();
                    if net.rng.chance(600) {
                        let victim = net.rng.below(3) + 1;
                        net.isolated.insert(victim);
                    }
                }
            }
            for id in 1..=3u64 {
                let is_leader = c.node(id).with_replica(P, |r| r.is_leader()).unwrap();
                if is_leader && c.net.borrow_mut().rng.chance(700) {
                    let b = batch(1 + (tick % 3) as usize, seed * 1_000_000 + tick * 10 + id);
                    if let Ok(w) = c.node(id).produce(P, &b, false) {
                        produced.push((b, w));
                    }
                }
            }
            c.step(3).await;
            for id in 1..=3u64 {
                let commit = c.commit(id);
                if commit > 0 && tick % 10 == 0 {
                    let term = c.node(id).log().term(P, commit).unwrap();
                    seen_committed.push((commit, term));
                }
            }
            produced.retain_mut(|(b, w)| match w.try_result() {
                Some(Ok(ack)) => {
                    acked.push((b.clone(), ack));
                    false
                }
                Some(Err(_)) => false,
                None => true,
            });
        }

        // Heal and let everything settle.
        {
            let mut net = c.net.borrow_mut();
            net.isolated.clear();
            net.default_link = raft_common::net::LinkConfig::default();
        }
        c.step_until("a leader after healing", 1_000, |c| c.leader().is_some())
            .await;
        let leader = c.leader().unwrap();
        // A last produce makes the current term's entries commit everywhere.
        let last = batch(1, 999_999);
        let mut final_waiter = c.node(leader).produce(P, &last, false).unwrap();
        let mut final_ack = None;
        let mut remaining = produced;
        // A proposal cut from a leader's log may still commit until its
        // index does (another replica may hold it), so one at an index past
        // the final commit waits on; every other one resolves.
        let unresolvable = |remaining: &[(Vec<u8>, shardmq_engine::raft::ProduceWaiter)]| {
            let commit = (1..=3).map(|id| c.commit(id)).max().unwrap();
            remaining.iter().all(|(_, w)| w.ticket().index > commit)
        };
        for _ in 0..2_000 {
            remaining.retain_mut(|(b, w)| match w.try_result() {
                Some(Ok(ack)) => {
                    acked.push((b.clone(), ack));
                    false
                }
                Some(Err(_)) => false,
                None => true,
            });
            if final_ack.is_none() {
                final_ack = final_waiter.try_result();
            }
            if final_ack.is_some() && unresolvable(&remaining) {
                break;
            }
            c.step(3).await;
        }
        let final_ack = final_ack
            .expect("the last produce resolved")
            .expect("the last produce committed");
        acked.push((last, final_ack));
        assert!(
            unresolvable(&remaining),
            "{} produces never resolved",
            remaining.len()
        );
        c.step_until("all replicas commit the same index", 2_000, |c| {
            let c1 = c.commit(1);
            c1 > 0
                && (2..=3).all(|id| c.commit(id) == c1)
                && (1..=3).all(|id| c.node(id).log().last_index(P).unwrap() == c1)
        })
        .await;

        let commit = c.commit(1);
        let reference = log_entries(c.node(1).log(), P, commit).await;
        let reference_offsets = offsets(c.node(1).log(), P, commit).await;
        for id in 2..=3 {
            assert_eq!(
                log_entries(c.node(id).log(), P, commit).await,
                reference,
                "node {id}"
            );
            assert_eq!(
                offsets(c.node(id).log(), P, commit).await,
                reference_offsets,
                "node {id}"
            );
        }
        // Offsets are dense in log order.
        let mut next = 0;
        for (_, base, count) in &reference_offsets {
            assert_eq!(*base, next);
            next += u64::from(*count);
        }
        // Nothing committed was lost or moved.
        for (index, term) in &seen_committed {
            assert_eq!(
                reference[(*index - 1) as usize].1,
                *term,
                "committed index {index} changed term"
            );
        }
        assert!(!acked.is_empty());
        for (b, ack) in &acked {
            let e = &reference[(ack.index - 1) as usize];
            assert_eq!(
                (e.0, e.1),
                (ack.index, ack.term),
                "acked entry {} moved",
                ack.index
            );
            assert_eq!(
                e.3,
                stamped(b, ack.base_offset, ack.term),
                "acked entry {} changed",
                ack.index
            );
        }
        let net = c.net.borrow();
        eprintln!(
            "seed {seed}: commit {commit}, {} acked, {} messages sent, {} dropped, {} fetches",
            acked.len(),
            net.sent,
            net.dropped,
            c.fetches.get()
        );
        c.fetches.get()
    })
}

const SEEDS: [u64; 6] = [1, 2, 3, 42, 1_000_003, 0xdead_beef];

#[test]
fn random_faults_then_heal_converge_without_losing_commits() {
    let fetches: usize = SEEDS.into_iter().map(chaos).sum();
    assert!(fetches > 0, "no lagging follower was fed from the log");
}
