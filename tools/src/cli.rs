//! The command line of `shardmqctl`: its clap definition ([`Cli`]), how
//! the bootstrap list is found ([`resolve_bootstrap`]) and the dispatch to
//! the commands ([`run`]). Kept in the library so the parsing is tested.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser, Subcommand};
use shardmq_client::Acks;

use crate::commands::{self, ConsumeOptions, ProduceOptions, Start};
use crate::error::{CtlError, Result};
use crate::logfile;

/// The environment variable read for the bootstrap list when
/// `--bootstrap` is not given.
pub const BOOTSTRAP_ENV: &str = "SHARDMQ_BOOTSTRAP";

/// The bootstrap list when neither `--bootstrap` nor the environment
/// variable gives one.
pub const BOOTSTRAP_DEFAULT: &str = "127.0.0.1:9092";

/// Most addresses a bootstrap list may hold.
pub const BOOTSTRAP_ADDRS_MAX: usize = 64;

/// Administer a shardmq cluster, produce and consume records, and inspect
/// a broker's shard logs offline.
///
/// Exit codes: 0 on success, 1 on any error (printed as one line on
/// stderr), 2 on a usage error.
#[derive(Debug, Parser)]
#[command(name = "shardmqctl", version)]
pub struct Cli {
    /// Brokers to ask first, a comma-separated list of HOST:PORT, tried in
    /// order; later requests fall back to the other brokers of the cluster.
    /// Accepted before or after the command. Default: the SHARDMQ_BOOTSTRAP
    /// environment variable, else 127.0.0.1:9092.
    #[arg(long, global = true, value_name = "HOST:PORT[,HOST:PORT...]")]
    pub bootstrap: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe, delete and compare topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Act on one partition.
    #[command(subcommand)]
    Partition(PartitionCommand),
    /// Produce one record per line of standard input.
    ///
    /// Without --report-acks the first record that fails stops the command
    /// with its error (exit 1). With it, every record is reported and
    /// producing goes on: `<partition> <offset> <line>` on stdout for each
    /// acknowledged record; on stderr `unknown <partition> <line>: <reason>`
    /// for a record whose outcome is unknown (the broker or the network
    /// lost the answer: it may or may not be stored) and `failed
    /// <partition> <line>: <reason>` for one refused for sure. The exit
    /// code is then 0 only if every record was acknowledged, else 1.
    Produce {
        /// The topic to produce to.
        topic: String,
        /// Send every record to this partition (default: by key hash, or
        /// round-robin without keys).
        #[arg(long, value_name = "P")]
        partition: Option<i32>,
        /// Split each line at the first occurrence of this character into
        /// key and value; a line without it is an error.
        #[arg(long, value_name = "C")]
        key_separator: Option<char>,
        /// Replicas that must have a record before it is acknowledged.
        #[arg(long, value_name = "all|leader|none", default_value = "all", value_parser = commands::parse_acks)]
        acks: Acks,
        /// Report every record: `<partition> <offset> <line>` on stdout once
        /// acknowledged, `unknown ...` or `failed ...` lines on stderr
        /// otherwise, and go on after failures; exit 1 unless all were
        /// acknowledged.
        #[arg(long)]
        report_acks: bool,
    },
    /// Print the values of a topic's records, one per line.
    #[command(group(ArgGroup::new("start").args(["from_beginning", "offset", "from_timestamp"])))]
    Consume {
        /// The topic to read.
        topic: String,
        /// Read only this partition (default: every partition).
        #[arg(long, value_name = "P")]
        partition: Option<i32>,
        /// Start at the first stored record (default: the end of the log).
        #[arg(long)]
        from_beginning: bool,
        /// Start at this offset in every partition read.
        #[arg(long, value_name = "N")]
        offset: Option<i64>,
        /// Start at the first record at or after this time, in ms since
        /// the Unix epoch.
        #[arg(long, value_name = "MS")]
        from_timestamp: Option<i64>,
        /// Stop after this many records.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Keep waiting for new records at the end of the log (default:
        /// stop at the end it had when the command started).
        #[arg(long)]
        follow: bool,
        /// Prefix each value with `<partition> <offset> `.
        #[arg(long)]
        print_offsets: bool,
        /// Read the replicas held by this broker (a follower read, up to
        /// that replica's own high watermark) instead of the leaders.
        #[arg(long, value_name = "NODE")]
        from_node: Option<i32>,
    },
    /// Describe the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Inspect shard log files offline (the broker must be stopped).
    #[command(subcommand)]
    Log(LogCommand),
}

