//! `cluster describe` and `topic describe`: what the cluster says, gathered
//! over the network ([`cluster_report`], [`topic_report`]) and rendered as
//! text or JSON by pure functions, so the formats are tested without a
//! cluster.

use std::collections::BTreeMap;
use std::io::Write;

use shardmq_client::{
    Admin, BrokerInfo, BrokerStatus, Client, ClientError, ClusterDescription, ClusterMetadata,
    ErrorCode, PartitionInfo, ReplicaRole, ReplicaState, ReplicasDescription, TopicInfo,
};
use tokio::task::JoinSet;

use crate::error::{CtlError, Result};
use crate::json::Json;

fn emit(out: &mut impl Write, line: &str) -> Result<()> {
    writeln!(out, "{line}").map_err(|source| CtlError::Stdio {
        what: "write to stdout",
        source,
    })
}

/// `active` or `failed`.
pub fn status_name(status: BrokerStatus) -> String {
    match status {
        BrokerStatus::Active => "active".to_owned(),
        BrokerStatus::Failed => "failed".to_owned(),
        other => format!("unknown({})", other.0),
    }
}

/// `leader`, `follower`, `candidate` or `pre-candidate`.
pub fn role_name(role: ReplicaRole) -> String {
    match role {
        ReplicaRole::Leader => "leader".to_owned(),
        ReplicaRole::Follower => "follower".to_owned(),
        ReplicaRole::Candidate => "candidate".to_owned(),
        ReplicaRole::PreCandidate => "pre-candidate".to_owned(),
        other => format!("unknown({})", other.0),
    }
}

/// A node id, or `none` for -1.
fn node_or_none(node_id: i32) -> String {
    if node_id < 0 {
        "none".to_owned()
    } else {
        node_id.to_string()
    }
}

fn node_json(node_id: i32) -> Json {
    if node_id < 0 {
        Json::Null
    } else {
        Json::from(node_id)
    }
}

/// An error as one line: a broker's message may hold newlines.
pub fn one_line(error: &impl std::fmt::Display) -> String {
    error.to_string().replace(['\n', '\r'], " ")
}

/// True if the error says the broker could not be reached at all (as
/// opposed to a broker that answered with an error).
pub fn is_unreachable(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Connect { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::Timeout { .. }
    )
}

// ---------------------------------------------------------------------------
// cluster describe
// ---------------------------------------------------------------------------

/// Everything `cluster describe` shows.
#[derive(Debug, Clone)]
pub struct ClusterReport {
    /// The DescribeCluster answer, or why there is none (a broker that
    /// does not know the api): then brokers come from the metadata alone.
    pub description: std::result::Result<ClusterDescription, String>,
    /// Brokers and every topic.
    pub metadata: ClusterMetadata,
}

/// Asks for the cluster's description and its metadata. A broker that
/// does not support DescribeCluster is described from Metadata alone.
pub async fn cluster_report(admin: &Admin) -> Result<ClusterReport> {
    let description = match admin.describe_cluster().await {
        Ok(description) => Ok(description),
        Err(error @ ClientError::Broker { .. })
            if matches!(
                error.code(),
                Some(ErrorCode::UnknownApi | ErrorCode::UnsupportedVersion)
            ) =>
        {
            Err(one_line(&error))
        }
        Err(error) => return Err(error.into()),
    };
    let metadata = admin.metadata().await?;
    Ok(ClusterReport {
        description,
        metadata,
    })
}

