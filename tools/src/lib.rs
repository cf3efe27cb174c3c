//! `shardmq-tools`: the `shardmqctl` admin binary and operator scripts.
//!
//! `shardmqctl` administers topics, produces and consumes from the shell
//! (through `shardmq-client`), and decodes and verifies a stopped broker's
//! shard logs offline (through `shardmq-storage`'s public decoders). The
//! binary is a thin clap front end over this library:
//!
//! * [`commands`]: the network commands (topic, produce, consume, cluster);
//! * [`logfile`]: `log dump` and `log verify`, over plain file reads;
//! * [`error`]: [`CtlError`], one line on stderr and an exit code.
//!
//! The scripts beside this crate (`tools/*.sh`, `tools/kafka-crosscheck/`)
//! are what a developer or operator runs by hand or from CI.

pub mod commands;
pub mod error;
pub mod logfile;

pub use error::{CtlError, Result};
