//! The broker's request handler: reads a verified request, runs it (here,
//! on the owning shard through the [`ShardRouter`](super::router::ShardRouter),
//! or on shard 0 for metadata changes) and builds the response.
//!
//! Hot path (Produce, Fetch): a produced batch goes to the service as a
//! slice of the request frame; fetched batches are copied once, into the
//! response frame.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use shardmq_net::{error_response, Frame, Handler, RequestFrame, RequestKey, Shutdown};
use shardmq_schema::protocol::{self as p, Acks, Api, ErrorCode, OffsetSpec};

use super::raft_service::ReplicaStatus;
use super::router::{AdminOp, NewTopicSpec, OpReply, PartitionOp};
use super::service::{FetchArgs, FetchResult, ServiceError};
use super::shard::ShardCtx;
use super::view::ClusterView;
use crate::controller::{BrokerStatus, NodeId};
use crate::metrics::APIS;
use crate::raft::{GroupId, StateRole};

/// The version of every api this broker speaks.
pub const API_VERSION: u16 = 0;

/// Answers client requests on one shard. Shard view: `!Send`.
pub struct BrokerHandler {
    ctx: Rc<ShardCtx>,
}

impl Clone for BrokerHandler {
    fn clone(&self) -> Self {
        Self {
            ctx: self.ctx.clone(),
        }
    }
}

impl std::fmt::Debug for BrokerHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerHandler")
            .field("shard", &self.ctx.shard)
            .finish()
    }
}

impl Handler for BrokerHandler {
    async fn handle(&self, request: RequestFrame) -> Option<Frame> {
        let key = request.key();
        let request_bytes = request.frame().len();
        let response = match self.dispatch(&request).await {
            Ok(response) => response,
            Err(error) => error_response(key, error.code, &error.message).ok(),
        };
        self.ctx.metrics.request(
            key.api,
            request_bytes,
            response.as_ref().map_or(0, Frame::len),
        );
        response
    }
}

fn invalid(message: impl Into<String>) -> ServiceError {
    ServiceError::new(ErrorCode::InvalidRequest, message)
}

/// Finishes a response frame with `body`.
fn finish(
    mut b: FlatBufferBuilder<'static>,
    key: RequestKey,
    body_type: p::ResponseBody,
    body: WIPOffset<UnionWIPOffset>,
) -> Result<Option<Frame>, ServiceError> {
    let header = p::ResponseHeader::create(
        &mut b,
        &p::ResponseHeaderArgs {
            correlation_id: key.correlation_id,
            api: key.api,
            version: key.version,
            throttle_time_ms: 0,
        },
    );
    let root = p::Response::create(
        &mut b,
        &p::ResponseArgs {
            header: Some(header),
            body_type,
            body: Some(body),
            error_code: ErrorCode::None,
            error_message: None,
        },
    );
    p::finish_response_frame(&mut b, root);
    Frame::from_builder(b).map(Some).map_err(|error| {
        ServiceError::new(ErrorCode::Unknown, format!("response too large: {error}"))
    })
}

/// An item's error code and message for a response.
fn outcome<T>(
    b: &mut FlatBufferBuilder<'static>,
    result: &Result<T, ServiceError>,
) -> (ErrorCode, Option<WIPOffset<&'static str>>) {
    match result {
        Ok(_) => (ErrorCode::None, None),
        Err(error) => (error.code, Some(b.create_string(&error.message))),
    }
}

struct FetchItem {
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: u32,
}

impl BrokerHandler {
    /// The handler of the shard `ctx`.
    pub fn new(ctx: Rc<ShardCtx>) -> Self {
        Self { ctx }
    }

    fn view(&self) -> Arc<ClusterView> {
        self.ctx.view()
    }

