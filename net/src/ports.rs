//! Free ports on 127.0.0.1 for servers a process starts itself (the test
//! suites' brokers, the benchmark harness's brokers and peers).
//!
//! A port is picked below the kernel's ephemeral range (32768 and up): a
//! broker binds its client ports with SO_REUSEPORT, so a port the kernel
//! handed to another process for port 0 could be shared with it silently.
//! Each process takes its own block of ports, by pid, within a range its
//! caller names (the test suites and the harness use ranges apart), and
//! hands each out once before it wraps.

use std::sync::atomic::{AtomicU16, Ordering};

/// Whether `port` on 127.0.0.1 can be bound the way the broker binds it:
/// without SO_REUSEADDR (glommio sets only SO_REUSEPORT), so a port that a
/// connection of an earlier server still holds in TIME_WAIT counts as
/// taken. std's `TcpListener::bind` sets SO_REUSEADDR and would miss it.
pub fn bindable_as_server(port: u16) -> bool {
    let Ok(socket) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
    else {
        return false;
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    socket.bind(&addr.into()).is_ok()
}

/// Blocks of ports: `blocks` blocks of `block` ports from `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub base: u16,
    pub block: u16,
    pub blocks: u16,
}

impl PortRange {
    /// The first port of this process's block.
    pub fn block_start(&self) -> u16 {
        self.base + (std::process::id() % u32::from(self.blocks.max(1))) as u16 * self.block
    }

    /// The ports of this range, `base..end`.
    pub fn end(&self) -> u16 {
        self.base + self.block * self.blocks
    }

    /// A port of this process's block that is free now, trying each port
    /// of the block at most once; `None` when every one is taken.
    pub fn free_port(&self) -> Option<u16> {
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let start = self.block_start();
        (0..self.block)
            .map(|_| start + NEXT.fetch_add(1, Ordering::Relaxed) % self.block)
            .find(|port| bindable_as_server(*port))
    }
}

/// The range the test suites' servers take ports from: 20,000 to 32,000,
/// 120 blocks of 100.
pub const TEST_PORTS: PortRange = PortRange {
    base: 20_000,
    block: 100,
    blocks: 120,
};

/// A free port for a test's server ([`TEST_PORTS`]); panics when this
/// process's block is exhausted.
pub fn test_port() -> u16 {
    TEST_PORTS.free_port().unwrap_or_else(|| {
        let start = TEST_PORTS.block_start();
        panic!("no free port in {start}..{}", start + TEST_PORTS.block)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_within_the_block_and_below_the_ephemeral_range() {
        let range = PortRange {
            base: 21_000,
            block: 50,
            blocks: 10,
        };
        let a = range.free_port().unwrap();
        let b = range.free_port().unwrap();
        assert_ne!(a, b);
        let start = range.block_start();
        for port in [a, b] {
            assert!(
                (start..start + 50).contains(&port),
                "{port} outside {start}.."
            );
            assert!(port < range.end() && range.end() <= 32_768);
        }
    }

    #[test]
    fn a_bound_port_is_not_bindable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!bindable_as_server(port));
    }
}
