//! The faults, on a schedule drawn from their own seed stream: crash and
//! restart a broker (between iterations, or part-way through one, at its
//! sync), lose power on several at once, pause one, partition the network
//! (any split, one-way too) and heal it, degrade a link, transfer a
//! leader, and compact logs the way retention does (which sends lagging
//! followers a snapshot). Membership changes are not simulated: the engine
//! does not propose them yet.

use std::collections::BTreeSet;

use shardmq_engine::raft::{RaftLog, CONTROLLER_GROUP};

use super::cluster::{tr, Sim};
use super::net::LinkConfig;

/// Chance (per mille) of a fault at each step.
const FAULT_PER_MILLE: u64 = 120;

impl Sim {
    pub fn nemesis(&mut self) -> Result<(), String> {
        if !self.fault.chance(FAULT_PER_MILLE) {
            return Ok(());
        }
        let n = self.brokers.len();
        let up: Vec<usize> = (0..n).filter(|i| self.brokers[*i].is_up()).collect();
        match self.fault.below(100) {
            0..=13 if !up.is_empty() => {
                let i = *self.fault.pick(&up);
                let keep = self.fault.chance(500);
                let restart_in = self.fault.between(2, 40);
                self.crash(i, keep, restart_in);
            }
            14..=21 if !up.is_empty() => {
                let i = *self.fault.pick(&up);
                let rng = super::rng::Rng::new(self.fault.next_u64());
                self.brokers[i].log.disk().crash_at_next_sync = Some(rng);
                tr!(self, "broker {} will lose power in its next sync", i + 1);
            }
            22..=25 if up.len() >= 2 => {
                let mut victims = up.clone();
                self.fault.shuffle(&mut victims);
                let k = self.fault.between(2, victims.len() as u64) as usize;
                tr!(self, "power loss on {k} brokers");
                for &i in &victims[..k] {
                    let keep = self.fault.chance(500);
                    let restart_in = self.fault.between(1, 25);
                    self.crash(i, keep, restart_in);
                }
            }
            26..=35 => {
                let active: Vec<usize> = (0..n).filter(|i| self.brokers[*i].is_active()).collect();
                if !active.is_empty() {
                    let i = *self.fault.pick(&active);
                    let until = self.step + self.fault.between(3, 35);
                    self.brokers[i].paused_until = Some(until);
                    self.stats.pauses += 1;
                    tr!(self, "broker {} pauses until step {until}", i + 1);
                }
            }
            36..=50 => self.partition(),
            51..=62 => {
                self.net.borrow_mut().heal();
                tr!(self, "network heals");
            }
            63..=70 => {
                let a = self.fault.between(1, n as u64);
                let b = self.fault.between(1, n as u64);
                if a != b {
                    let delay_min = self.fault.between(0, 2);
                    let link = LinkConfig {
                        delay_min,
                        delay_max: delay_min + self.fault.between(0, 8),
                        drop_per_mille: self.fault.between(0, 400),
                        dup_per_mille: self.fault.between(0, 150),
                    };
                    self.net.borrow_mut().links.insert((a, b), link);
                    tr!(self, "link {a}->{b}: {link:?}");
                }
            }
            71..=82 => self.transfer(),
            83..=94 => self.compact(),
            _ => {
                self.net.borrow_mut().links.clear();
                tr!(self, "links back to normal");
            }
        }
        Ok(())
    }

    fn partition(&mut self) {
        let all: Vec<u64> = self.all_nodes_set().into_iter().collect();
        let mut side: BTreeSet<u64> = all
            .iter()
            .copied()
            .filter(|_| self.fault.chance(500))
            .collect();
        if side.is_empty() || side.len() == all.len() {
            side = BTreeSet::from([*self.fault.pick(&all)]);
        }
        let one_way = self.fault.chance(250);
        self.net.borrow_mut().split(&side, &all, one_way);
        self.stats.partitions += 1;
        tr!(
            self,
            "network partition: {side:?} cut from the others{}",
            if one_way {
                " (one way: their messages are lost)"
            } else {
                ""
            }
        );
    }

    /// Asks the leader of a random group to hand over to another replica.
    fn transfer(&mut self) {
        let mut groups = self.groups();
        groups.push(CONTROLLER_GROUP);
        let g = *self.fault.pick(&groups);
        let ids = self.raft_ids(g);
        let leader = ids.iter().find(|(n, _)| {
            let b = self.broker(*n);
            b.is_active()
                && b.run
                    .as_ref()
                    .and_then(|r| r.lp.with_replica(g, |rep| rep.is_leader()))
                    .unwrap_or(false)
        });
        let Some(&(from, _)) = leader else { return };
        let others: Vec<(i32, u64)> = ids.iter().copied().filter(|(n, _)| *n != from).collect();
        if others.is_empty() {
            return;
        }
        let (to, to_id) = *self.fault.pick(&others);
        let run = self.broker(from).run.as_ref().expect("leader is up");
        let _ = run.lp.transfer_leader(g, to_id);
        self.stats.transfers += 1;
        tr!(
            self,
            "group {g:x}: leader transfer from broker {from} to broker {to}"
        );
    }

    /// Retention on a random up broker: every partition drops what Raft
    /// no longer needs (never past the applied index or the watermark).
    fn compact(&mut self) {
        let up: Vec<usize> = (0..self.brokers.len())
            .filter(|i| self.brokers[*i].is_up())
            .collect();
        if up.is_empty() {
            return;
        }
        let i = *self.fault.pick(&up);
        let node = self.brokers[i].node;
        let groups = self.groups_on(node);
        let b = &self.brokers[i];
        let run = b.run.as_ref().expect("up");
        let mut moved = Vec::new();
        for g in groups {
            if g == CONTROLLER_GROUP {
                continue;
            }
            let Some(applied) = run.lp.with_replica(g, |r| r.applied_index()) else {
                continue;
            };
            let keep_from = applied.min(run.visible[&g].index) + 1;
            let first = b.log.first_index(g).expect("partition");
            if keep_from > first && b.log.compact(g, keep_from).is_ok() {
                moved.push((g, keep_from));
            }
        }
        self.stats.compactions += 1;
        tr!(self, "broker {node} applies retention: {moved:x?}");
    }
}
