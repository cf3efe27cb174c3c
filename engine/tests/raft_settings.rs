//! `[raft]` settings reach raft-rs: a replica opened with the shard loop
//! configuration the broker derives from its config runs with exactly those
//! settings, and the defaults of the config are the Raft layer's defaults.

mod raft_common;

use raft_common::{log_config, members, run};
use shardmq_engine::broker::raft_service::loop_config;
use shardmq_engine::config::RaftConfig;
use shardmq_engine::raft::{EffectiveSettings, GroupKind, ReplicaConfig, ShardLoop};
use shardmq_storage::ShardLog;

fn settings_of(cfg: &RaftConfig) -> EffectiveSettings {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg.clone();
    run(|| async move {
        let (log, _) = ShardLog::open(log_config(dir.path())).await.unwrap();
        let lp = ShardLoop::new(log, raft_common::NoNetwork, loop_config(&cfg));
        lp.add_replica(5, 1, members(&[1, 2, 3]), GroupKind::Partition)
            .await
            .unwrap();
        lp.with_replica(5, |r| r.settings()).unwrap()
    })
}

#[test]
fn changed_settings_take_effect_and_defaults_are_the_raft_layers() {
    let defaults = RaftConfig::default();
    let replica = ReplicaConfig::default();
    assert_eq!(defaults.heartbeat_ticks, replica.heartbeat_tick);
    assert_eq!(defaults.election_ticks, replica.election_tick);
    assert_eq!(defaults.check_quorum, replica.check_quorum);
    assert_eq!(defaults.pre_vote, replica.pre_vote);
    assert_eq!(defaults.max_inflight_msgs, replica.max_inflight_msgs);
    let got = settings_of(&defaults);
    assert_eq!(
        got,
        EffectiveSettings {
            election_tick: replica.election_tick,
            heartbeat_tick: replica.heartbeat_tick,
            check_quorum: true,
            pre_vote: true,
            max_inflight_msgs: replica.max_inflight_msgs,
            max_size_per_msg: replica.max_size_per_msg,
        }
    );

    let changed = RaftConfig {
        heartbeat_ticks: 3,
        election_ticks: 17,
        check_quorum: false,
        pre_vote: false,
        max_inflight_msgs: 7,
        max_size_per_msg: 65_536,
        ..RaftConfig::default()
    };
    assert_eq!(
        settings_of(&changed),
        EffectiveSettings {
            election_tick: 17,
            heartbeat_tick: 3,
            check_quorum: false,
            pre_vote: false,
            max_inflight_msgs: 7,
            max_size_per_msg: 65_536,
        }
    );
}
