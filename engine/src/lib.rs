//! `shardmq-engine`: shards, partitions, Raft loops, the controller, metadata,
//! discovery, metrics and the `shardmq-broker` binary.
//!
//! Planned. One glommio executor per core ("shard"); each shard owns its
//! partitions' raft-rs `RawNode`s and drives them through one Raft loop that
//! writes every group's Ready through the shard's `shardmq-storage` log and
//! issues one sync round per iteration. Shards share nothing mutable and talk
//! only by message passing.
pub mod broker;
pub mod clock;
pub mod config;
pub mod controller;
pub mod metrics;
pub mod raft;
