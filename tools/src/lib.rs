//! `shardmq-tools`: the `shardmqctl` admin binary and operator scripts.
//!
//! `shardmqctl` administers topics, produces and consumes from the shell
//! (through `shardmq-client`), and decodes and verifies a stopped broker's
//! shard logs offline (through `shardmq-storage`'s public decoders). The
//! binary is a thin clap front end over this library:
//!
//! * [`cli`]: the command line (clap), the bootstrap list (`--bootstrap`
//!   anywhere on the line, else `SHARDMQ_BOOTSTRAP`), the dispatch;
//! * [`commands`]: the network commands (topic, partition, produce,
//!   consume, cluster);
//! * [`describe`]: `cluster describe` and `topic describe`, gathered over
//!   the network and rendered (text or JSON) by pure functions;
//! * [`compare`]: `topic compare-replicas`, replica logs compared batch by
//!   batch;
//! * [`json`]: the small JSON writer of `--json` output;
//! * [`logfile`]: `log dump` and `log verify`, over plain file reads;
//! * [`error`]: [`CtlError`], one line on stderr and an exit code.
//!
//! The scripts beside this crate (`tools/*.sh`, `tools/kafka-crosscheck/`)
//! are what a developer or operator runs by hand or from CI.

pub mod cli;
pub mod commands;
pub mod compare;
pub mod describe;
pub mod error;
pub mod json;
pub mod logfile;

pub use error::{CtlError, Result};
