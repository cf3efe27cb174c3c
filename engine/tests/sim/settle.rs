//! The end of a run: every fault healed, then liveness (within a bound of
//! simulated time every group has one serving leader, every replica has
//! committed everything, every produce is answered, every broker holds the
//! same metadata), then the checks over the whole history.

use shardmq_engine::controller::ClusterMetadata;
use shardmq_engine::raft::{RaftLog, CONTROLLER_GROUP};

use super::cluster::{tr, Sim, SIM_TOPIC, TICK_MS};
use super::model::{GroupId, NodeId};
use super::net::LinkConfig;
use super::workload::ProduceState;

/// How long after the last heal every group must have a serving leader and
/// every replica must have committed everything (simulated time).
pub const LIVENESS_BOUND_MS: u64 = 30_000;

impl Sim {
    /// Heals everything, then steps until the cluster has converged.
    pub fn settle(&mut self) -> Result<(), String> {
        {
            let mut net = self.net.borrow_mut();
            net.heal();
            net.links.clear();
            net.default_link = LinkConfig {
                delay_min: 0,
                delay_max: self.base_link.delay_max,
                drop_per_mille: 0,
                dup_per_mille: 0,
            };
        }
        for i in 0..self.brokers.len() {
            self.brokers[i].log.disk().crash_at_next_sync = None;
            if self.brokers[i].run.is_none() {
                self.boot(i)?;
            }
            self.brokers[i].paused_until = None;
        }
        tr!(self, "last heal: every broker up, network whole");
        // A last produce to every partition makes its leader commit in its
        // own term, which commits everything before it.
        for g in self.groups() {
            self.new_produce(g, 1);
        }
        let start = self.step;
        loop {
            self.step_once(false)?;
            match self.converged() {
                None => break,
                Some(why) if (self.step - start) * TICK_MS > LIVENESS_BOUND_MS => {
                    return Err(format!(
                        "liveness: {} ms after the last heal, {why}",
                        LIVENESS_BOUND_MS
                    ));
                }
                Some(_) => {}
            }
        }
        self.stats.settle_ms = (self.step - start) * TICK_MS;
        tr!(
            self,
            "converged {} ms after the last heal",
            self.stats.settle_ms
        );
        Ok(())
    }

    /// `None` once converged, otherwise what is still missing.
    fn converged(&self) -> Option<String> {
        let mut groups = self.groups();
        groups.push(CONTROLLER_GROUP);
        for g in groups {
            let ids = self.raft_ids(g);
            let mut leaders = Vec::new();
            for (n, _) in &ids {
                let run = self.broker(*n).run.as_ref()?;
                if run.lp.with_replica(g, |r| r.leads_with_commit())? {
                    leaders.push(*n);
                }
            }
            let [leader] = leaders[..] else {
                return Some(format!("group {g:x} has serving leaders {leaders:?}"));
            };
            let lrun = self.broker(leader).run.as_ref()?;
            let (last, leader_id) = lrun.lp.with_replica(g, |r| (r.last_index(), r.id()))?;
            for (n, _) in &ids {
                let run = self.broker(*n).run.as_ref()?;
                let (commit, rlast, knows) = run
                    .lp
                    .with_replica(g, |r| (r.commit_index(), r.last_index(), r.leader_id()))?;
                if commit != last || rlast != last || knows != Some(leader_id) {
                    return Some(format!(
                        "group {g:x}: broker {n} has commit {commit}, last {rlast}, leader \
                         {knows:?}; broker {leader} leads with last index {last}"
                    ));
                }
            }
        }
        if self.client.pending() > 0 {
            return Some(format!("{} produces unanswered", self.client.pending()));
        }
        let first = &self.brokers[0].run.as_ref()?.ctrl.meta;
        for b in &self.brokers[1..] {
            let run = b.run.as_ref()?;
            if run.ctrl.meta != *first {
                return Some(format!(
                    "broker {} has metadata at applied index {}, broker 1 at {}",
                    b.node, run.ctrl.meta.applied_index, first.applied_index
                ));
            }
        }
        for b in &self.brokers {
            if !b.run.as_ref()?.registered {
                return Some(format!("broker {} is not registered", b.node));
            }
        }
        None
    }

