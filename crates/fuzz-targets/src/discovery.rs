//! mDNS announcements of other nodes (`Announcement::parse`): TXT
//! properties, a port and addresses, as anyone on the LAN can send them.

use crate::alloc::within_bound;
use pluresdb_discovery::{txt_properties, Announcement, LocalPeer};
use std::net::IpAddr;

/// An announcement as text: two bytes of port, then lines: the instance
/// name, comma-separated addresses, and `key=value` TXT properties (the
/// first of a key counts, as mdns-sd looks them up). What parses names a
/// valid peer id and the announced port on every address, and announcing
/// the same peer and network parses back to the same.
pub fn check_announcement(input: &[u8]) {
    let [high, low, rest @ ..] = input else { return };
    let port = u16::from_be_bytes([*high, *low]);
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let mut lines = text.split('\n');
    let fullname = lines.next().unwrap_or_default();
    let ips: Vec<IpAddr> = lines.next().unwrap_or_default().split(',').filter_map(|ip| ip.trim().parse().ok()).collect();
    let properties: Vec<(&str, &str)> = lines.filter_map(|line| line.split_once('=')).collect();
    let txt = |key: &str| properties.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let Ok(announcement) = within_bound("Announcement::parse", input, || Announcement::parse(fullname, port, ips.clone(), txt)) else {
        return;
    };
    assert!(announcement.peer_id.parse::<pluresdb_security::PeerId>().is_ok(), "an announcement with an invalid peer id parsed");
    assert_eq!(announcement.addresses.len(), ips.len());
    assert!(announcement.addresses.iter().all(|a| a.port() == port && a.port() != 0));
    let local = LocalPeer::new(announcement.peer_id.clone(), port, announcement.network_tag.clone());
    let ours = txt_properties(&local);
    let again = Announcement::parse(fullname, port, ips, |key| ours.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str()));
    assert_eq!(again.as_ref(), Ok(&announcement), "announcing a parsed announcement's peer parses differently");
}

/// Seeds for [`check_announcement`]: what a node announces.
pub fn announcement_seeds() -> Vec<Vec<u8>> {
    let peer_id = pluresdb_security::Identity::from_seed([6; 32]).peer_id().to_string();
    let local = LocalPeer::new(peer_id.clone(), 34569, "0123456789abcdef");
    let properties: String = txt_properties(&local).iter().map(|(k, v)| format!("\n{k}={v}")).collect();
    let name = format!("pluresdb-{}._pluresdb._tcp.local.", &peer_id[..16]);
    vec![
        [&34569u16.to_be_bytes()[..], format!("{name}\n192.0.2.5,fe80::1{properties}").as_bytes()].concat(),
        [&1u16.to_be_bytes()[..], format!("{name}\n{properties}\nextra=x").as_bytes()].concat(),
    ]
}
