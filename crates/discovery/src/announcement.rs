//! The mDNS announcement format (described in the crate docs): the names
//! this node registers under, the TXT properties it carries, and the
//! parsing of other nodes' announcements into an [`Announcement`].

use crate::peer::LocalPeer;
use pluresdb_net::DiscoveryConfig;
use pluresdb_security::PeerId;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The TXT key of the peer id.
pub(crate) const KEY_PEER_ID: &str = "id";
/// The TXT key of the network tag.
pub(crate) const KEY_NETWORK: &str = "net";
/// The TXT key of the format version.
pub(crate) const KEY_VERSION: &str = "v";
/// The format version this crate announces.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// The longest service type name (`pluresdb` in `_pluresdb._tcp`), as
/// RFC 6763 section 7.2 allows.
const MAX_SERVICE_TYPE_NAME: usize = 15;
/// The longest `service_name`: with `-` and 16 characters of peer id the
/// instance name stays within a 63-byte DNS label.
const MAX_SERVICE_NAME: usize = 40;
/// The longest network tag accepted from others (ours are 16 hex digits).
const MAX_NETWORK_TAG: usize = 64;
/// How many characters of the peer id the instance name carries.
const INSTANCE_ID_CHARS: usize = 16;

/// The DNS names a node registers under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceNames {
    /// The service type with its domain: `_pluresdb._tcp.local.`.
    pub(crate) ty_domain: String,
    /// The instance name: `pluresdb-12D3KooWAbCdEfGh`.
    pub(crate) instance: String,
    /// The host name of the address records: `pluresdb-12D3KooWAbCdEfGh.local.`.
    pub(crate) host: String,
}

/// The service type of `config` with its domain (`_pluresdb._tcp.local.`),
/// after checking it is `_name._tcp` or `_name._udp` (a trailing `.local.`
/// is accepted too).
pub(crate) fn service_type_domain(config: &DiscoveryConfig) -> Result<String, String> {
    let given = config.service_type.as_str();
    let bare = given.strip_suffix(".local.").or_else(|| given.strip_suffix('.')).unwrap_or(given);
    let name = bare.strip_suffix("._tcp").or_else(|| bare.strip_suffix("._udp"));
    let valid = name.and_then(|name| name.strip_prefix('_')).is_some_and(|name| {
        !name.is_empty()
            && name.len() <= MAX_SERVICE_TYPE_NAME
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-')
    });
    if !valid {
        return Err(format!(
            "service type {given:?} is not `_name._tcp` or `_name._udp` with a name of 1 to {MAX_SERVICE_TYPE_NAME} letters, digits or hyphens"
        ));
    }
    Ok(format!("{bare}.local."))
}

/// The names `local` registers under with `config`.
pub(crate) fn service_names(config: &DiscoveryConfig, local: &LocalPeer) -> Result<ServiceNames, String> {
    let ty_domain = service_type_domain(config)?;
    let service_name = config.service_name.as_str();
    if service_name.is_empty() || service_name.len() > MAX_SERVICE_NAME || service_name.chars().any(char::is_control) {
        return Err(format!("service name {service_name:?} must be 1 to {MAX_SERVICE_NAME} bytes without control characters"));
    }
    let id_prefix: String = local.peer_id.chars().take(INSTANCE_ID_CHARS).collect();
    let instance = format!("{service_name}-{id_prefix}");
    // A host name is a DNS label: letters, digits and hyphens.
    let host_label: String = instance.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    Ok(ServiceNames { ty_domain, instance, host: format!("{host_label}.local.") })
}

/// Checks what this node is about to announce.
pub(crate) fn check_local(local: &LocalPeer) -> Result<(), String> {
    if let Err(err) = local.peer_id.parse::<PeerId>() {
        return Err(format!("local peer id {:?} is not a peer id: {err}", local.peer_id));
    }
    if local.port == 0 {
        return Err("local port is 0; announce the port the node listens on".to_owned());
    }
    if !valid_network_tag(&local.network_tag) {
        return Err(format!("network tag {:?} is not at most {MAX_NETWORK_TAG} letters or digits", local.network_tag));
    }
    Ok(())
}

/// The TXT properties announcing `local`.
pub fn txt_properties(local: &LocalPeer) -> Vec<(&'static str, String)> {
    vec![(KEY_PEER_ID, local.peer_id.clone()), (KEY_NETWORK, local.network_tag.clone()), (KEY_VERSION, FORMAT_VERSION.to_string())]
}

fn valid_network_tag(tag: &str) -> bool {
    tag.len() <= MAX_NETWORK_TAG && tag.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Another node's announcement, parsed and checked (its addresses are not
/// checked yet: that depends on whether this node is on loopback).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The service instance's full name, which a withdrawal names.
    pub fullname: String,
    /// The announced peer id (a valid peer id; proven only by dialling).
    pub peer_id: String,
    /// The announced network tag.
    pub network_tag: String,
    /// The announced addresses with the announced port.
    pub addresses: Vec<SocketAddr>,
}

/// Why an announcement was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvalidAnnouncement {
    /// A required TXT property is absent.
    Missing(&'static str),
    /// A TXT property's value is not what the format says.
    Malformed(&'static str),
    /// The port is 0.
    PortZero,
}

impl fmt::Display for InvalidAnnouncement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidAnnouncement::Missing(key) => write!(f, "no `{key}` property"),
            InvalidAnnouncement::Malformed(key) => write!(f, "malformed `{key}` property"),
            InvalidAnnouncement::PortZero => f.write_str("port 0"),
        }
    }
}