    /// The checks over the whole run, once converged.
    pub fn final_checks(&self) -> Result<(), String> {
        // Every acknowledged value is committed once, at its offset.
        for (id, p) in &self.client.produces {
            if let ProduceState::Acked(ack) = p.state {
                self.check_ack(p.group, &p.values, ack)
                    .map_err(|e| format!("produce {id}: {e}"))?;
            }
            if p.state == ProduceState::InFlight || p.state == ProduceState::Queued {
                return Err(format!("produce {id} never answered"));
            }
        }
        // Every replica's log holds the committed entries, byte for byte.
        let mut groups = self.groups();
        groups.push(CONTROLLER_GROUP);
        for &g in &groups {
            for (n, _) in self.raft_ids(g) {
                let log = &self.broker(n).log;
                let first = log.first_index(g).map_err(|e| e.to_string())?;
                let last = log.last_index(g).map_err(|e| e.to_string())?;
                if last != self.model.last_index(g) {
                    return Err(format!(
                        "group {g:x}: broker {n}'s log ends at {last}, the committed log at {}",
                        self.model.last_index(g)
                    ));
                }
                for index in first..=last {
                    let e = log.entry(g, index).expect("within the log");
                    let m = self.model.entry(g, index).ok_or_else(|| {
                        format!("group {g:x}: index {index} on broker {n} never seen committed")
                    })?;
                    if m.payload != e.payload || m.term != e.term || m.base_offset != e.base_offset
                    {
                        return Err(format!(
                            "group {g:x}: broker {n} holds index {index} unlike the committed one"
                        ));
                    }
                }
            }
        }
        // A full read from each leader returns every acknowledged value
        // still retained, at the offset it was acknowledged with.
        for g in self.groups() {
            let leader = self
                .serving_leader(g)
                .ok_or("no leader after convergence")?;
            let read = self.read_all(g, leader)?;
            let start = self
                .broker(leader)
                .log
                .log_start_offset(g)
                .map_err(|e| e.to_string())?;
            for (id, p) in &self.client.produces {
                let ProduceState::Acked(ack) = p.state else {
                    continue;
                };
                if p.group != g {
                    continue;
                }
                for (k, v) in p.values.iter().enumerate() {
                    let want = ack.base_offset + k as u64;
                    if want < start {
                        continue;
                    }
                    match read.get(v) {
                        Some(&o) if o == want => {}
                        other => {
                            return Err(format!(
                                "produce {id}: value {} acked at offset {want} reads at {other:?} \
                                 from broker {leader}",
                                String::from_utf8_lossy(v)
                            ))
                        }
                    }
                }
            }
        }
        // The metadata converged, and placed the workload's topic where its
        // partitions are.
        let meta: &ClusterMetadata = &self.brokers[0].run.as_ref().expect("up").ctrl.meta;
        meta.check_invariants()
            .map_err(|e| format!("metadata: {}", e.0))?;
        let topic = meta
            .topic(SIM_TOPIC)
            .ok_or("the workload's topic was never created")?;
        for (p, a) in topic.partitions.iter().enumerate() {
            let replicas: Vec<NodeId> = a.replicas.iter().map(|r| r.node_id).collect();
            let g = a.group;
            if self.placement.get(&g) != Some(&replicas) {
                return Err(format!(
                    "partition {p} (group {g:x}) placed on {replicas:?} by the controller, \
                     simulated on {:?}",
                    self.placement.get(&g)
                ));
            }
        }
        Ok(())
    }

    fn serving_leader(&self, g: GroupId) -> Option<NodeId> {
        self.raft_ids(g).into_iter().map(|(n, _)| n).find(|n| {
            self.broker(*n)
                .run
                .as_ref()
                .and_then(|r| r.lp.with_replica(g, |rep| rep.leads_with_commit()))
                .unwrap_or(false)
        })
    }
}
