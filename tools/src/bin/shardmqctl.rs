//! `shardmqctl`: administers a shardmq cluster, produces and consumes from
//! the shell, and decodes or verifies a stopped broker's logs offline.
//!
//! Exit codes: 0 on success, 1 on any error (printed as one line on
//! stderr), 2 on a usage error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser, Subcommand};
use shardmq_client::Acks;
use shardmq_tools::commands::{self, ConsumeOptions, ProduceOptions, Start};
use shardmq_tools::{logfile, CtlError, Result};

/// Administer a shardmq cluster, produce and consume records, and inspect
/// a broker's shard logs offline.
#[derive(Debug, Parser)]
#[command(name = "shardmqctl", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The address of any broker of the cluster.
#[derive(Debug, clap::Args)]
struct Bootstrap {
    /// A broker to ask first, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    bootstrap: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce one record per line of standard input.
    Produce {
        #[command(flatten)]
        bootstrap: Bootstrap,
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
        /// After each record is acknowledged print `<partition> <offset>
        /// <line>` on standard output.
        #[arg(long)]
        report_acks: bool,
    },
    /// Print the values of a topic's records, one per line.
    #[command(group(ArgGroup::new("start").args(["from_beginning", "offset", "from_timestamp"])))]
    Consume {
        #[command(flatten)]
        bootstrap: Bootstrap,
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
    },
    /// Describe the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Inspect shard log files offline (the broker must be stopped).
    #[command(subcommand)]
    Log(LogCommand),
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        #[command(flatten)]
        bootstrap: Bootstrap,
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
    List {
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Show a topic's partitions: leader, owning shard and its port.
    Describe {
        #[command(flatten)]
        bootstrap: Bootstrap,
        /// The topic's name.
        name: String,
    },
    /// Delete a topic and its data.
    Delete {
        #[command(flatten)]
        bootstrap: Bootstrap,
        /// The topic's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Show brokers, topics and partitions with leader shard and port.
    Describe {
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
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

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CtlError::Runtime)
}

fn run(command: Command) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = match command {
        Command::Log(LogCommand::Dump { path }) => logfile::dump(&path, &mut out),
        Command::Log(LogCommand::Verify { data_dir }) => logfile::verify(&data_dir, &mut out),
        network => runtime()?.block_on(run_network(network, &mut out)),
    };
    let flushed = out.flush().map_err(|source| CtlError::Stdio {
        what: "write to stdout",
        source,
    });
    result.and(flushed)
}

async fn run_network(command: Command, out: &mut impl Write) -> Result<()> {
    match command {
        Command::Topic(TopicCommand::Create {
            bootstrap,
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
            commands::topic_create(
                &bootstrap.bootstrap,
                &name,
                partitions,
                replication_factor,
                out,
            )
            .await
        }
        Command::Topic(TopicCommand::List { bootstrap }) => {
            commands::topic_list(&bootstrap.bootstrap, out).await
        }
        Command::Topic(TopicCommand::Describe { bootstrap, name }) => {
            commands::topic_describe(&bootstrap.bootstrap, &name, out).await
        }
        Command::Topic(TopicCommand::Delete { bootstrap, name }) => {
            commands::topic_delete(&bootstrap.bootstrap, &name, out).await
        }
        Command::Cluster(ClusterCommand::Describe { bootstrap }) => {
            commands::cluster_describe(&bootstrap.bootstrap, out).await
        }
        Command::Produce {
            bootstrap,
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
            commands::produce(&bootstrap.bootstrap, &options, tokio::io::stdin(), out)
                .await
                .map(drop)
        }
        Command::Consume {
            bootstrap,
            topic,
            partition,
            from_beginning,
            offset,
            from_timestamp,
            count,
            follow,
            print_offsets,
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
            };
            commands::consume(&bootstrap.bootstrap, &options, out)
                .await
                .map(drop)
        }
        Command::Log(_) => unreachable!("offline commands run without a runtime"),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            if !error.use_stderr() {
                // --help, --version.
                let _ = error.print();
                return ExitCode::SUCCESS;
            }
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid usage");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("shardmqctl: {first} (see shardmqctl --help)");
            return ExitCode::from(2);
        }
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is_broken_pipe() => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shardmqctl: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