impl Announcement {
    /// Parses an announcement from its parts: the instance's full name, the
    /// port and addresses of its SRV and address records, and `txt`, which
    /// looks up a TXT property's value.
    pub fn parse<'a>(
        fullname: &str,
        port: u16,
        ips: impl IntoIterator<Item = IpAddr>,
        txt: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Self, InvalidAnnouncement> {
        let version = txt(KEY_VERSION).ok_or(InvalidAnnouncement::Missing(KEY_VERSION))?;
        if !version.parse::<u32>().is_ok_and(|v| v >= 1) {
            return Err(InvalidAnnouncement::Malformed(KEY_VERSION));
        }
        let peer_id = txt(KEY_PEER_ID).ok_or(InvalidAnnouncement::Missing(KEY_PEER_ID))?;
        if peer_id.parse::<PeerId>().is_err() {
            return Err(InvalidAnnouncement::Malformed(KEY_PEER_ID));
        }
        let network_tag = txt(KEY_NETWORK).ok_or(InvalidAnnouncement::Missing(KEY_NETWORK))?;
        if !valid_network_tag(network_tag) {
            return Err(InvalidAnnouncement::Malformed(KEY_NETWORK));
        }
        if port == 0 {
            return Err(InvalidAnnouncement::PortZero);
        }
        Ok(Self {
            fullname: fullname.to_owned(),
            peer_id: peer_id.to_owned(),
            network_tag: network_tag.to_owned(),
            addresses: ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::peer_id;
    use std::collections::HashMap;

    fn config(service_type: &str) -> DiscoveryConfig {
        DiscoveryConfig { service_type: service_type.to_owned(), ..DiscoveryConfig::default() }
    }

    #[test]
    fn the_default_names_follow_the_format() {
        let id = peer_id(1);
        let names = service_names(&DiscoveryConfig::default(), &LocalPeer::new(id.clone(), 34569, "00ff")).unwrap();
        assert_eq!(names.ty_domain, "_pluresdb._tcp.local.");
        assert_eq!(names.instance, format!("pluresdb-{}", &id[..16]));
        assert_eq!(names.host, format!("pluresdb-{}.local.", &id[..16]));
    }

    #[test]
    fn service_types_are_checked() {
        for ok in ["_pluresdb._tcp", "_pluresdb._udp", "_pluresdb._tcp.local.", "_a-b._tcp."] {
            assert!(service_type_domain(&config(ok)).is_ok(), "{ok}");
        }
        for bad in ["", "pluresdb", "_pluresdb", "pluresdb._tcp", "_._tcp", "_pluresdb._sctp", "_a_b._tcp", "_abcdefghijklmnop._tcp"] {
            assert!(service_type_domain(&config(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_names_are_dns_labels() {
        let local = LocalPeer::new(peer_id(1), 1, "");
        let config = DiscoveryConfig { service_name: "my db".to_owned(), ..DiscoveryConfig::default() };
        let names = service_names(&config, &local).unwrap();
        assert!(names.instance.starts_with("my db-"));
        assert!(names.host.starts_with("my-db-"));
        let long = DiscoveryConfig { service_name: "x".repeat(41), ..DiscoveryConfig::default() };
        assert!(service_names(&long, &local).is_err());
    }

    #[test]
    fn the_local_peer_is_checked() {
        assert!(check_local(&LocalPeer::new(peer_id(1), 34569, "0123abcd")).is_ok());
        assert!(check_local(&LocalPeer::new("not-a-peer-id", 34569, "")).is_err());
        assert!(check_local(&LocalPeer::new(peer_id(1), 0, "")).is_err());
        assert!(check_local(&LocalPeer::new(peer_id(1), 1, "no spaces")).is_err());
    }

    fn parse(properties: &HashMap<&str, String>, port: u16) -> Result<Announcement, InvalidAnnouncement> {
        Announcement::parse("x._pluresdb._tcp.local.", port, ["192.0.2.5".parse().unwrap()], |key| properties.get(key).map(String::as_str))
    }

    #[test]
    fn what_we_announce_parses_back() {
        let local = LocalPeer::new(peer_id(3), 4000, "0123abcd");
        let properties: HashMap<&str, String> = txt_properties(&local).into_iter().collect();
        let announcement = parse(&properties, 4000).unwrap();
        assert_eq!(announcement.peer_id, local.peer_id);
        assert_eq!(announcement.network_tag, "0123abcd");
        assert_eq!(announcement.addresses, ["192.0.2.5:4000".parse().unwrap()]);
    }

    #[test]
    fn incomplete_or_malformed_announcements_are_refused() {
        let good: HashMap<&str, String> = txt_properties(&LocalPeer::new(peer_id(3), 4000, "")).into_iter().collect();
        assert_eq!(parse(&good, 0), Err(InvalidAnnouncement::PortZero));
        for key in [KEY_PEER_ID, KEY_NETWORK, KEY_VERSION] {
            let mut missing = good.clone();
            missing.remove(key);
            assert_eq!(parse(&missing, 1), Err(InvalidAnnouncement::Missing(key)));
        }
        let malformed = [
            (KEY_PEER_ID, "12D3KooWnotreallyapeerid"),
            (KEY_PEER_ID, ""),
            (KEY_NETWORK, "spaces are not a tag"),
            (KEY_VERSION, "0"),
            (KEY_VERSION, "one"),
        ];
        for (key, value) in malformed {
            let mut bad = good.clone();
            bad.insert(key, value.to_owned());
            assert_eq!(parse(&bad, 1), Err(InvalidAnnouncement::Malformed(key)), "{key}={value}");
        }
        // A later version with extra keys still parses.
        let mut later = good.clone();
        later.insert(KEY_VERSION, "2".to_owned());
        later.insert("extra", "x".to_owned());
        assert!(parse(&later, 1).is_ok());
    }
}
