//! The failure detector the controller's leader runs.
//!
//! Brokers heartbeat the controller's leader; it calls [`Liveness::heard`]
//! for each, and from time to time proposes the commands
//! [`Liveness::verdicts`] returns. Time is an argument: the caller reads the
//! clock, so tests drive it with a synthetic one.
//!
//! A broker is marked Failed once it has not been heard from for longer than
//! the session timeout, and Active again as soon as it is heard from within
//! it. Verdicts are repeated until the metadata reflects them (a command
//! applied twice is `Unchanged`), so the caller need not remember which it
//! proposed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::command::Command;
use super::limits::BROKERS_MAX;
use super::state::{BrokerStatus, ClusterMetadata, NodeId};

/// When the controller's leader last heard from each broker. Held by shard
/// 0 (the controller) of the broker that leads the controller group, and
/// only while it leads; nothing of it is replicated or pushed to other
/// shards.
#[derive(Debug, Clone)]
pub struct Liveness {
    session_timeout: Duration,
    /// At most [`BROKERS_MAX`] entries.
    last_heard: BTreeMap<NodeId, Instant>,
    /// When this leader took over ([`Liveness::reset`]): a broker not heard
    /// from since counts from then.
    grace_from: Option<Instant>,
}

impl Liveness {
    /// A detector that fails brokers not heard from for longer than
    /// `session_timeout`. Call [`Liveness::reset`] when taking the lead.
    pub fn new(session_timeout: Duration) -> Self {
        Self {
            session_timeout,
            last_heard: BTreeMap::new(),
            grace_from: None,
        }
    }

    /// The session timeout.
    pub fn session_timeout(&self) -> Duration {
        self.session_timeout
    }

    /// Records a heartbeat from `node` at `now`. A time earlier than the one
    /// recorded is ignored. Heartbeats from more than [`BROKERS_MAX`]
    /// distinct nodes are not recorded: no cluster registers that many.
    pub fn heard(&mut self, node: NodeId, now: Instant) {
        let full = self.last_heard.len() >= BROKERS_MAX;
        match self.last_heard.get_mut(&node) {
            Some(last) => *last = (*last).max(now),
            None if !full => {
                self.last_heard.insert(node, now);
            }
            None => {}
        }
    }

    /// A new controller leader takes over at `now`: what an earlier term
    /// heard is forgotten, and every broker gets a full session timeout from
    /// `now` to be heard from before it is failed.
    pub fn reset(&mut self, now: Instant) {
        self.last_heard.clear();
        self.grace_from = Some(now);
    }

    /// When `node` was last heard from, if it was since the last reset.
    pub fn last_heard(&self, node: NodeId) -> Option<Instant> {
        self.last_heard.get(&node).copied()
    }

