//! Idle groups fall asleep: once a leader has had nothing to replicate for
//! `quiesce_after_ticks`, it and its followers stop ticking and sending
//! anything; a produce wakes the group and commits as usual; a follower
//! whose leader's broker is lost wakes and elects another leader.

mod raft_common;

use raft_common::{batch, run, Cluster};
use shardmq_engine::raft::ShardLoopConfig;

const P: u64 = 9;
const SEED: u64 = 0x51ee_9001;

#[test]
fn an_idle_group_sleeps_wakes_on_a_produce_and_on_its_leaders_loss() {
    run(|| async {
        let cfg = ShardLoopConfig {
            quiesce_after_ticks: 5,
            ..ShardLoopConfig::default()
        };
        let c = Cluster::start_with(3, P, SEED, cfg).await;
        c.step_until("a leader", 500, |c| c.leader().is_some())
            .await;
        let leader = c.leader().unwrap();
        c.step_until("everyone asleep", 200, |c| {
            (1..=3).all(|id| c.node(id).quiesced_count() == 1)
        })
        .await;
        // Asleep: ticks send nothing.
        let sent = c.net.borrow().sent;
        for _ in 0..50 {
            c.step(3).await;
        }
        assert_eq!(c.net.borrow().sent, sent, "a sleeping group sends nothing");

        // A produce wakes it and commits.
        let mut w = c.node(leader).produce(P, &batch(2, 1), false).unwrap();
        let mut ack = None;
        for _ in 0..200 {
            c.step(3).await;
            if let Some(r) = w.try_result() {
                ack = Some(r.unwrap());
                break;
            }
        }
        let ack = ack.expect("the produce committed");
        assert_eq!(ack.base_offset, 0);
        c.step_until("asleep again", 200, |c| {
            (1..=3).all(|id| c.node(id).quiesced_count() == 1)
        })
        .await;

        // The leader's broker is lost: the followers are told, wake, and
        // one of them leads.
        c.net.borrow_mut().isolated.insert(leader);
        for id in (1..=3).filter(|id| *id != leader) {
            c.node(id).wake_followers_of(leader as i32);
        }
        c.step_until("a new leader", 1_000, |c| {
            (1..=3u64)
                .filter(|id| *id != leader)
                .any(|id| c.node(id).with_replica(P, |r| r.is_leader()).unwrap())
        })
        .await;
    });
}
