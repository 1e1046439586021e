//! [`HandshakeBudget`]: which incoming connections (or sync streams) may
//! start a handshake.
//!
//! A connection costs the node state from its first packet until it is
//! admitted (the transport's handshake, then the hello and proof) or
//! dropped, and before admission it has proven nothing. So handshakes in
//! flight have their own small budget, apart from `max_connections` (which
//! admitted links and this node's own dials share, so an outsider's
//! handshakes never take a dial's room), and within it:
//!
//! - **Address validation under load.** Once a quarter of the budget is in
//!   use, a client that has not proven it receives at its source address
//!   must prove it first ([`Admission::Retry`]; QUIC sends a Retry, a
//!   stateless token the client must echo). A flood from spoofed addresses
//!   then costs the node one packet each and holds no slot; an honest
//!   client pays one round trip. Transports whose connections are proven
//!   before they reach the budget (TCP, or a libp2p stream on an
//!   established connection) ask with `validated` true.
//! - **Per address.** At most `per_ip` handshakes from one [`Source`]: an
//!   IPv4 address or IPv6 /64 (the block one host or subscriber typically
//!   has), or the one shared bucket of connections without an IP address.
//! - **Eviction, not lock-out.** When the budget is full, a newcomer takes
//!   the slot of the oldest handshake of the address holding the most
//!   slots, if that address holds more than the newcomer's; otherwise the
//!   newcomer is refused. Filling the budget for long thus takes as many
//!   source addresses as the budget has slots, each of them validated.
//!
//! Sans-IO and transport-independent: the engine (QUIC's accept loop, the
//! libp2p engine's sync streams) asks, acts on the answer, and releases
//! each slot when its handshake ends.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};

/// What to do with an incoming connection attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Start the handshake under slot `id`; first abort the handshake in
    /// slot `evict`, if any (its slot is already free).
    Accept {
        /// The new handshake's slot.
        id: u64,
        /// An older handshake that gives up its slot.
        evict: Option<u64>,
    },
    /// The client must first prove it receives at its source address
    /// (QUIC: answer with a Retry), then ask again with `validated`.
    Retry,
    /// Refuse without a handshake (QUIC: `CONNECTION_REFUSED`; libp2p: an
    /// `error` frame `too_many_connections` on the stream).
    Refuse(Refusal),
}

/// Why an incoming connection was refused before its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its address already has `per_ip` handshakes in flight.
    AddressBusy,
    /// The budget is full and no address holds more slots than this one.
    Full,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::AddressBusy => "too many handshakes in flight from this address",
            Refusal::Full => "too many handshakes in flight",
        })
    }
}

/// The budget of incoming handshakes in flight. Slots are numbered in the
/// order they were given, so the smallest number is the oldest.
#[derive(Debug)]
pub struct HandshakeBudget {
    limit: usize,
    per_ip: usize,
    retry_from: usize,
    next_id: u64,
    in_flight: BTreeMap<u64, Source>,
    per_address: HashMap<Source, usize>,
}

/// Where a handshake comes from, as the per-address limit counts it: an
/// IPv4 address, or the /64 of an IPv6 one (IPv4-mapped IPv6 addresses
/// count as IPv4); or, for a connection whose address has no IP at all,
/// one bucket that all of them share (they get one address's share
/// together, not one each: nothing tells them apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address or an IPv6 /64.
    Ip(IpAddr),
    /// No IP address is known.
    Unaddressed,
}

impl Source {
    /// The source of a connection from `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::Ip(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Source::Ip(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        Source::of(ip)
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Ip(ip) => write!(f, "{ip}"),
            Source::Unaddressed => f.write_str("no IP address"),
        }
    }
}

impl HandshakeBudget {
    /// A budget of `limit` handshakes in flight (at least 1), at most
    /// `per_ip` (at least 1) from one address, sending unvalidated clients a
    /// Retry once a quarter of it is in use.
    pub fn new(limit: usize, per_ip: usize) -> Self {
        let limit = limit.max(1);
        Self {
            limit,
            per_ip: per_ip.max(1),
            retry_from: (limit / 4).max(1),
            next_id: 0,
            in_flight: BTreeMap::new(),
            per_address: HashMap::new(),
        }
    }

    /// How many handshakes are in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// How many handshakes from `source` are in flight.
    pub fn in_flight_from(&self, source: impl Into<Source>) -> usize {
        self.per_address.get(&source.into()).copied().unwrap_or(0)
    }