/// The text of `cluster describe`:
///
/// ```text
/// brokers=N
/// broker node=ID status=active|failed address=HOST:PORT inter-broker=HOST:PORT shards=S incarnation=I controller=voter|learner
/// controller leader=ID|none term=T metadata-version=V cluster-id=C answered-by=ID
/// topics=K
/// topic NAME partitions=P
///   partition=... (as topic describe, without replica states)
/// ```
///
/// Values the broker did not report (an older broker) are `?`.
pub fn render_cluster_text(report: &ClusterReport, out: &mut impl Write) -> Result<()> {
    match &report.description {
        Ok(cluster) => {
            emit(out, &format!("brokers={}", cluster.brokers.len()))?;
            for b in &cluster.brokers {
                emit(
                    out,
                    &format!(
                        "broker node={} status={} address={} inter-broker={} shards={} incarnation={} controller={}",
                        b.node_id,
                        status_name(b.status),
                        b.addr(),
                        if b.inter_broker_address.is_empty() { "?" } else { &b.inter_broker_address },
                        b.shard_ports.len(),
                        b.incarnation,
                        if b.controller_voter { "voter" } else { "learner" },
                    ),
                )?;
            }
            emit(
                out,
                &format!(
                    "controller leader={} term={} metadata-version={} cluster-id={} answered-by={}",
                    node_or_none(cluster.controller_id),
                    cluster.controller_term,
                    cluster.metadata_version,
                    if cluster.cluster_id.is_empty() {
                        "?"
                    } else {
                        &cluster.cluster_id
                    },
                    cluster.answered_by,
                ),
            )?;
        }
        Err(_) => {
            let metadata = &report.metadata;
            emit(out, &format!("brokers={}", metadata.brokers.len()))?;
            for b in &metadata.brokers {
                let shards = if b.shard_ports.is_empty() {
                    "?".to_owned()
                } else {
                    b.shard_ports.len().to_string()
                };
                emit(
                    out,
                    &format!(
                        "broker node={} status={} address={} inter-broker=? shards={shards} incarnation=? controller=?",
                        b.node_id,
                        status_name(b.status),
                        b.addr(),
                    ),
                )?;
            }
            emit(
                out,
                &format!(
                    "controller leader={} term=? metadata-version=? cluster-id={} answered-by=?",
                    node_or_none(metadata.controller_id),
                    if metadata.cluster_id.is_empty() {
                        "?"
                    } else {
                        &metadata.cluster_id
                    },
                ),
            )?;
        }
    }
    let mut topics: Vec<&TopicInfo> = report.metadata.topics.iter().collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    emit(out, &format!("topics={}", topics.len()))?;
    for topic in topics {
        let mut line = format!("topic {} partitions={}", topic.name, topic.partitions.len());
        if topic.error != ErrorCode::None {
            line.push_str(&format!(" error={:?}", topic.error));
        }
        emit(out, &line)?;
        for p in &topic.partitions {
            emit(out, &partition_line(p, &report.metadata.brokers))?;
        }
    }
    Ok(())
}

