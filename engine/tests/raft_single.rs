//! A single-voter partition: election, 1,000 produces committed with dense
//! offsets through the shard loop, and recovery after an unclean stop.

mod raft_common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use raft_common::{
    batch, check_deadline, log_config, log_entries, members, offsets, run, stamped, NoNetwork,
};
use shardmq_engine::raft::{GroupKind, ProduceAck, ShardLoop, ShardLoopConfig};
use shardmq_storage::{EntryKind, ShardLog};

const P: u64 = 7;
const RECORDS: usize = 3;

/// Processes until the replica leads.
async fn become_leader(lp: &ShardLoop<NoNetwork>) {
    lp.campaign(P).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lp.with_replica(P, |r| r.is_leader()).unwrap() {
        lp.process().await.unwrap();
        check_deadline(deadline, "leadership");
    }
}

/// Produces `n` batches while a driver task runs the loop, so proposals
/// land both between iterations and while a Ready is being written.
async fn produce_all(
    lp: &Rc<ShardLoop<NoNetwork>>,
    n: u64,
    tag0: u64,
) -> Vec<(Vec<u8>, ProduceAck)> {
    let stop = Rc::new(Cell::new(false));
    let driver = {
        let lp = lp.clone();
        let stop = stop.clone();
        glommio::spawn_local(async move {
            while !stop.get() {
                lp.process().await.unwrap();
                glommio::yield_if_needed().await;
                glommio::executor().yield_now().await;
            }
        })
    };
    let mut waiters = Vec::new();
    for i in 0..n {
        let b = batch(RECORDS, tag0 + i);
        let w = lp.produce(P, &b, false).unwrap();
        waiters.push((b, w));
        if i % 7 == 0 {
            glommio::executor().yield_now().await;
        }
    }
    let mut out = Vec::new();
    for (b, w) in waiters {
        let ack = w.await.unwrap();
        out.push((b, ack));
    }
    stop.set(true);
    driver.await;
    out
}

#[test]
fn single_voter_commits_dense_offsets_and_recovers_after_unclean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (acks, term_before, last_before) = run(|| async {
        let (log, _) = ShardLog::open(log_config(dir.path())).await.unwrap();
        let lp = Rc::new(ShardLoop::new(
            log.clone(),
            NoNetwork,
            ShardLoopConfig::default(),
        ));
        lp.add_replica(P, 1, members(&[1]), GroupKind::Partition)
            .await
            .unwrap();
        become_leader(&lp).await;
        let acks = produce_all(&lp, 1_000, 0).await;

        // Acks in proposal order, dense indexes and offsets.
        let first_index = acks[0].1.index;
        for (i, (_, ack)) in acks.iter().enumerate() {
            assert_eq!(ack.index, first_index + i as u64);
            assert_eq!(ack.base_offset, (i * RECORDS) as u64);
        }
        let term = lp.with_replica(P, |r| r.term()).unwrap();
        let last = log.last_index(P).unwrap();
        assert_eq!(last, acks.last().unwrap().1.index);
        assert_eq!(log.next_offset(P).unwrap(), 1_000 * RECORDS as u64);
        assert_eq!(lp.with_replica(P, |r| r.commit_index()).unwrap(), last);
        (acks, term, last)
        // Everything is dropped here without `close`.
    });

    run(|| async {
        let (log, _) = ShardLog::open(log_config(dir.path())).await.unwrap();
        assert_eq!(log.last_index(P).unwrap(), last_before);
        let hard = log.hard_state(P).unwrap();
        assert_eq!((hard.term, hard.vote), (term_before, 1));
        assert_eq!(log.next_offset(P).unwrap(), 1_000 * RECORDS as u64);
        let entries = log_entries(&log, P, last_before).await;
        for (b, ack) in &acks {
            let e = &entries[(ack.index - 1) as usize];
            assert_eq!((e.0, e.1, e.2), (ack.index, ack.term, EntryKind::Data));
            assert_eq!(e.3, stamped(b, ack.base_offset, ack.term));
        }
        let by_offset = offsets(&log, P, last_before).await;
        assert_eq!(by_offset.len(), 1_000);
        for (k, (index, base, count)) in by_offset.iter().enumerate() {
            assert_eq!(
                (*index, *base, *count),
                (acks[k].1.index, (k * RECORDS) as u64, RECORDS as u32)
            );
        }

        let lp = Rc::new(ShardLoop::new(
            log.clone(),
            NoNetwork,
            ShardLoopConfig::default(),
        ));
        lp.add_replica(P, 1, members(&[1]), GroupKind::Partition)
            .await
            .unwrap();
        become_leader(&lp).await;
        assert!(lp.with_replica(P, |r| r.term()).unwrap() > term_before);
        let more = produce_all(&lp, 10, 1_000).await;
        for (i, (_, ack)) in more.iter().enumerate() {
            // After the new leader's empty entry.
            assert_eq!(ack.index, last_before + 2 + i as u64);
            assert_eq!(ack.base_offset, ((1_000 + i) * RECORDS) as u64);
        }
        log.close().await.unwrap();
    });
}