    /// The commands the controller's leader should propose at `now`, by
    /// node id: [`Command::MarkBrokerFailed`] for every Active broker other
    /// than `self_id` not heard from for longer than the session timeout
    /// (counting from the last reset for one never heard from, and none at
    /// all before the first reset), and [`Command::MarkBrokerActive`] for
    /// every Failed broker heard from within it.
    pub fn verdicts(
        &self,
        now: Instant,
        metadata: &ClusterMetadata,
        self_id: NodeId,
    ) -> Vec<Command> {
        let mut commands = Vec::new();
        for broker in metadata.brokers.values() {
            let node_id = broker.node_id;
            if node_id == self_id {
                continue;
            }
            let heard = self.last_heard.get(&node_id).copied();
            let Some(since) = heard.or(self.grace_from) else {
                continue;
            };
            let within = now.saturating_duration_since(since) <= self.session_timeout;
            match broker.status {
                BrokerStatus::Active if !within => {
                    commands.push(Command::MarkBrokerFailed { node_id });
                }
                BrokerStatus::Failed if within && heard.is_some() => {
                    commands.push(Command::MarkBrokerActive { node_id });
                }
                _ => {}
            }
        }
        commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::BrokerRegistration;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn cluster(nodes: &[NodeId]) -> ClusterMetadata {
        let mut m = ClusterMetadata::new();
        for (i, &node_id) in nodes.iter().enumerate() {
            let registration = BrokerRegistration {
                node_id,
                inter_broker_addr: format!("n{node_id}:9100"),
                client_host: format!("n{node_id}"),
                client_port: 9092,
                shard_ports: vec![9200],
                incarnation: 1,
            };
            m.apply(i as u64 + 1, &Command::RegisterBroker(registration))
                .unwrap();
        }
        m
    }

    fn apply_all(m: &mut ClusterMetadata, commands: &[Command]) {
        for c in commands {
            let index = m.applied_index + 1;
            m.apply(index, c).unwrap();
        }
    }

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn brokers_silent_past_the_timeout_are_failed_but_never_self() {
        let t0 = Instant::now();
        let m = cluster(&[1, 2, 3]);
        let mut liveness = Liveness::new(TIMEOUT);
        liveness.reset(t0);
        liveness.heard(2, at(t0, 5));

        assert!(
            liveness.verdicts(at(t0, 10), &m, 1).is_empty(),
            "exactly the timeout"
        );
        assert_eq!(
            liveness.verdicts(at(t0, 11), &m, 1),
            vec![Command::MarkBrokerFailed { node_id: 3 }],
            "3 was never heard: counted from the reset; 2 was heard at 5"
        );
        assert_eq!(
            liveness.verdicts(at(t0, 16), &m, 1),
            vec![
                Command::MarkBrokerFailed { node_id: 2 },
                Command::MarkBrokerFailed { node_id: 3 }
            ]
        );
    }

    #[test]
    fn a_failed_broker_heard_again_is_active() {
        let t0 = Instant::now();
        let mut m = cluster(&[1, 2]);
        let mut liveness = Liveness::new(TIMEOUT);
        liveness.reset(t0);
        let failed = liveness.verdicts(at(t0, 11), &m, 1);
        assert_eq!(failed, vec![Command::MarkBrokerFailed { node_id: 2 }]);
        apply_all(&mut m, &failed);
        assert!(
            liveness.verdicts(at(t0, 12), &m, 1).is_empty(),
            "already failed"
        );

        liveness.heard(2, at(t0, 20));
        let active = liveness.verdicts(at(t0, 21), &m, 1);
        assert_eq!(active, vec![Command::MarkBrokerActive { node_id: 2 }]);
        apply_all(&mut m, &active);
        assert!(liveness.verdicts(at(t0, 22), &m, 1).is_empty());
    }

    #[test]
    fn a_failed_broker_heard_too_long_ago_stays_failed() {
        let t0 = Instant::now();
        let mut m = cluster(&[1, 2]);
        apply_all(&mut m, &[Command::MarkBrokerFailed { node_id: 2 }]);
        let mut liveness = Liveness::new(TIMEOUT);
        liveness.reset(t0);
        assert!(
            liveness.verdicts(at(t0, 1), &m, 1).is_empty(),
            "not heard since reset"
        );
        liveness.heard(2, at(t0, 2));
        assert!(liveness.verdicts(at(t0, 13), &m, 1).is_empty());
    }

    #[test]
    fn a_new_leader_gives_every_broker_a_fresh_grace_period() {
        let t0 = Instant::now();
        let m = cluster(&[1, 2]);
        let mut liveness = Liveness::new(TIMEOUT);
        liveness.reset(t0);
        liveness.heard(2, at(t0, 1));
        // Leadership is lost and regained much later.
        liveness.reset(at(t0, 100));
        assert_eq!(liveness.last_heard(2), None);
        assert!(liveness.verdicts(at(t0, 105), &m, 1).is_empty());
        assert_eq!(
            liveness.verdicts(at(t0, 111), &m, 1),
            vec![Command::MarkBrokerFailed { node_id: 2 }]
        );
    }

    #[test]
    fn nothing_is_failed_before_the_first_reset() {
        let t0 = Instant::now();
        let m = cluster(&[1, 2]);
        let liveness = Liveness::new(TIMEOUT);
        assert!(liveness.verdicts(at(t0, 1000), &m, 1).is_empty());
    }

    #[test]
    fn heartbeats_never_move_back_in_time_and_are_bounded() {
        let t0 = Instant::now();
        let mut liveness = Liveness::new(TIMEOUT);
        liveness.heard(2, at(t0, 5));
        liveness.heard(2, at(t0, 3));
        assert_eq!(liveness.last_heard(2), Some(at(t0, 5)));

        for node in 0..(BROKERS_MAX as NodeId + 10) {
            liveness.heard(node + 100, t0);
        }
        assert_eq!(liveness.last_heard.len(), BROKERS_MAX);
        liveness.heard(2, at(t0, 9));
        assert_eq!(
            liveness.last_heard(2),
            Some(at(t0, 9)),
            "known nodes still update"
        );
        // A clock reading before the grace period does not underflow.
        liveness.reset(at(t0, 50));
        assert!(liveness.verdicts(t0, &cluster(&[1, 2]), 1).is_empty());
    }
}