    async fn dispatch(&self, request: &RequestFrame) -> Result<Option<Frame>, ServiceError> {
        let key = request.key();
        let Some(expected) = key.api.request_body_type() else {
            return Err(ServiceError::new(
                ErrorCode::UnknownApi,
                format!("unknown api {}", key.api.0),
            ));
        };
        if request.request().body_type() != expected {
            return Err(invalid(format!(
                "the body does not match api {:?}",
                key.api
            )));
        }
        if key.version != API_VERSION && key.api != Api::ApiVersions {
            return Err(ServiceError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "{:?} version {} is not supported (only {API_VERSION})",
                    key.api, key.version
                ),
            ));
        }
        match key.api {
            Api::ApiVersions => self.api_versions(key),
            Api::Metadata => self.metadata(request),
            Api::CreateTopics => self.create_topics(request).await,
            Api::DeleteTopics => self.delete_topics(request).await,
            Api::ListTopics => self.list_topics(key),
            Api::Produce => self.produce(request).await,
            Api::Fetch => self.fetch(request).await,
            Api::ListOffsets => self.list_offsets(request).await,
            Api::DescribeCluster => self.describe_cluster(key),
            Api::DescribeReplicas => self.describe_replicas(request).await,
            Api::TransferLeader => self.transfer_leader(request).await,
            _ => Err(ServiceError::new(ErrorCode::UnknownApi, "unknown api")),
        }
    }

    fn api_versions(&self, key: RequestKey) -> Result<Option<Frame>, ServiceError> {
        let mut b = FlatBufferBuilder::new();
        let ranges: Vec<p::ApiVersionRange> = APIS
            .iter()
            .map(|api| p::ApiVersionRange::new(*api, API_VERSION, API_VERSION))
            .collect();
        let apis = b.create_vector(&ranges);
        let body = p::ApiVersionsResponse::create(
            &mut b,
            &p::ApiVersionsResponseArgs {
                apis: Some(apis),
                ..Default::default()
            },
        );
        finish(
            b,
            key,
            p::ResponseBody::ApiVersionsResponse,
            body.as_union_value(),
        )
    }

    fn metadata(&self, request: &RequestFrame) -> Result<Option<Frame>, ServiceError> {
        let key = request.key();
        let req = request
            .request()
            .body_as_metadata_request()
            .ok_or_else(|| invalid("no body"))?;
        let view = self.view();
        let meta = &view.metadata;
        let names: Vec<String> = match req.topics() {
            None => meta.topics.keys().cloned().collect(),
            Some(asked) => asked.iter().map(str::to_owned).collect(),
        };
        let mut b = FlatBufferBuilder::new();
        let mut brokers = Vec::with_capacity(meta.brokers.len());
        for broker in meta.brokers.values() {
            let host = b.create_string(&broker.client_host);
            let ports = b.create_vector(&broker.shard_ports);
            brokers.push(p::BrokerMetadata::create(
                &mut b,
                &p::BrokerMetadataArgs {
                    node_id: broker.node_id,
                    host: Some(host),
                    port: broker.client_port,
                    status: broker_status(broker.status),
                    shard_ports: Some(ports),
                },
            ));
        }
        let brokers = b.create_vector(&brokers);
        let mut out = Vec::with_capacity(names.len());
        for name in &names {
            let name_offset = b.create_string(name);
            let Some(topic) = meta.topic(name) else {
                let message = b.create_string(&format!("no topic named {name:?}"));
                out.push(p::TopicMetadata::create(
                    &mut b,
                    &p::TopicMetadataArgs {
                        error_code: ErrorCode::UnknownTopic,
                        error_message: Some(message),
                        name: Some(name_offset),
                        partitions: None,
                    },
                ));
                continue;
            };
            let mut partitions = Vec::with_capacity(topic.partitions.len());
            for (index, a) in topic.partitions.iter().enumerate() {
                // The preferred leader first, as the protocol says.
                let mut ordered: Vec<_> = a.replicas.iter().collect();
                ordered.sort_by_key(|r| r.node_id != a.preferred_leader);
                let ids: Vec<i32> = ordered.iter().map(|r| r.node_id).collect();
                let replica_ids = b.create_vector(&ids);
                let mut replicas = Vec::with_capacity(ordered.len());
                for r in ordered {
                    let shard_port = view
                        .broker(r.node_id)
                        .and_then(|broker| broker.shard_port(r.shard))
                        .unwrap_or(0);
                    replicas.push(p::ReplicaMetadata::create(
                        &mut b,
                        &p::ReplicaMetadataArgs {
                            node_id: r.node_id,
                            shard: r.shard,
                            shard_port,
                        },
                    ));
                }
                let replicas = b.create_vector(&replicas);
                // What this shard's replica knows of a newer leadership
                // (an election the controller has not recorded yet) wins.
                let known = self
                    .ctx
                    .service
                    .known_leader(a.group)
                    .filter(|(_, term)| *term > a.leader_term);
                let leader = view.leader_place(a, known.map(|(node, _)| node));
                let leader_epoch = known.map_or(a.leader_term, |(_, term)| term);
                let (error_code, error_message) = match &leader {
                    Some(_) => (ErrorCode::None, None),
                    None => (
                        ErrorCode::LeaderNotAvailable,
                        Some(
                            b.create_string("no leader recorded yet (an election is in progress)"),
                        ),
                    ),
                };
                partitions.push(p::PartitionMetadata::create(
                    &mut b,
                    &p::PartitionMetadataArgs {
                        error_code,
                        error_message,
                        partition: index as i32,
                        leader_node_id: leader.as_ref().map_or(-1, |l| l.node_id),
                        leader_shard: leader.as_ref().map_or(0, |l| l.shard),
                        shard_port: leader.as_ref().map_or(0, |l| l.shard_port),
                        replica_node_ids: Some(replica_ids),
                        leader_epoch: leader_epoch as i64,
                        replicas: Some(replicas),
                    },
                ));
            }
            let partitions = b.create_vector(&partitions);
            out.push(p::TopicMetadata::create(
                &mut b,
                &p::TopicMetadataArgs {
                    name: Some(name_offset),
                    partitions: Some(partitions),
                    ..Default::default()
                },
            ));
        }
        let topics = b.create_vector(&out);
        let cluster_id = b.create_string(&view.cluster_id);
        let body = p::MetadataResponse::create(
            &mut b,
            &p::MetadataResponseArgs {
                brokers: Some(brokers),
                topics: Some(topics),
                controller_id: view.controller_leader.unwrap_or(-1),
                cluster_id: Some(cluster_id),
                ..Default::default()
            },
        );
        finish(
            b,
            key,
            p::ResponseBody::MetadataResponse,
            body.as_union_value(),
        )
    }

    fn list_topics(&self, key: RequestKey) -> Result<Option<Frame>, ServiceError> {
        let view = self.view();
        let mut b = FlatBufferBuilder::new();
        let mut out = Vec::with_capacity(view.metadata.topics.len());
        for topic in view.metadata.topics.values() {
            let name = b.create_string(&topic.name);
            out.push(p::TopicListing::create(
                &mut b,
                &p::TopicListingArgs {
                    name: Some(name),
                    partitions: topic.partition_count() as i32,
                    replication_factor: i16::try_from(topic.replication_factor).unwrap_or(i16::MAX),
                },
            ));
        }
        let topics = b.create_vector(&out);
        let body = p::ListTopicsResponse::create(
            &mut b,
            &p::ListTopicsResponseArgs {
                topics: Some(topics),
                ..Default::default()
            },
        );
        finish(
            b,
            key,
            p::ResponseBody::ListTopicsResponse,
            body.as_union_value(),
        )
    }

    async fn create_topics(&self, request: &RequestFrame) -> Result<Option<Frame>, ServiceError> {
        let key = request.key();
        let (specs, validate_only, timeout_ms) = {
            let req = request
                .request()
                .body_as_create_topics_request()
                .ok_or_else(|| invalid("no body"))?;
            let specs: Vec<NewTopicSpec> = req
                .topics()
                .map(|topics| {
                    topics
                        .iter()
                        .map(|t| NewTopicSpec {
                            name: t.name().to_owned(),
                            partitions: t.partitions(),
                            replication_factor: t.replication_factor(),
                            configs: t
                                .configs()
                                .map(|configs| {
                                    configs
                                        .iter()
                                        .map(|c| {
                                            (c.key().to_owned(), c.value().unwrap_or("").to_owned())
                                        })
                                        .collect::<BTreeMap<_, _>>()
                                })
                                .unwrap_or_default(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            (specs, req.validate_only(), req.timeout_ms())
        };
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let results = self
            .ctx
            .run_admin(AdminOp::Create {
                topics: specs,
                validate_only,
                timeout_ms,
            })
            .await;
        let mut b = FlatBufferBuilder::new();
        let mut out = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let result = results.get(i).cloned().unwrap_or_else(|| {
                Err(ServiceError::new(ErrorCode::BrokerShuttingDown, "not done"))
            });
            let (error_code, error_message) = outcome(&mut b, &result);
            let name = b.create_string(name);
            out.push(p::CreateTopicResult::create(
                &mut b,
                &p::CreateTopicResultArgs {
                    name: Some(name),
                    error_code,
                    error_message,
                },
            ));
        }
        let topics = b.create_vector(&out);
        let body = p::CreateTopicsResponse::create(
            &mut b,
            &p::CreateTopicsResponseArgs {
                topics: Some(topics),
                ..Default::default()
            },
        );
        finish(
            b,
            key,
            p::ResponseBody::CreateTopicsResponse,
            body.as_union_value(),
        )
    }

    async fn delete_topics(&self, request: &RequestFrame) -> Result<Option<Frame>, ServiceError> {
        let key = request.key();
        let names: Vec<String> = request
            .request()
            .body_as_delete_topics_request()
            .ok_or_else(|| invalid("no body"))?
            .names()
            .map(|names| names.iter().map(str::to_owned).collect())
            .unwrap_or_default();
        let results = self
            .ctx
            .run_admin(AdminOp::Delete {
                names: names.clone(),
            })
            .await;
        let mut b = FlatBufferBuilder::new();
        let mut out = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let result = results.get(i).cloned().unwrap_or_else(|| {
                Err(ServiceError::new(ErrorCode::BrokerShuttingDown, "not done"))
            });
            let (error_code, error_message) = outcome(&mut b, &result);
            let name = b.create_string(name);
            out.push(p::DeleteTopicResult::create(
                &mut b,
                &p::DeleteTopicResultArgs {
                    name: Some(name),
                    error_code,
                    error_message,
                },
            ));
        }
        let topics = b.create_vector(&out);
        let body = p::DeleteTopicsResponse::create(
            &mut b,
            &p::DeleteTopicsResponseArgs {
                topics: Some(topics),
                ..Default::default()
            },
        );
        finish(
            b,
            key,
            p::ResponseBody::DeleteTopicsResponse,
            body.as_union_value(),
        )
    }

    async fn produce(&self, request: &RequestFrame) -> Result<Option<Frame>, ServiceError> {
        let key = request.key();
        let req = request
            .request()
            .body_as_produce_request()
            .ok_or_else(|| invalid("no body"))?;
        let acks = req.acks();
        if !matches!(acks, Acks::All | Acks::Leader | Acks::None) {
            return Err(invalid(format!("acks {} is not -1, 0 or 1", acks.0)));
        }
        // 0: no limit. Items still waiting at the deadline are answered
        // RequestTimedOut; their appends go on and may still commit.
        let timeout_ms = req.timeout_ms();
        let deadline =
            (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(u64::from(timeout_ms)));
        let mut items: Vec<(String, i32, Bytes)> = Vec::new();
        for item in req.partitions().iter().flatten() {
            let records = item.records().bytes();
            let batch = request.share(records).ok_or_else(|| {
                ServiceError::new(ErrorCode::Unknown, "records outside the frame")
            })?;
            items.push((item.topic().to_owned(), item.partition(), batch));
        }
        // Items of one partition run in request order; partitions run
        // concurrently.
        let mut groups: Vec<((String, i32), Vec<usize>)> = Vec::new();
        let mut group_of: std::collections::HashMap<(&str, i32), usize> =
            std::collections::HashMap::with_capacity(items.len());
        for (i, (topic, partition, _)) in items.iter().enumerate() {
            match group_of.entry((topic.as_str(), *partition)) {
                std::collections::hash_map::Entry::Occupied(g) => groups[*g.get()].1.push(i),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(groups.len());
                    groups.push(((topic.clone(), *partition), vec![i]));
                }
            }
        }
        let view = self.view();
        let node = self.ctx.node_id();
        let mut tasks = Vec::with_capacity(groups.len());
        for ((topic, partition), group) in groups {
            let ctx = self.ctx.clone();
            let view = view.clone();
            let batches: Vec<(usize, Bytes)> =
                group.iter().map(|i| (*i, items[*i].2.clone())).collect();
            // Detached: a timed-out item's task runs to its end all the
            // same, so no append is abandoned halfway.
            tasks.push(
                glommio::spawn_local(async move {
                    let mut out = Vec::with_capacity(batches.len());
                    for (i, batch) in batches {
                        let started = Instant::now();
                        let result = match route(&view, node, &topic, partition) {
                            Err(error) => Err(error),
                            Ok((group, owner)) => {
                                let op = PartitionOp::Produce {
                                    partition: group,
                                    acks,
                                    batch,
                                };
                                if owner != ctx.shard {
                                    ctx.metrics
                                        .forwarded
                                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                match ctx.router.run(&ctx.service, &ctx.metrics, owner, op).await {
                                    OpReply::Produce(result) => result,
                                    _ => Err(ServiceError::new(ErrorCode::Unknown, "wrong reply")),
                                }
                            }
                        };
                        ctx.metrics
                            .produce_latency
                            .observe(started.elapsed().as_micros() as u64);
                        out.push((i, result));
                    }
                    out
                })
                .detach(),
            );
        }
        let results = collect_until(tasks, items.len(), deadline).await;
        if acks == Acks::None {
            return Ok(None);
        }
        let mut b = FlatBufferBuilder::new();
        let mut out = Vec::with_capacity(items.len());
        for ((topic, partition, _), result) in items.iter().zip(results) {
            let result = result.unwrap_or_else(|| {
                Err(ServiceError::new(
                    ErrorCode::RequestTimedOut,
                    format!("not acknowledged within timeout_ms {timeout_ms}"),
                ))
            });
            let (error_code, error_message) = outcome(&mut b, &result);
            let leader_hint = hint(&mut b, &view, topic, *partition, &result);
            let topic = b.create_string(topic);
            let done = result.ok();
            out.push(p::ProducePartitionResponse::create(
                &mut b,
                &p::ProducePartitionResponseArgs {
                    topic: Some(topic),
                    partition: *partition,
                    error_code,
                    error_message,
                    base_offset: done.map_or(-1, |d| d.base_offset),
                    log_append_time_ms: done.map_or(-1, |d| d.log_append_time_ms),
                    log_start_offset: done.map_or(-1, |d| d.log_start_offset),
                    leader_hint,
                },
            ));
        }
        let partitions = b.create_vector(&out);
        let body = p::ProduceResponse::create(
            &mut b,
            &p::ProduceResponseArgs {
                partitions: Some(partitions),
                ..Default::default()
            },
        );
        finish(
            b,
            key,
            p::ResponseBody::ProduceResponse,
            body.as_union_value(),
        )
    }

    async fn fetch_one(
        ctx: &ShardCtx,
        view: &ClusterView,
        item: &FetchItem,
        wait_until: Option<Instant>,
        allow_follower: bool,
    ) -> Result<FetchResult, ServiceError> {
        let (group, owner) = route(view, ctx.node_id(), &item.topic, item.partition)?;
        let op = PartitionOp::Fetch {
            partition: group,
            args: FetchArgs {
                offset: item.offset,
                max_bytes: item.max_bytes,
                wait_until,
                allow_follower,
            },
        };
        if owner != ctx.shard {
            ctx.metrics
                .forwarded
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        match ctx.router.run(&ctx.service, &ctx.metrics, owner, op).await {
            OpReply::Fetch(result) => result,
            _ => Err(ServiceError::new(ErrorCode::Unknown, "wrong reply")),
        }
    }

    /// Fetches every item. An item of this shard with nothing new is
    /// answered at once, with no read and no task; the others run
    /// concurrently. With `wait`, the items marked waiting wait for data
    /// until its deadline: this shard's through one listener on its
    /// watermarks (rechecked as they move), other shards' in a task each;
    /// the first item that gets some ends the others' waits (they answer
    /// empty, `None` here).
    async fn fetch_pass(
        &self,
        view: &Arc<ClusterView>,
        items: &Rc<Vec<FetchItem>>,
        wait: Option<(Instant, &[bool])>,
        allow_follower: bool,
    ) -> Vec<Option<Result<FetchResult, ServiceError>>> {
        let service = &self.ctx.service;
        let mut out: Vec<Option<Result<FetchResult, ServiceError>>> =
            (0..items.len()).map(|_| None).collect();
        // Items of this shard waiting for data, with their group.
        let mut local_waiting: Vec<(usize, GroupId)> = Vec::new();
        let mut run: Vec<(usize, Option<Instant>)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let wait_until = match wait {
                None => None,
                Some((deadline, waiting)) if waiting[i] => Some(deadline),
                Some(_) => continue,
            };
            if let Ok((group, owner)) = route(view, self.ctx.node_id(), &item.topic, item.partition)
            {
                if owner == self.ctx.shard {
                    if let Some(empty) = service.nothing_new(group, item.offset, allow_follower) {
                        match wait_until {
                            Some(_) => local_waiting.push((i, group)),
                            None => out[i] = Some(Ok(empty)),
                        }
                        continue;
                    }
                }
            }
            run.push((i, wait_until));
        }
        let done = Shutdown::new();
        let mut tasks = Vec::with_capacity(run.len());
        for (i, wait_until) in run {
            tasks.push((
                i,
                self.spawn_fetch(view, items, i, wait_until, allow_follower, &done),
            ));
        }
        if let (Some((deadline, _)), false) = (wait, local_waiting.is_empty()) {
            let arrived = async {
                let mut ready = Vec::new();
                service
                    .wait_until(deadline, || {
                        ready.extend(local_waiting.iter().filter_map(|(i, group)| {
                            service
                                .nothing_new(*group, items[*i].offset, allow_follower)
                                .is_none()
                                .then_some(*i)
                        }));
                        !ready.is_empty()
                    })
                    .await;
                ready
            };
            let ended = async {
                done.listen().await;
                Vec::new()
            };
            let ready = futures_lite::future::or(arrived, ended).await;
            if !ready.is_empty() {
                done.trigger();
                for i in ready {
                    out[i] = Some(
                        Self::fetch_one(&self.ctx, view, &items[i], None, allow_follower).await,
                    );
                }
            }
        }
        for (i, task) in tasks {
            if let Some(result) = task.await {
                out[i] = Some(result);
            }
        }
        out
    }

    /// Runs one item's fetch in a task; with `wait_until`, the first
    /// waiting item to get records triggers `done`, which ends the other
    /// waits (they give `None`).
    fn spawn_fetch(
        &self,
        view: &Arc<ClusterView>,
        items: &Rc<Vec<FetchItem>>,
        i: usize,
        wait_until: Option<Instant>,
        allow_follower: bool,
        done: &Shutdown,
    ) -> glommio::Task<Option<Result<FetchResult, ServiceError>>> {
        let (ctx, view, items, done) =
            (self.ctx.clone(), view.clone(), items.clone(), done.clone());
        glommio::spawn_local(async move {
            let fetch = async {
                let result =
                    Self::fetch_one(&ctx, &view, &items[i], wait_until, allow_follower).await;
                if matches!(&result, Ok(r) if !r.records.is_empty()) {
                    done.trigger();
                }
                Some(result)
            };
            let ended = async {
                done.listen().await;
                None
            };
            if wait_until.is_some() {
                futures_lite::future::or(fetch, ended).await
            } else {
                fetch.await
            }
        })
    }

    async fn fetch(&self, request: &RequestFrame) -> Result<Option<Frame>, ServiceError> {
        let started = Instant::now();
        let key = request.key();
        let limits = &self.ctx.config.limits;
        let (items, max_wait_ms, min_bytes, total_max, allow_follower) = {
            let req = request
                .request()
                .body_as_fetch_request()
                .ok_or_else(|| invalid("no body"))?;
            let total_max = match req.max_bytes() {
                0 => limits.fetch_bytes_default,
                n => n,
            };
            let items: Vec<FetchItem> = req
                .partitions()
                .iter()
                .flatten()
                .map(|item| FetchItem {
                    topic: item.topic().to_owned(),
                    partition: item.partition(),
                    offset: item.offset(),
                    max_bytes: match item.max_bytes() {
                        0 => limits.fetch_bytes_default,
                        n => n,
                    }
                    .min(total_max),
                })
                .collect();
            (
                items,
                u64::from(req.max_wait_ms()).min(limits.fetch_wait_max_ms),
                req.min_bytes(),
                total_max,
                req.allow_follower(),
            )
        };
        let items = Rc::new(items);
        let view = self.view();
        let mut results = self.fetch_pass(&view, &items, None, allow_follower).await;
        let available: usize = results
            .iter()
            .flatten()
            .filter_map(|r| r.as_ref().ok())
            .map(|r| r.records.len())
            .sum();
        if max_wait_ms > 0 && available < (min_bytes as usize).max(1) {
            let waiting: Vec<bool> = results
                .iter()
                .map(|r| matches!(r, Some(Ok(r)) if r.records.is_empty()))
                .collect();
            if waiting.iter().any(|w| *w) {
                let deadline = started + Duration::from_millis(max_wait_ms);
                let waited = self
                    .fetch_pass(&view, &items, Some((deadline, &waiting)), allow_follower)
                    .await;
                for (slot, new) in results.iter_mut().zip(waited) {
                    if let Some(new) = new {
                        *slot = Some(new);
                    }
                }
            }
        }
        let mut b = FlatBufferBuilder::new();
        let mut out = Vec::with_capacity(items.len());
        let mut total = 0usize;
        for (item, result) in items.iter().zip(results) {
            let result =
                result.unwrap_or_else(|| Err(ServiceError::new(ErrorCode::Unknown, "not done")));
            let (error_code, error_message) = outcome(&mut b, &result);
            let leader_hint = hint(&mut b, &view, &item.topic, item.partition, &result);
            let topic = b.create_string(&item.topic);
            let (high_watermark, log_start_offset, records) = match &result {
                Ok(r) => {
                    // The request's byte budget, the first batch excepted.
                    let keep = total == 0 || total + r.records.len() <= total_max as usize;
                    let records = if keep { &r.records[..] } else { &[][..] };
                    total += records.len();
                    (
                        r.high_watermark,
                        r.log_start_offset,
                        Some(b.create_vector(records)),
                    )
                }
                Err(_) => (-1, -1, None),
            };
            out.push(p::FetchPartitionResponse::create(
                &mut b,
                &p::FetchPartitionResponseArgs {
                    topic: Some(topic),
                    partition: item.partition,
                    error_code,
                    error_message,
                    high_watermark,
                    log_start_offset,
                    records,
                    leader_hint,
                },
            ));
        }
        let partitions = b.create_vector(&out);
        let body = p::FetchResponse::create(
            &mut b,
            &p::FetchResponseArgs {
                partitions: Some(partitions),
                ..Default::default()
            },
        );
        self.ctx
            .metrics
            .fetch_latency
            .observe(started.elapsed().as_micros() as u64);
        finish(
            b,
            key,
            p::ResponseBody::FetchResponse,
            body.as_union_value(),
        )
    }

    async fn list_offsets(&self, request: &RequestFrame) -> Result<Option<Frame>, ServiceError> {
        let key = request.key();
        let items: Vec<(String, i32, OffsetSpec, i64)> = request
            .request()
            .body_as_list_offsets_request()
            .ok_or_else(|| invalid("no body"))?
            .partitions()
            .iter()
            .flatten()
            .map(|i| {
                (
                    i.topic().to_owned(),
                    i.partition(),
                    i.spec(),
                    i.timestamp_ms(),
                )
            })
            .collect();
        let view = self.view();
        let mut results = Vec::with_capacity(items.len());
        for (topic, partition, spec, timestamp_ms) in &items {
            let result = match route(&view, self.ctx.node_id(), topic, *partition) {
                Err(error) => Err(error),
                Ok((group, owner)) => {
                    let op = PartitionOp::ListOffsets {
                        partition: group,
                        spec: *spec,
                        timestamp_ms: *timestamp_ms,
                    };
                    match self
                        .ctx
                        .router
                        .run(&self.ctx.service, &self.ctx.metrics, owner, op)
                        .await
                    {
                        OpReply::ListOffsets(result) => result,
                        _ => Err(ServiceError::new(ErrorCode::Unknown, "wrong reply")),
                    }
                }
            };
            results.push(result);
        }
        let mut b = FlatBufferBuilder::new();
        let mut out = Vec::with_capacity(items.len());
        for ((topic, partition, _, _), result) in items.iter().zip(results) {
            let (error_code, error_message) = outcome(&mut b, &result);
            let leader_hint = hint(&mut b, &view, topic, *partition, &result);
            let topic = b.create_string(topic);
            let found = result.ok();
            out.push(p::ListOffsetsPartitionResponse::create(
                &mut b,
                &p::ListOffsetsPartitionResponseArgs {
                    topic: Some(topic),
                    partition: *partition,
                    error_code,
                    error_message,
                    offset: found.map_or(-1, |f| f.offset),
                    timestamp_ms: found.map_or(-1, |f| f.timestamp_ms),
                    leader_hint,
                },
            ));
        }
        let partitions = b.create_vector(&out);
        let body = p::ListOffsetsResponse::create(
            &mut b,
            &p::ListOffsetsResponseArgs {
                partitions: Some(partitions),
                ..Default::default()
            },
        );
        finish(
            b,
            key,
            p::ResponseBody::ListOffsetsResponse,
            body.as_union_value(),
        )
    }
}

impl BrokerHandler {
    fn describe_cluster(&self, key: RequestKey) -> Result<Option<Frame>, ServiceError> {
        let view = self.view();
        let mut b = FlatBufferBuilder::new();
        let mut brokers = Vec::with_capacity(view.metadata.brokers.len());
        for broker in view.metadata.brokers.values() {
            let host = b.create_string(&broker.client_host);
            let inter = b.create_string(&broker.inter_broker_addr);
            let ports = b.create_vector(&broker.shard_ports);
            brokers.push(p::BrokerDescription::create(
                &mut b,
                &p::BrokerDescriptionArgs {
                    node_id: broker.node_id,
                    host: Some(host),
                    port: broker.client_port,
                    shard_ports: Some(ports),
                    inter_broker_address: Some(inter),
                    status: broker_status(broker.status),
                    incarnation: broker.incarnation,
                    controller_voter: view.voters.contains(&broker.node_id),
                },
            ));
        }
        let brokers = b.create_vector(&brokers);
        let cluster_id = b.create_string(&view.cluster_id);
        let body = p::DescribeClusterResponse::create(
            &mut b,
            &p::DescribeClusterResponseArgs {
                cluster_id: Some(cluster_id),
                controller_id: view.controller_leader.unwrap_or(-1),
                controller_term: view.controller_term,
                metadata_version: view.metadata.version,
                brokers: Some(brokers),
                answered_by: self.ctx.node_id(),
                ..Default::default()
            },
        );
        finish(
            b,
            key,
            p::ResponseBody::DescribeClusterResponse,
            body.as_union_value(),
        )
    }

    async fn describe_replicas(
        &self,
        request: &RequestFrame,
    ) -> Result<Option<Frame>, ServiceError> {
        let key = request.key();
        let names: Option<Vec<String>> = request
            .request()
            .body_as_describe_replicas_request()
            .ok_or_else(|| invalid("no body"))?
            .topics()
            .map(|t| t.iter().map(str::to_owned).collect());
        let view = self.view();
        let groups: Option<std::collections::HashSet<GroupId>> = names.as_ref().map(|names| {
            names
                .iter()
                .filter_map(|n| view.metadata.topic(n))
                .flat_map(|t| t.partitions.iter().map(|a| a.group))
                .collect()
        });
        let mut replicas: Vec<ReplicaStatus> = self.ctx.describe_all(groups).await;
        replicas.sort_by_key(|r| r.group);
        let mut b = FlatBufferBuilder::new();
        let mut out = Vec::with_capacity(replicas.len());
        for r in &replicas {
            let Some((topic, index, a)) = view.metadata.assignment(r.group) else {
                continue;
            };
            let shard = a
                .replica_on(self.ctx.node_id())
                .map_or(0, |place| place.shard);
            let name = b.create_string(&topic.name);
            out.push(p::ReplicaDescription::create(
                &mut b,
                &p::ReplicaDescriptionArgs {
                    topic: Some(name),
                    partition: index as i32,
                    shard,
                    role: replica_role(r.role),
                    term: r.term,
                    leader_node_id: r.leader.unwrap_or(-1),
                    last_index: r.last_index,
                    commit_index: r.commit_index,
                    high_watermark: r.high_watermark as i64,
                    log_start_offset: r.log_start_offset as i64,
                    first_index: r.first_index,
                    log_end_offset: r.log_end_offset as i64,
                },
            ));
        }
        let replicas = b.create_vector(&out);
        let body = p::DescribeReplicasResponse::create(
            &mut b,
            &p::DescribeReplicasResponseArgs {
                node_id: self.ctx.node_id(),
                replicas: Some(replicas),
                ..Default::default()
            },
        );
        finish(
            b,
            key,
            p::ResponseBody::DescribeReplicasResponse,
            body.as_union_value(),
        )
    }

    async fn transfer_leader(&self, request: &RequestFrame) -> Result<Option<Frame>, ServiceError> {
        let key = request.key();
        let (topic, partition, to, timeout_ms) = {
            let req = request
                .request()
                .body_as_transfer_leader_request()
                .ok_or_else(|| invalid("no body"))?;
            (
                req.topic().to_owned(),
                req.partition(),
                req.to_node_id(),
                req.timeout_ms(),
            )
        };
        let partition_index = u32::try_from(partition)
            .map_err(|_| ServiceError::new(ErrorCode::UnknownPartition, "negative partition"))?;
        let results = self
            .ctx
            .run_admin(AdminOp::TransferLeader {
                topic: topic.clone(),
                partition: partition_index,
                to,
                timeout_ms,
            })
            .await;
        let result = results
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(ServiceError::new(ErrorCode::BrokerShuttingDown, "not done")));
        // Done with a wait: the controller saw `to` lead (this shard's view
        // may not have that change yet). Otherwise: the leader recorded.
        let leader = if result.is_ok() && timeout_ms > 0 {
            to
        } else {
            self.view()
                .locate(&topic, partition)
                .ok()
                .and_then(|(_, a)| a.leader)
                .unwrap_or(-1)
        };
        let mut b = FlatBufferBuilder::new();
        let (error_code, error_message) = outcome(&mut b, &result);
        let body = p::TransferLeaderResponse::create(
            &mut b,
            &p::TransferLeaderResponseArgs {
                error_code,
                error_message,
                leader_node_id: leader,
            },
        );
        finish(
            b,
            key,
            p::ResponseBody::TransferLeaderResponse,
            body.as_union_value(),
        )
    }
}

fn broker_status(status: BrokerStatus) -> p::BrokerStatus {
    match status {
        BrokerStatus::Active => p::BrokerStatus::Active,
        BrokerStatus::Failed => p::BrokerStatus::Failed,
    }
}

fn replica_role(role: StateRole) -> p::ReplicaRole {
    match role {
        StateRole::Follower => p::ReplicaRole::Follower,
        StateRole::Candidate => p::ReplicaRole::Candidate,
        StateRole::Leader => p::ReplicaRole::Leader,
        StateRole::PreCandidate => p::ReplicaRole::PreCandidate,
    }
}

/// Where this broker serves `topic`/`p`: the partition's group and the
/// shard of this broker that holds its replica. A broker that holds none
/// answers NotLeader naming the leader the controller recorded.
fn route(
    view: &ClusterView,
    node: NodeId,
    topic: &str,
    p: i32,
) -> Result<(GroupId, u16), ServiceError> {
    let (_, a) = view.locate(topic, p)?;
    match a.replica_on(node) {
        Some(r) => Ok((a.group, r.shard)),
        None => Err(ServiceError::not_leader(
            a.leader,
            format!("broker {node} holds no replica of {topic}/{p}"),
        )),
    }
}

/// A LeaderHint for a NotLeader answer, when the leader is known.
fn hint<'a, T>(
    b: &mut FlatBufferBuilder<'a>,
    view: &ClusterView,
    topic: &str,
    partition: i32,
    result: &Result<T, ServiceError>,
) -> Option<WIPOffset<p::LeaderHint<'a>>> {
    let Err(error) = result else { return None };
    if error.code != ErrorCode::NotLeader {
        return None;
    }
    let (_, a) = view.locate(topic, partition).ok()?;
    let place = view.leader_place(a, error.leader)?;
    let host = b.create_string(&place.host);
    Some(p::LeaderHint::create(
        b,
        &p::LeaderHintArgs {
            node_id: place.node_id,
            host: Some(host),
            shard: place.shard,
            shard_port: place.shard_port,
            leader_epoch: place.epoch as i64,
        },
    ))
}

