//! Checking the addresses other nodes announce before they are listed or
//! dialled, and ordering them by preference.
//!
//! An address from the network is a hint, not an instruction: a node must
//! not be talked into dialling a multicast group, port 0 or its own loopback
//! services. The rules are the net crate's, for peer exchange and discovery
//! alike ([`pluresdb_net::exchange::check_address`]).

use std::net::{IpAddr, SocketAddr};

pub(crate) use pluresdb_net::exchange::{check_address, check_socket_address, strip_scheme, AddressRejection};

/// The preference of `address` among a peer's addresses, lower first:
/// routable IPv4 (what a LAN peer most likely reaches), IPv6, link-local
/// IPv4, loopback.
fn preference(address: &SocketAddr) -> u8 {
    match address.ip() {
        ip if ip.is_loopback() => 3,
        IpAddr::V4(v4) if v4.is_link_local() => 2,
        IpAddr::V4(_) => 0,
        IpAddr::V6(_) => 1,
    }
}

/// Sorts `addresses` by preference (then by value, so the order is stable),
/// removes duplicates and keeps at most `limit`.
pub(crate) fn rank(addresses: &mut Vec<SocketAddr>, limit: usize) {
    addresses.sort_by_key(|address| (preference(address), *address));
    addresses.dedup();
    addresses.truncate(limit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicast_addresses_with_a_port_pass_with_or_without_scheme() {
        for text in ["192.0.2.7:34569", "quic://192.0.2.7:34569", "[2001:db8::1]:34569", "quic://[2001:db8::1]:1"] {
            assert!(check_address(text, false).is_ok(), "{text}");
        }
        assert_eq!(check_address("quic://10.1.2.3:9", false), Ok("10.1.2.3:9".parse().unwrap()));
    }

    #[test]
    fn unusable_addresses_are_refused_with_the_reason() {
        let cases = [
            ("", AddressRejection::Unparsable),
            ("example.org:34569", AddressRejection::Unparsable),
            ("192.0.2.7", AddressRejection::Unparsable),
            ("tcp://192.0.2.7:1", AddressRejection::Unparsable),
            ("192.0.2.7:0", AddressRejection::PortZero),
            ("0.0.0.0:34569", AddressRejection::Unspecified),
            ("[::]:34569", AddressRejection::Unspecified),
            ("224.0.0.251:5353", AddressRejection::Multicast),
            ("[ff02::fb]:5353", AddressRejection::Multicast),
            ("255.255.255.255:34569", AddressRejection::Broadcast),
            ("[fe80::1]:34569", AddressRejection::LinkLocalV6),
            ("127.0.0.1:34569", AddressRejection::Loopback),
            ("[::1]:34569", AddressRejection::Loopback),
        ];
        for (text, reason) in cases {
            assert_eq!(check_address(text, false), Err(reason), "{text}");
        }
    }

    #[test]
    fn loopback_passes_only_for_a_node_on_loopback() {
        assert!(check_address("127.0.0.1:34569", true).is_ok());
        assert!(check_address("[::1]:34569", true).is_ok());
        // Everything else is still refused.
        assert_eq!(check_address("127.0.0.1:0", true), Err(AddressRejection::PortZero));
        assert_eq!(check_address("224.0.0.1:1", true), Err(AddressRejection::Multicast));
    }

    #[test]
    fn ranking_prefers_ipv4_dedups_and_bounds() {
        let mut addresses: Vec<SocketAddr> =
            ["127.0.0.1:1", "[2001:db8::1]:1", "169.254.0.9:1", "192.0.2.9:1", "192.0.2.3:1", "192.0.2.3:1"]
                .iter()
                .map(|text| text.parse().unwrap())
                .collect();
        rank(&mut addresses, 4);
        let texts: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["192.0.2.3:1", "192.0.2.9:1", "[2001:db8::1]:1", "169.254.0.9:1"]);
    }
}
