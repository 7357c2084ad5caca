//! Source addresses spread across 127.0.0.0/8.
//!
//! Binding each client socket to `127.S.X.Y:0` gives every address its own
//! ephemeral port range, so one box can open far more than 64K connections to
//! one server port. Each process run starts at a different X.Y so ports left
//! in TIME_WAIT by a previous run (bind(2) never reuses those) are not hit.

use std::net::Ipv4Addr;

use crate::engine::uring::sockaddr_v4;

/// How many sockaddrs stay alive at once: an address handed out for a bind SQE
/// must stay valid until the kernel issues it, and a slot is reused only after
/// this many further addresses have been handed out.
const LIVE_ADDRS: usize = 4096;

pub struct SourceAddrs {
    second_octet: u8,
    per_addr: u32,
    start: u32,
    used: u64,
    table: Box<[libc::sockaddr_in]>,
}

impl SourceAddrs {
    /// Addresses `127.<second_octet>.X.Y`, `per_addr` connections on each.
    pub fn new(second_octet: u8, per_addr: u32) -> Self {
        // Nanoseconds of the wall clock are a cheap, good-enough spread per run.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).wrapping_mul(2_654_435_761))
            .unwrap_or(0)
            ^ std::process::id().wrapping_mul(40503);
        let zero = sockaddr_v4(Ipv4Addr::UNSPECIFIED, 0);
        Self {
            second_octet,
            per_addr: per_addr.max(1),
            start: seed & 0xffff,
            used: 0,
            table: vec![zero; LIVE_ADDRS].into_boxed_slice(),
        }
    }

    /// The address for the next connection (moves on every `per_addr` calls).
    pub fn next(&mut self) -> &libc::sockaddr_in {
        let idx = self.used / self.per_addr as u64;
        self.used += 1;
        self.slot(idx)
    }

    fn slot(&mut self, idx: u64) -> &libc::sockaddr_in {
        // X.Y over 1..=65534 (skip .0.0 and .255.255 for readability).
        let xy = ((self.start as u64 + idx) % 65534 + 1) as u32;
        let ip = Ipv4Addr::from(0x7f00_0000 | (self.second_octet as u32) << 16 | xy);
        let i = (idx as usize) % LIVE_ADDRS;
        self.table[i] = sockaddr_v4(ip, 0);
        &self.table[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(sa: &libc::sockaddr_in) -> Ipv4Addr {
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))
    }

    #[test]
    fn addresses_change_every_per_addr_connections_and_stay_in_loopback() {
        let mut a = SourceAddrs::new(7, 3);
        let first: Vec<Ipv4Addr> = (0..6).map(|_| ip(a.next())).collect();
        assert_eq!(first[0], first[2]);
        assert_ne!(first[2], first[3]);
        assert_eq!(first[3], first[5]);
        for x in first {
            assert_eq!(x.octets()[0], 127);
            assert_eq!(x.octets()[1], 7);
        }
    }
}