/// `topic ...`.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// The topic's name.
        name: String,
        /// Number of partitions.
        #[arg(long, value_name = "P")]
        partitions: i32,
        /// Number of replicas of each partition.
        #[arg(long, value_name = "R", default_value_t = 1)]
        replication_factor: i16,
    },
    /// List every topic with its partition count and replication factor.
    List,
    /// Show a topic's partitions (leader, owning shard and port, replicas
    /// as NODE:SHARD, preferred leader) and the state of every replica as
    /// its broker reports it (role, term, first/last index, commit index,
    /// high watermark, log start and end offsets). A broker that cannot be
    /// reached is shown as such.
    Describe {
        /// The topic's name.
        name: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic and its data.
    Delete {
        /// The topic's name.
        name: String,
    },
    /// Check that every replica of each partition holds the same log:
    /// reads each replica (follower reads) from the highest log start
    /// offset among them up to the lowest high watermark among them and
    /// compares offsets and batch bytes. Prints per partition `partition
    /// P: N records identical on nodes A,B,C up to offset X` (X exclusive)
    /// or the first difference; exits 1 if any partition differs or a
    /// replica cannot be read.
    CompareReplicas {
        /// The topic's name.
        name: String,
        /// Only this partition (default: every partition).
        #[arg(long, value_name = "P")]
        partition: Option<i32>,
    },
}

/// `partition ...`.
#[derive(Debug, Subcommand)]
pub enum PartitionCommand {
    /// Move a partition's leadership to the replica on another broker and
    /// print the new leader: `partition TOPIC/P leader=N`.
    TransferLeader {
        /// The topic's name.
        topic: String,
        /// The partition.
        partition: i32,
        /// Node id of the broker whose replica should lead.
        #[arg(long = "to", value_name = "NODE")]
        to: i32,
        /// How long the broker waits for the new leader, in ms; 0 answers
        /// once the controller accepted the move.
        #[arg(long, value_name = "N", default_value_t = 10_000)]
        timeout_ms: u64,
    },
}

/// `cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the brokers (id, status, client and inter-broker addresses,
    /// shards, incarnation, controller voter or learner), the controller
    /// leader and term, the metadata version, then the topics and their
    /// partitions.
    Describe {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `log ...`.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Decode a segment file (`<seq>.log`): every record header and, for
    /// data records, the batch header; stops at the first invalid record.
    Dump {
        /// The segment file.
        path: PathBuf,
    },
    /// Check every segment and index file of every `shard-*` directory of
    /// a stopped broker's data directory; fails if anything is corrupt.
    Verify {
        /// The broker's data directory.
        data_dir: PathBuf,
    },
}

/// The bootstrap list: `flag` if given, else `env` (the value of
/// [`BOOTSTRAP_ENV`]) if set and not blank, else [`BOOTSTRAP_DEFAULT`].
/// A comma-separated list of HOST:PORT; blanks around entries are ignored.
/// A usage error if an entry is not HOST:PORT or the list is empty or
/// longer than [`BOOTSTRAP_ADDRS_MAX`].
pub fn resolve_bootstrap(flag: Option<&str>, env: Option<&str>) -> Result<Vec<String>> {
    let (text, source) = match (flag, env) {
        (Some(flag), _) => (flag, "--bootstrap"),
        (None, Some(env)) if !env.trim().is_empty() => (env, BOOTSTRAP_ENV),
        _ => (BOOTSTRAP_DEFAULT, "the default"),
    };
    let addrs: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    if addrs.is_empty() {
        return Err(CtlError::Usage(format!("{source} names no broker")));
    }
    if addrs.len() > BOOTSTRAP_ADDRS_MAX {
        return Err(CtlError::Usage(format!(
            "{source} names {} brokers, more than {BOOTSTRAP_ADDRS_MAX}",
            addrs.len()
        )));
    }
    for addr in &addrs {
        let valid = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !valid {
            return Err(CtlError::Usage(format!(
                "{source}: {addr:?} is not HOST:PORT"
            )));
        }
    }
    Ok(addrs)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CtlError::Runtime)
}

