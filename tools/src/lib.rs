//! `shardmq-tools`: the `shardmqctl` admin binary and operator scripts.
//!
//! Planned: topic and cluster administration, produce and consume from the
//! shell, offline log dump and verify. The scripts beside this crate
//! (`tools/*.sh`, `tools/kafka-crosscheck/`) are what a developer or operator
//! runs by hand or from CI.