    /// Decides on a connection attempt from `source` (an [`IpAddr`] or a
    /// [`Source`]); `validated` is whether the client proved its address
    /// (it echoed a Retry token, or its transport proved it). With
    /// `may_evict` false (a connection the node will only refuse with a
    /// reason) no other handshake gives way to it.
    pub fn admit(&mut self, source: impl Into<Source>, validated: bool, may_evict: bool) -> Admission {
        let key = source.into();
        if !validated && self.in_flight.len() >= self.retry_from {
            return Admission::Retry;
        }
        let from_here = self.per_address.get(&key).copied().unwrap_or(0);
        if from_here >= self.per_ip {
            // A spoofer cannot come back with the token; the real owner of
            // the address can.
            return if validated { Admission::Refuse(Refusal::AddressBusy) } else { Admission::Retry };
        }
        let mut evict = None;
        if self.in_flight.len() >= self.limit {
            if !validated {
                return Admission::Retry;
            }
            match self.victim(from_here).filter(|_| may_evict) {
                Some(victim) => {
                    self.release(victim);
                    evict = Some(victim);
                }
                None => return Admission::Refuse(Refusal::Full),
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        self.in_flight.insert(id, key);
        *self.per_address.entry(key).or_insert(0) += 1;
        Admission::Accept { id, evict }
    }

    /// Frees slot `id` (its handshake ended, or it was evicted); a slot
    /// already free is ignored.
    pub fn release(&mut self, id: u64) {
        let Some(key) = self.in_flight.remove(&id) else { return };
        if let Some(count) = self.per_address.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&key);
            }
        }
    }

    /// The oldest handshake of the address holding the most slots, if that
    /// address holds more than `newcomer_count`.
    fn victim(&self, newcomer_count: usize) -> Option<u64> {
        let most = self.per_address.values().copied().max()?;
        if most <= newcomer_count {
            return None;
        }
        self.in_flight.iter().find(|(_, key)| self.per_address.get(key) == Some(&most)).map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn accepted(admission: Admission) -> (u64, Option<u64>) {
        match admission {
            Admission::Accept { id, evict } => (id, evict),
            other => panic!("expected Accept, got {other:?}"),
        }
    }

    #[test]
    fn unvalidated_clients_are_sent_a_retry_once_a_quarter_is_in_use() {
        let mut budget = HandshakeBudget::new(8, 8);
        let (first, _) = accepted(budget.admit(ip("192.0.2.1"), false, true));
        accepted(budget.admit(ip("192.0.2.2"), false, true));
        assert_eq!(budget.admit(ip("192.0.2.3"), false, true), Admission::Retry);
        // The same client, back with the token, is let in.
        accepted(budget.admit(ip("192.0.2.3"), true, true));
        assert_eq!(budget.in_flight(), 3);
        budget.release(first);
        budget.release(first);
        assert_eq!(budget.in_flight(), 2);
    }

    #[test]
    fn one_address_holds_at_most_its_share() {
        let mut budget = HandshakeBudget::new(16, 2);
        accepted(budget.admit(ip("192.0.2.1"), true, true));
        accepted(budget.admit(ip("::ffff:192.0.2.1"), true, true));
        assert_eq!(budget.admit(ip("192.0.2.1"), true, true), Admission::Refuse(Refusal::AddressBusy));
        assert_eq!(budget.admit(ip("192.0.2.1"), false, true), Admission::Retry, "maybe spoofed: the owner may prove it");
        // IPv6 counts by /64.
        accepted(budget.admit(ip("2001:db8:1:2::1"), true, true));
        accepted(budget.admit(ip("2001:db8:1:2::ffff"), true, true));
        assert_eq!(budget.admit(ip("2001:db8:1:2:abcd::9"), true, true), Admission::Refuse(Refusal::AddressBusy));
        accepted(budget.admit(ip("2001:db8:1:3::1"), true, true));
    }

    #[test]
    fn a_full_budget_evicts_the_oldest_of_the_busiest_address_never_a_lone_one() {
        let mut budget = HandshakeBudget::new(4, 4);
        let (a1, _) = accepted(budget.admit(ip("192.0.2.1"), true, true));
        let (b1, _) = accepted(budget.admit(ip("192.0.2.2"), true, true));
        let (a2, _) = accepted(budget.admit(ip("192.0.2.1"), true, true));
        let (c1, _) = accepted(budget.admit(ip("192.0.2.3"), true, true));
        // Full: a newcomer takes the slot of the busiest address's oldest.
        let (d1, evicted) = accepted(budget.admit(ip("192.0.2.4"), true, true));
        assert_eq!(evicted, Some(a1));
        // Now every address holds one: the oldest of them gives way to an
        // address that holds none...
        let (_, evicted) = accepted(budget.admit(ip("192.0.2.5"), true, true));
        assert_eq!(evicted, Some(b1));
        // ...but not to one that already holds one.
        assert_eq!(budget.admit(ip("192.0.2.5"), true, true), Admission::Refuse(Refusal::Full));
        // Unvalidated clients are never let in over a full budget.
        assert_eq!(budget.admit(ip("192.0.2.9"), false, true), Admission::Retry);
        // A connection the node will only refuse does not evict.
        assert_eq!(budget.admit(ip("192.0.2.9"), true, false), Admission::Refuse(Refusal::Full));
        assert_eq!(budget.in_flight(), 4);
        for id in [a2, c1, d1] {
            budget.release(id);
        }
        assert_eq!(budget.in_flight(), 1);
    }

    #[test]
    fn connections_without_an_ip_share_one_address_s_share() {
        let mut budget = HandshakeBudget::new(16, 2);
        accepted(budget.admit(Source::Unaddressed, true, true));
        accepted(budget.admit(Source::Unaddressed, true, true));
        assert_eq!(budget.admit(Source::Unaddressed, true, true), Admission::Refuse(Refusal::AddressBusy));
        assert_eq!(budget.in_flight_from(Source::Unaddressed), 2);
        // They are not counted against any IP address.
        accepted(budget.admit(ip("192.0.2.1"), true, true));
        assert_eq!(budget.in_flight_from(ip("192.0.2.1")), 1);
    }
}