/// Runs a parsed command line, writing results to `out` and per-record
/// reports to `err`; `env_bootstrap` is the value of [`BOOTSTRAP_ENV`].
pub fn run(
    cli: Cli,
    env_bootstrap: Option<&str>,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<()> {
    match cli.command {
        Command::Log(LogCommand::Dump { path }) => logfile::dump(&path, out),
        Command::Log(LogCommand::Verify { data_dir }) => logfile::verify(&data_dir, out),
        network => {
            let bootstrap = resolve_bootstrap(cli.bootstrap.as_deref(), env_bootstrap)?;
            runtime()?.block_on(run_network(network, &bootstrap, out, err))
        }
    }
}

async fn run_network(
    command: Command,
    bootstrap: &[String],
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<()> {
    match command {
        Command::Topic(TopicCommand::Create {
            name,
            partitions,
            replication_factor,
        }) => {
            if partitions < 1 {
                return Err(CtlError::Usage("--partitions must be at least 1".into()));
            }
            if replication_factor < 1 {
                return Err(CtlError::Usage(
                    "--replication-factor must be at least 1".into(),
                ));
            }
            commands::topic_create(bootstrap, &name, partitions, replication_factor, out).await
        }
        Command::Topic(TopicCommand::List) => commands::topic_list(bootstrap, out).await,
        Command::Topic(TopicCommand::Describe { name, json }) => {
            commands::topic_describe(bootstrap, &name, json, out).await
        }
        Command::Topic(TopicCommand::Delete { name }) => {
            commands::topic_delete(bootstrap, &name, out).await
        }
        Command::Topic(TopicCommand::CompareReplicas { name, partition }) => {
            let summary = commands::compare_replicas(bootstrap, &name, partition, out).await?;
            if summary.bad > 0 {
                return Err(CtlError::ReplicasDiffer {
                    partitions: summary.partitions,
                    bad: summary.bad,
                });
            }
            Ok(())
        }
        Command::Partition(PartitionCommand::TransferLeader {
            topic,
            partition,
            to,
            timeout_ms,
        }) => {
            let timeout = Duration::from_millis(timeout_ms);
            commands::transfer_leader(bootstrap, &topic, partition, to, timeout, out).await
        }
        Command::Cluster(ClusterCommand::Describe { json }) => {
            commands::cluster_describe(bootstrap, json, out).await
        }
        Command::Produce {
            topic,
            partition,
            key_separator,
            acks,
            report_acks,
        } => {
            let options = ProduceOptions {
                topic,
                partition,
                key_separator,
                acks,
                report_acks,
            };
            let summary =
                commands::produce(bootstrap, &options, tokio::io::stdin(), out, err).await?;
            if summary.acknowledged < summary.total() {
                return Err(CtlError::NotAcknowledged {
                    total: summary.total(),
                    unknown: summary.unknown,
                    failed: summary.failed,
                });
            }
            Ok(())
        }
        Command::Consume {
            topic,
            partition,
            from_beginning,
            offset,
            from_timestamp,
            count,
            follow,
            print_offsets,
            from_node,
        } => {
            let start = match (from_beginning, offset, from_timestamp) {
                (true, _, _) => Start::Beginning,
                (_, Some(offset), _) => Start::Offset(offset),
                (_, _, Some(ms)) => Start::Timestamp(ms),
                _ => Start::End,
            };
            let options = ConsumeOptions {
                topic,
                partition,
                start,
                count,
                follow,
                print_offsets,
                from_node,
            };
            commands::consume(bootstrap, &options, out).await.map(drop)
        }
        Command::Log(_) => unreachable!("offline commands run without a runtime"),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("shardmqctl").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bootstrap_is_accepted_anywhere_on_the_line() {
        let lines: &[&[&str]] = &[
            &["--bootstrap", "a:1,b:2", "topic", "list"],
            &["topic", "--bootstrap", "a:1,b:2", "list"],
            &["topic", "list", "--bootstrap", "a:1,b:2"],
            &["topic", "describe", "t", "--bootstrap=a:1,b:2", "--json"],
            &["consume", "t", "--bootstrap", "a:1,b:2", "--from-node", "3"],
            &[
                "partition",
                "transfer-leader",
                "t",
                "0",
                "--to",
                "2",
                "--bootstrap",
                "a:1,b:2",
            ],
        ];
        for line in lines {
            let cli = parse(line);
            assert_eq!(cli.bootstrap.as_deref(), Some("a:1,b:2"), "{line:?}");
            assert_eq!(
                resolve_bootstrap(cli.bootstrap.as_deref(), None).unwrap(),
                ["a:1", "b:2"]
            );
        }
        assert!(parse(&["topic", "list"]).bootstrap.is_none());
    }

    #[test]
    fn bootstrap_comes_from_the_flag_then_the_environment_then_the_default() {
        assert_eq!(
            resolve_bootstrap(Some("x:9"), Some("e:1")).unwrap(),
            ["x:9"]
        );
        assert_eq!(
            resolve_bootstrap(None, Some(" e:1 , f:2,")).unwrap(),
            ["e:1", "f:2"]
        );
        assert_eq!(
            resolve_bootstrap(None, Some("  ")).unwrap(),
            [BOOTSTRAP_DEFAULT]
        );
        assert_eq!(resolve_bootstrap(None, None).unwrap(), [BOOTSTRAP_DEFAULT]);
        assert_eq!(
            resolve_bootstrap(Some("[::1]:9092"), None).unwrap(),
            ["[::1]:9092"]
        );
    }

    #[test]
    fn a_bad_bootstrap_list_is_a_usage_error() {
        let many = vec!["h:1"; BOOTSTRAP_ADDRS_MAX + 1].join(",");
        let cases: &[(Option<&str>, Option<&str>, &str)] = &[
            (
                Some("nohost"),
                None,
                "--bootstrap: \"nohost\" is not HOST:PORT",
            ),
            (
                Some("h:port"),
                None,
                "--bootstrap: \"h:port\" is not HOST:PORT",
            ),
            (
                Some(":9092"),
                None,
                "--bootstrap: \":9092\" is not HOST:PORT",
            ),
            (Some("h:0"), None, "--bootstrap: \"h:0\" is not HOST:PORT"),
            (Some(","), None, "--bootstrap names no broker"),
            (
                None,
                Some("h:70000"),
                "SHARDMQ_BOOTSTRAP: \"h:70000\" is not HOST:PORT",
            ),
            (
                Some(&many),
                None,
                "--bootstrap names 65 brokers, more than 64",
            ),
        ];
        for &(flag, env, message) in cases {
            let error = resolve_bootstrap(flag, env).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{flag:?} {env:?}");
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn new_commands_parse() {
        match parse(&["partition", "transfer-leader", "t", "3", "--to", "2"]).command {
            Command::Partition(PartitionCommand::TransferLeader {
                topic,
                partition,
                to,
                timeout_ms,
            }) => assert_eq!(
                (topic.as_str(), partition, to, timeout_ms),
                ("t", 3, 2, 10_000)
            ),
            other => panic!("{other:?}"),
        }
        match parse(&["topic", "compare-replicas", "t", "--partition", "1"]).command {
            Command::Topic(TopicCommand::CompareReplicas { name, partition }) => {
                assert_eq!((name.as_str(), partition), ("t", Some(1)));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["cluster", "describe", "--json"]).command {
            Command::Cluster(ClusterCommand::Describe { json }) => assert!(json),
            other => panic!("{other:?}"),
        }
        match parse(&["consume", "t", "--from-node", "2", "--from-beginning"]).command {
            Command::Consume {
                from_node,
                from_beginning,
                ..
            } => assert_eq!((from_node, from_beginning), (Some(2), true)),
            other => panic!("{other:?}"),
        }
        // A transfer needs its target.
        let missing = Cli::try_parse_from(["shardmqctl", "partition", "transfer-leader", "t", "0"]);
        assert!(missing.is_err());
        // The removed per-command flag form still parses, as the global one.
        assert!(
            parse(&["produce", "t", "--report-acks", "--bootstrap", "h:1"])
                .bootstrap
                .is_some()
        );
    }

    #[test]
    fn every_command_and_flag_has_help() {
        fn check(command: &clap::Command, path: &str) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{path} {id} has no help");
            }
            for sub in command.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                let name = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "{name} has no help");
                check(sub, &name);
            }
        }
        let mut command = Cli::command();
        command.build();
        check(&command, "shardmqctl");
    }
}