/// The JSON of `cluster describe`: one object with `cluster_id`,
/// `controller_id`, `controller_term`, `metadata_version`, `answered_by`
/// (null when unknown), `brokers` and `topics` (as `topic describe
/// --json`, without replica states).
pub fn render_cluster_json(report: &ClusterReport) -> Json {
    let metadata = &report.metadata;
    let (head, brokers): (Vec<(&'static str, Json)>, Vec<Json>) = match &report.description {
        Ok(cluster) => (
            vec![
                ("cluster_id", Json::str(&cluster.cluster_id)),
                ("controller_id", node_json(cluster.controller_id)),
                ("controller_term", Json::from(cluster.controller_term)),
                ("metadata_version", Json::from(cluster.metadata_version)),
                ("answered_by", Json::from(cluster.answered_by)),
            ],
            cluster
                .brokers
                .iter()
                .map(|b| {
                    Json::Object(vec![
                        ("node_id", Json::from(b.node_id)),
                        ("status", Json::from(status_name(b.status))),
                        ("address", Json::from(b.addr())),
                        ("inter_broker_address", Json::str(&b.inter_broker_address)),
                        ("shards", Json::from(b.shard_ports.len() as u64)),
                        (
                            "shard_ports",
                            Json::Array(b.shard_ports.iter().map(|&p| Json::from(p)).collect()),
                        ),
                        ("incarnation", Json::from(b.incarnation)),
                        (
                            "controller",
                            Json::from(if b.controller_voter {
                                "voter"
                            } else {
                                "learner"
                            }),
                        ),
                    ])
                })
                .collect(),
        ),
        Err(_) => (
            vec![
                (
                    "cluster_id",
                    Json::opt(
                        (!metadata.cluster_id.is_empty()).then(|| metadata.cluster_id.clone()),
                    ),
                ),
                ("controller_id", node_json(metadata.controller_id)),
                ("controller_term", Json::Null),
                ("metadata_version", Json::Null),
                ("answered_by", Json::Null),
            ],
            metadata
                .brokers
                .iter()
                .map(|b| {
                    Json::Object(vec![
                        ("node_id", Json::from(b.node_id)),
                        ("status", Json::from(status_name(b.status))),
                        ("address", Json::from(b.addr())),
                        ("inter_broker_address", Json::Null),
                        (
                            "shards",
                            Json::opt(
                                (!b.shard_ports.is_empty()).then_some(b.shard_ports.len() as u64),
                            ),
                        ),
                        (
                            "shard_ports",
                            Json::Array(b.shard_ports.iter().map(|&p| Json::from(p)).collect()),
                        ),
                        ("incarnation", Json::Null),
                        ("controller", Json::Null),
                    ])
                })
                .collect(),
        ),
    };
    let mut topics: Vec<&TopicInfo> = metadata.topics.iter().collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    let topics = topics
        .into_iter()
        .map(|t| {
            Json::Object(vec![
                ("name", Json::str(&t.name)),
                ("error", error_json(t.error)),
                (
                    "partitions",
                    Json::Array(
                        t.partitions
                            .iter()
                            .map(|p| partition_json(p, &metadata.brokers, None))
                            .collect(),
                    ),
                ),
            ])
        })
        .collect();
    let mut fields = head;
    fields.push(("brokers", Json::Array(brokers)));
    fields.push(("topics", Json::Array(topics)));
    Json::Object(fields)
}

// ---------------------------------------------------------------------------
// topic describe
// ---------------------------------------------------------------------------

/// Everything `topic describe` shows.
#[derive(Debug, Clone)]
pub struct TopicReport {
    /// The topic's partitions, leaders and replicas.
    pub topic: TopicInfo,
    /// The brokers, for hosts.
    pub brokers: Vec<BrokerInfo>,
    /// What each broker holding a replica said about its replicas of the
    /// topic, or why it could not say.
    pub replicas: BTreeMap<i32, std::result::Result<ReplicasDescription, ClientError>>,
}

/// Asks for the topic's metadata, then every broker holding one of its
/// replicas for their state (DescribeReplicas), concurrently. A broker that
/// cannot be reached or refuses is recorded as such, not an error.
pub async fn topic_report(client: &Client, name: &str) -> Result<TopicReport> {
    let topic = client.refresh_topic(name).await?;
    let brokers = client.cached_metadata().brokers;
    let mut nodes: Vec<i32> = topic
        .partitions
        .iter()
        .flat_map(|p| p.replicas.iter().map(|r| r.node_id))
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    let replicas = describe_nodes(client, &nodes, name).await;
    Ok(TopicReport {
        topic,
        brokers,
        replicas,
    })
}

/// How long `topic describe` waits for each broker's answer.
pub const DESCRIBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// DescribeReplicas of `topic` on each of `nodes`, concurrently.
pub async fn describe_nodes(
    client: &Client,
    nodes: &[i32],
    topic: &str,
) -> BTreeMap<i32, std::result::Result<ReplicasDescription, ClientError>> {
    let mut asks = JoinSet::new();
    for &node_id in nodes {
        let client = client.clone();
        let topic = topic.to_owned();
        asks.spawn(async move {
            // A broker that does not answer (frozen, partitioned) must not
            // hold up the report of the others.
            let result = match tokio::time::timeout(
                DESCRIBE_TIMEOUT,
                client.describe_replicas(node_id, Some(&[&topic])),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(ClientError::Timeout {
                    after: DESCRIBE_TIMEOUT,
                    request_sent: true,
                }),
            };
            (node_id, result)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(joined) = asks.join_next().await {
        // A task only fails by panicking, which is a bug: pass it on.
        let (node_id, result) =
            joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        out.insert(node_id, result);
    }
    out
}

fn error_json(code: ErrorCode) -> Json {
    if code == ErrorCode::None {
        Json::Null
    } else {
        Json::from(format!("{code:?}"))
    }
}

/// `  partition=P leader=L shard=S port=PORT host=H epoch=E replicas=N:S,...
/// preferred-leader=N` (and ` error=CODE` when the partition has one).
pub fn partition_line(p: &PartitionInfo, brokers: &[BrokerInfo]) -> String {
    let host = brokers
        .iter()
        .find(|b| b.node_id == p.leader_node_id)
        .map_or("?", |b| b.host.as_str());
    let replicas: Vec<String> = p
        .replicas
        .iter()
        .map(|r| format!("{}:{}", r.node_id, r.shard))
        .collect();
    let mut line = format!(
        "  partition={} leader={} shard={} port={} host={host} epoch={} replicas={} preferred-leader={}",
        p.partition,
        node_or_none(p.leader_node_id),
        p.leader_shard,
        p.shard_port,
        p.leader_epoch,
        replicas.join(","),
        p.preferred_leader().map_or_else(|| "none".to_owned(), |n| n.to_string()),
    );
    if p.error != ErrorCode::None {
        line.push_str(&format!(" error={:?}", p.error));
    }
    line
}

/// Why a replica's state is not shown.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NoState {
    /// Its broker could not be reached.
    Unreachable(String),
    /// Its broker answered with an error.
    Error(String),
    /// Its broker answered without it.
    Missing(String),
}

impl NoState {
    /// The JSON key and the text prefix.
    fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Error(_) => "error",
            Self::Missing(_) => "missing",
        }
    }

    fn reason(&self) -> &str {
        match self {
            Self::Unreachable(r) | Self::Error(r) | Self::Missing(r) => r,
        }
    }
}

/// What a replica's broker said about it, or why it said nothing.
fn replica_state(
    report: &TopicReport,
    node_id: i32,
    partition: i32,
) -> std::result::Result<&ReplicaState, NoState> {
    match report.replicas.get(&node_id) {
        None => Err(NoState::Error("not asked".to_owned())),
        Some(Err(error)) if is_unreachable(error) => Err(NoState::Unreachable(one_line(error))),
        Some(Err(error)) => Err(NoState::Error(one_line(error))),
        Some(Ok(described)) => described
            .replica(&report.topic.name, partition)
            .ok_or_else(|| {
                NoState::Missing(format!(
                    "node {node_id} reports no replica of {}/{partition}",
                    report.topic.name
                ))
            }),
    }
}

/// The text of `topic describe`:
///
/// ```text
/// topic NAME partitions=P replication-factor=R
///   partition=P leader=L shard=S port=PORT host=H epoch=E replicas=N:S,... preferred-leader=N
///     replica node=N shard=S role=R term=T leader=L first-index=F last-index=I commit-index=C high-watermark=W log-start-offset=O log-end-offset=E
///     replica node=N shard=S unreachable: REASON
/// ```
pub fn render_topic_text(report: &TopicReport, out: &mut impl Write) -> Result<()> {
    let topic = &report.topic;
    let replication = topic
        .partitions
        .iter()
        .map(|p| p.replicas.len())
        .max()
        .unwrap_or(0);
    emit(
        out,
        &format!(
            "topic {} partitions={} replication-factor={replication}",
            topic.name,
            topic.partitions.len()
        ),
    )?;
    for p in &topic.partitions {
        emit(out, &partition_line(p, &report.brokers))?;
        for r in &p.replicas {
            let head = format!("    replica node={} shard={}", r.node_id, r.shard);
            let line = match replica_state(report, r.node_id, p.partition) {
                Ok(s) => format!(
                    "{head} role={} term={} leader={} first-index={} last-index={} commit-index={} high-watermark={} log-start-offset={} log-end-offset={}",
                    role_name(s.role),
                    s.term,
                    node_or_none(s.leader_node_id),
                    s.first_index,
                    s.last_index,
                    s.commit_index,
                    s.high_watermark,
                    s.log_start_offset,
                    s.log_end_offset,
                ),
                Err(why) => format!("{head} {}: {}", why.kind(), why.reason()),
            };
            emit(out, &line)?;
        }
    }
    Ok(())
}

/// One partition as JSON; with a report, each replica carries its
/// `state` or its `unreachable`, `error` or `missing` reason.
fn partition_json(p: &PartitionInfo, brokers: &[BrokerInfo], report: Option<&TopicReport>) -> Json {
    let host = brokers
        .iter()
        .find(|b| b.node_id == p.leader_node_id)
        .map(|b| b.host.clone());
    let replicas = p
        .replicas
        .iter()
        .map(|r| {
            let mut fields = vec![
                ("node_id", Json::from(r.node_id)),
                ("shard", Json::from(r.shard)),
                ("shard_port", Json::from(r.shard_port)),
            ];
            if let Some(report) = report {
                match replica_state(report, r.node_id, p.partition) {
                    Ok(s) => fields.push((
                        "state",
                        Json::Object(vec![
                            ("role", Json::from(role_name(s.role))),
                            ("term", Json::from(s.term)),
                            ("leader", node_json(s.leader_node_id)),
                            ("first_index", Json::from(s.first_index)),
                            ("last_index", Json::from(s.last_index)),
                            ("commit_index", Json::from(s.commit_index)),
                            ("high_watermark", Json::from(s.high_watermark)),
                            ("log_start_offset", Json::from(s.log_start_offset)),
                            ("log_end_offset", Json::from(s.log_end_offset)),
                        ]),
                    )),
                    Err(why) => fields.push((why.kind(), Json::str(why.reason()))),
                }
            }
            Json::Object(fields)
        })
        .collect();
    Json::Object(vec![
        ("partition", Json::from(p.partition)),
        ("error", error_json(p.error)),
        ("leader", node_json(p.leader_node_id)),
        ("leader_shard", Json::from(p.leader_shard)),
        ("leader_port", Json::from(p.shard_port)),
        ("leader_host", Json::opt(host)),
        ("leader_epoch", Json::from(p.leader_epoch)),
        ("preferred_leader", Json::opt(p.preferred_leader())),
        ("replicas", Json::Array(replicas)),
    ])
}

/// The JSON of `topic describe`: `{"topic": NAME, "partitions": [...]}`,
/// each partition with its leader, preferred leader and replicas, each
/// replica with its `state` object (role, term, leader, first_index,
/// last_index, commit_index, high_watermark, log_start_offset,
/// log_end_offset) or an `unreachable`, `error` or `missing` string.
pub fn render_topic_json(report: &TopicReport) -> Json {
    Json::Object(vec![
        ("topic", Json::str(&report.topic.name)),
        (
            "partitions",
            Json::Array(
                report
                    .topic
                    .partitions
                    .iter()
                    .map(|p| partition_json(p, &report.brokers, Some(report)))
                    .collect(),
            ),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shardmq_client::{BrokerDescription, ReplicaInfo};

    use super::*;

    fn broker(node_id: i32, port: u16) -> BrokerInfo {
        let mut b = BrokerInfo::new(node_id, "10.0.0.1", port);
        b.shard_ports = vec![port, port + 1];
        b
    }

    fn topic() -> TopicInfo {
        let replicas = |nodes: &[(i32, u16)]| {
            nodes
                .iter()
                .map(|&(node_id, shard)| ReplicaInfo {
                    node_id,
                    shard,
                    shard_port: 9000 + node_id as u16 * 100 + shard,
                })
                .collect()
        };
        TopicInfo {
            name: "events".into(),
            error: ErrorCode::None,
            partitions: vec![
                PartitionInfo {
                    partition: 0,
                    error: ErrorCode::None,
                    leader_node_id: 2,
                    leader_shard: 1,
                    shard_port: 9201,
                    replicas: replicas(&[(1, 0), (2, 1)]),
                    leader_epoch: 4,
                },
                PartitionInfo {
                    partition: 1,
                    error: ErrorCode::LeaderNotAvailable,
                    leader_node_id: -1,
                    leader_shard: 0,
                    shard_port: 0,
                    replicas: replicas(&[(2, 0), (3, 1)]),
                    leader_epoch: 5,
                },
            ],
        }
    }

    fn state(partition: i32, role: ReplicaRole) -> ReplicaState {
        ReplicaState {
            topic: "events".into(),
            partition,
            shard: 0,
            role,
            term: 4,
            leader_node_id: 2,
            first_index: 1,
            last_index: 57,
            commit_index: 56,
            high_watermark: 50,
            log_start_offset: 0,
            log_end_offset: 51,
        }
    }

    fn report() -> TopicReport {
        let mut replicas = BTreeMap::new();
        replicas.insert(
            1,
            Ok(ReplicasDescription {
                node_id: 1,
                replicas: vec![state(0, ReplicaRole::Follower)],
            }),
        );
        replicas.insert(
            2,
            Ok(ReplicasDescription {
                node_id: 2,
                replicas: vec![state(0, ReplicaRole::Leader)],
            }),
        );
        replicas.insert(
            3,
            Err(ClientError::Connect {
                addr: "10.0.0.3:9300".into(),
                source: Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            }),
        );
        TopicReport {
            topic: topic(),
            brokers: vec![broker(1, 9100), broker(2, 9200), broker(3, 9300)],
            replicas,
        }
    }

    fn text(render: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> String {
        let mut out = Vec::new();
        render(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn topic_text_shows_partitions_and_every_replica() {
        let shown = text(|out| render_topic_text(&report(), out));
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(
            lines,
            [
                "topic events partitions=2 replication-factor=2",
                "  partition=0 leader=2 shard=1 port=9201 host=10.0.0.1 epoch=4 replicas=1:0,2:1 preferred-leader=1",
                "    replica node=1 shard=0 role=follower term=4 leader=2 first-index=1 last-index=57 commit-index=56 high-watermark=50 log-start-offset=0 log-end-offset=51",
                "    replica node=2 shard=1 role=leader term=4 leader=2 first-index=1 last-index=57 commit-index=56 high-watermark=50 log-start-offset=0 log-end-offset=51",
                "  partition=1 leader=none shard=0 port=0 host=? epoch=5 replicas=2:0,3:1 preferred-leader=2 error=LeaderNotAvailable",
                "    replica node=2 shard=0 missing: node 2 reports no replica of events/1",
                "    replica node=3 shard=1 unreachable: cannot connect to 10.0.0.3:9300: connection refused",
            ]
        );
    }

    #[test]
    fn topic_json_has_states_and_reasons() {
        let json = render_topic_json(&report()).to_string();
        assert!(json.starts_with(r#"{"topic":"events","partitions":[{"partition":0,"error":null,"leader":2,"leader_shard":1,"leader_port":9201,"leader_host":"10.0.0.1","leader_epoch":4,"preferred_leader":1,"replicas":[{"node_id":1,"shard":0,"shard_port":9100,"state":{"role":"follower","term":4,"leader":2,"first_index":1,"last_index":57,"commit_index":56,"high_watermark":50,"log_start_offset":0,"log_end_offset":51}}"#), "{json}");
        assert!(
            json.contains(r#""error":"LeaderNotAvailable","leader":null"#),
            "{json}"
        );
        assert!(
            json.contains(r#""missing":"node 2 reports no replica of events/1""#),
            "{json}"
        );
        assert!(
            json.contains(r#""unreachable":"cannot connect to 10.0.0.3:9300: connection refused""#),
            "{json}"
        );
    }

    fn cluster() -> ClusterReport {
        ClusterReport {
            description: Ok(ClusterDescription {
                cluster_id: "c1".into(),
                controller_id: 1,
                controller_term: 3,
                metadata_version: 42,
                brokers: vec![
                    BrokerDescription {
                        node_id: 1,
                        host: "10.0.0.1".into(),
                        port: 9100,
                        shard_ports: vec![9100, 9101],
                        inter_broker_address: "10.0.0.1:19100".into(),
                        status: BrokerStatus::Active,
                        incarnation: 77,
                        controller_voter: true,
                    },
                    BrokerDescription {
                        node_id: 4,
                        host: "10.0.0.4".into(),
                        port: 9400,
                        shard_ports: vec![9400],
                        inter_broker_address: "10.0.0.4:19400".into(),
                        status: BrokerStatus::Failed,
                        incarnation: 78,
                        controller_voter: false,
                    },
                ],
                answered_by: 4,
            }),
            metadata: ClusterMetadata {
                brokers: vec![broker(1, 9100), broker(2, 9200)],
                topics: vec![topic()],
                controller_id: 1,
                cluster_id: "c1".into(),
            },
        }
    }

    #[test]
    fn cluster_text_shows_brokers_the_controller_and_topics() {
        let shown = text(|out| render_cluster_text(&cluster(), out));
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(
            lines[..5],
            [
                "brokers=2",
                "broker node=1 status=active address=10.0.0.1:9100 inter-broker=10.0.0.1:19100 shards=2 incarnation=77 controller=voter",
                "broker node=4 status=failed address=10.0.0.4:9400 inter-broker=10.0.0.4:19400 shards=1 incarnation=78 controller=learner",
                "controller leader=1 term=3 metadata-version=42 cluster-id=c1 answered-by=4",
                "topics=1",
            ]
        );
        assert_eq!(lines[5], "topic events partitions=2");
        assert!(
            lines[6].starts_with("  partition=0 leader=2 "),
            "{}",
            lines[6]
        );
    }

    #[test]
    fn cluster_text_of_an_older_broker_marks_what_is_unknown() {
        let mut report = cluster();
        report.description = Err("broker error UnknownApi".into());
        report.metadata.brokers[1].shard_ports.clear();
        report.metadata.controller_id = -1;
        let shown = text(|out| render_cluster_text(&report, out));
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(
            lines[..4],
            [
                "brokers=2",
                "broker node=1 status=active address=10.0.0.1:9100 inter-broker=? shards=2 incarnation=? controller=?",
                "broker node=2 status=active address=10.0.0.1:9200 inter-broker=? shards=? incarnation=? controller=?",
                "controller leader=none term=? metadata-version=? cluster-id=c1 answered-by=?",
            ]
        );
        let json = render_cluster_json(&report).to_string();
        assert!(
            json.starts_with(r#"{"cluster_id":"c1","controller_id":null,"controller_term":null"#),
            "{json}"
        );
    }

    #[test]
    fn cluster_json_has_every_field() {
        let json = render_cluster_json(&cluster()).to_string();
        assert!(json.starts_with(r#"{"cluster_id":"c1","controller_id":1,"controller_term":3,"metadata_version":42,"answered_by":4,"brokers":[{"node_id":1,"status":"active","address":"10.0.0.1:9100","inter_broker_address":"10.0.0.1:19100","shards":2,"shard_ports":[9100,9101],"incarnation":77,"controller":"voter"}"#), "{json}");
        assert!(json.contains(r#""controller":"learner""#), "{json}");
        assert!(
            json.contains(
                r#""topics":[{"name":"events","error":null,"partitions":[{"partition":0,"#
            ),
            "{json}"
        );
    }
}
