//! The run's trace: one line per notable event, stamped with the simulated
//! time and step. The last lines are kept for the failure report; with
//! `SHARDMQ_SIM_TRACE=1` every line is printed as it happens. A digest of
//! every line tells two runs of one seed apart, or proves them equal.

use std::collections::VecDeque;

/// Lines kept for a failure report.
pub const TRACE_LINES_KEPT: usize = 3000;

#[derive(Debug)]
pub struct Trace {
    ring: VecDeque<String>,
    print_all: bool,
    /// FNV-1a over every line.
    digest: u64,
    lines: u64,
    pub now_ms: u64,
    pub step: u64,
}

impl Trace {
    pub fn new(print_all: bool) -> Trace {
        Trace {
            ring: VecDeque::with_capacity(TRACE_LINES_KEPT),
            print_all,
            digest: 0xcbf2_9ce4_8422_2325,
            lines: 0,
            now_ms: 0,
            step: 0,
        }
    }

    pub fn event(&mut self, what: std::fmt::Arguments<'_>) {
        let line = format!(
            "{:>5}.{:03}s step {:>5}  {what}",
            self.now_ms / 1000,
            self.now_ms % 1000,
            self.step
        );
        for b in line.as_bytes() {
            self.digest ^= u64::from(*b);
            self.digest = self.digest.wrapping_mul(0x0100_0000_01b3);
        }
        self.lines += 1;
        if self.print_all {
            eprintln!("{line}");
        }
        if self.ring.len() == TRACE_LINES_KEPT {
            self.ring.pop_front();
        }
        self.ring.push_back(line);
    }

    pub fn digest(&self) -> u64 {
        self.digest
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The kept lines, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.ring.iter().cloned().collect()
    }
}
