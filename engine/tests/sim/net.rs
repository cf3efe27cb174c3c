//! The simulated network: nodes exchange Raft messages over directed
//! links, each with a delay range, a loss rate and a duplication rate; a
//! link or a node can be cut (partitions of any shape, one-way included)
//! and healed. Time is counted in delivery rounds. Every decision is drawn
//! from one seeded generator, and messages due in the same round are
//! delivered in the order they were sent, so a run replays exactly.
//! Messages overtake each other whenever their delays differ (reordering).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use shardmq_engine::raft::eraftpb::Message;
use shardmq_storage::PartitionId;

use super::rng::Rng;

/// A node of the network (a broker, or in the single-group helpers a raft
/// id).
pub type Node = u64;

/// How one directed link behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkConfig {
    /// Messages take between `delay_min` and `delay_max` rounds.
    pub delay_min: u64,
    pub delay_max: u64,
    /// Chance (per mille) that a message is lost.
    pub drop_per_mille: u64,
    /// Chance (per mille) that a message is delivered twice.
    pub dup_per_mille: u64,
}

/// A message handed to the network.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub from: Node,
    pub to: Node,
    pub group: PartitionId,
    pub msg: Message,
}

/// The network between nodes.
#[derive(Debug)]
pub struct SimNet {
    pub rng: Rng,
    /// Current time in delivery rounds.
    pub now: u64,
    /// How links without an entry in `links` behave.
    pub default_link: LinkConfig,
    /// Links that behave otherwise, by (from, to).
    pub links: BTreeMap<(Node, Node), LinkConfig>,
    /// Nodes cut off from every other node, both ways.
    pub isolated: BTreeSet<Node>,
    /// Directed links that deliver nothing: (from, to).
    pub cut: BTreeSet<(Node, Node)>,
    /// Nodes that are not running: what is sent to them is lost.
    pub down: BTreeSet<Node>,
    /// In flight, by (due round, send sequence).
    queue: BTreeMap<(u64, u64), Delivery>,
    seq: u64,
    /// Destinations a node could not reach since it last asked.
    unreachable: BTreeMap<Node, BTreeSet<Node>>,
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
}

impl SimNet {
    /// A shared network (the single-group helpers of `raft_common`).
    #[allow(dead_code)]
    pub fn new(seed: u64) -> Rc<RefCell<SimNet>> {
        Rc::new(RefCell::new(SimNet::with_rng(Rng::new(seed))))
    }

    pub fn with_rng(rng: Rng) -> SimNet {
        SimNet {
            rng,
            now: 0,
            default_link: LinkConfig::default(),
            links: BTreeMap::new(),
            isolated: BTreeSet::new(),
            cut: BTreeSet::new(),
            down: BTreeSet::new(),
            queue: BTreeMap::new(),
            seq: 0,
            unreachable: BTreeMap::new(),
            sent: 0,
            dropped: 0,
            duplicated: 0,
        }
    }

    /// Whether nothing goes from `a` to `b`.
    pub fn is_cut(&self, a: Node, b: Node) -> bool {
        a != b
            && (self.isolated.contains(&a)
                || self.isolated.contains(&b)
                || self.cut.contains(&(a, b)))
    }

    /// Removes every partition (links keep their quality).
    pub fn heal(&mut self) {
        self.isolated.clear();
        self.cut.clear();
    }

    /// Cuts every link between the nodes of `side` and the others, both
    /// ways (one-way when `one_way`: only from `side` to the others).
    pub fn split(&mut self, side: &BTreeSet<Node>, all: &[Node], one_way: bool) {
        for &a in side {
            for &b in all {
                if !side.contains(&b) {
                    self.cut.insert((a, b));
                    if !one_way {
                        self.cut.insert((b, a));
                    }
                }
            }
        }
    }

    pub fn link(&self, from: Node, to: Node) -> LinkConfig {
        self.links
            .get(&(from, to))
            .copied()
            .unwrap_or(self.default_link)
    }

    /// Hands a message to the network.
    pub fn submit(&mut self, from: Node, to: Node, group: PartitionId, msg: Message) {
        self.sent += 1;
        if self.is_cut(from, to) || self.down.contains(&to) {
            self.dropped += 1;
            self.unreachable.entry(from).or_default().insert(to);
            return;
        }
        let link = self.link(from, to);
        if self.rng.chance(link.drop_per_mille) {
            self.dropped += 1;
            return;
        }
        // No draw for a feature a link does not use, so runs that never
        // duplicate draw the same sequence as before duplication existed.
        let copies = if link.dup_per_mille > 0 && self.rng.chance(link.dup_per_mille) {
            self.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if link.delay_max > link.delay_min {
                self.rng.between(link.delay_min, link.delay_max)
            } else {
                link.delay_min
            };
            let d = Delivery {
                from,
                to,
                group,
                msg: msg.clone(),
            };
            self.seq += 1;
            self.queue.insert((self.now + delay, self.seq), d);
        }
    }

    /// Takes the messages due now, in (due, send) order; those whose link
    /// was cut, or whose destination went down, while they were in flight
    /// are lost.
    pub fn take_due(&mut self) -> Vec<Delivery> {
        let mut due = Vec::new();
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let d = entry.remove();
            if self.is_cut(d.from, d.to) || self.down.contains(&d.to) {
                self.dropped += 1;
                continue;
            }
            due.push(d);
        }
        due
    }

    /// Destinations `from` could not reach since the last call (a cut link
    /// or a node that is down, as a real connection would report).
    pub fn take_unreachable(&mut self, from: Node) -> Vec<Node> {
        self.unreachable
            .remove(&from)
            .map(|s| s.into_iter().collect())
            .unwrap_or_default()
    }
}