/// Gathers the `(item, result)` lists of detached tasks into one result per
/// item, waiting for each task until `deadline` (without a deadline, until
/// it ends). An item whose task did not end in time stays `None`; the task
/// itself goes on.
async fn collect_until<T>(
    tasks: Vec<glommio::task::JoinHandle<Vec<(usize, T)>>>,
    items: usize,
    deadline: Option<Instant>,
) -> Vec<Option<T>> {
    let mut results: Vec<Option<T>> = (0..items).map(|_| None).collect();
    for task in tasks {
        let done = match deadline {
            None => task.await,
            Some(deadline) => {
                let timer = async {
                    glommio::timer::Timer::new(deadline.saturating_duration_since(Instant::now()))
                        .await;
                    None
                };
                futures_lite::future::or(task, timer).await
            }
        };
        for (i, result) in done.into_iter().flatten() {
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(result);
            }
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    use super::collect_until;

    #[test]
    fn items_past_the_deadline_stay_unanswered_and_their_tasks_go_on() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let (release_tx, release_rx) = async_channel_pair();
                let finished = Rc::new(Cell::new(false));
                let quick = glommio::spawn_local(async { vec![(0usize, "quick")] }).detach();
                let slow = {
                    let finished = finished.clone();
                    glommio::spawn_local(async move {
                        // Ends only once the test releases it, after the
                        // deadline has passed.
                        let _ = release_rx.recv().await;
                        finished.set(true);
                        vec![(1usize, "slow")]
                    })
                    .detach()
                };
                let deadline = Instant::now() + Duration::from_millis(20);
                let results = collect_until(vec![quick, slow], 3, Some(deadline)).await;
                assert_eq!(results, vec![Some("quick"), None, None]);
                assert!(Instant::now() >= deadline);
                // The timed-out task was not cancelled: released, it ends.
                release_tx.send(()).await.unwrap();
                for _ in 0..1000 {
                    if finished.get() {
                        break;
                    }
                    glommio::executor().yield_now().await;
                }
                assert!(finished.get(), "the timed-out task was cancelled");

                let all = collect_until(
                    vec![glommio::spawn_local(async { vec![(1usize, 7)] }).detach()],
                    2,
                    None,
                )
                .await;
                assert_eq!(all, vec![None, Some(7)]);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    fn async_channel_pair() -> (
        glommio::channels::local_channel::LocalSender<()>,
        glommio::channels::local_channel::LocalReceiver<()>,
    ) {
        glommio::channels::local_channel::new_bounded(1)
    }
}
