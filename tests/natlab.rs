//! Through NATs, in the network lab (`tests/netlab/mod.rs`, [`Lab::nat`]):
//! a relay on the public segment (`serve --relay`), members on private
//! LANs behind routers that masquerade them (cone NAT), map each flow to
//! a random port (symmetric NAT) or drop their UDP, and a stranger of
//! another network. Real `pluresdb serve` processes; every wait has a
//! deadline.
//!
//! They need root and iproute2, nftables and ping; elsewhere each test says
//! it is skipped and returns (with `CI=true` as root it fails instead).

#[path = "netlab/mod.rs"]
mod netlab;

use netlab::{api_get, Lab, Nat};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How long a step (a reservation, a link, a write crossing) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// A counter or gauge of `host`'s `/metrics`.
fn metric(lab: &Lab, host: usize, name: &str) -> u64 {
    let text = api_get(lab, host, "/metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("h{host}: no {name} in /metrics:\n{text}"))
}

/// Waits until `host` listens through a relay; returns those addresses.
fn wait_relayed_addresses(lab: &Lab, host: usize) -> Vec<String> {
    lab.wait_until(STEP_TIMEOUT, &format!("h{host} holds a reservation on the relay"), || {
        let doc: Value = serde_json::from_str(&api_get(lab, host, "/network")).map_err(|e| e.to_string())?;
        let relayed: Vec<String> = doc["listen_addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|a| a.contains("/p2p-circuit"))
            .map(str::to_owned)
            .collect();
        if relayed.is_empty() {
            Err(format!("listen addresses: {}", doc["listen_addresses"]))
        } else {
            Ok(relayed)
        }
    })
}

/// `host`'s entry for `peer` in `pluresdb peers`, once connected.
fn connected_entry(lab: &Lab, host: usize, peer: &str) -> Result<Value, String> {
    let doc = lab.host(host).peers();
    doc["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["peer_id"] == peer && p["connected"] == true)
        .cloned()
        .ok_or_else(|| format!("h{host} is not connected to {peer}: {doc}"))
}

/// Waits until `host` holds `id` with `value`.
fn wait_holds(lab: &Lab, host: usize, id: &str, value: &Value) {
    lab.wait_until(STEP_TIMEOUT, &format!("h{host} holds {id}"), || match lab.host(host).get(id) {
        Some(found) if found == *value => Ok(()),
        other => Err(format!("{other:?}")),
    });
}

/// Whether `host`'s log has a line with every one of `words`.
fn logged(lab: &Lab, host: usize, words: &[&str]) -> bool {
    let text = std::fs::read_to_string(&lab.host(host).log_path).unwrap_or_default();
    text.lines().any(|line| words.iter().all(|word| line.contains(word)))
}

/// The public segment's relay h0, member h1 behind the first router
/// (reserved on h0), and member h2 behind the second, joined with h1's
/// ticket (its private addresses, which h2 cannot reach, and its addresses
/// through h0). Returns the lab once h2 is linked with h1, and how long
/// that took from h2's start, and from there to h1's first write on h2.
fn two_members_behind(first: Nat, second: Nat) -> (Lab, Duration, Duration) {
    let mut lab = Lab::nat(1, &[first, second], 1);
    lab.host_mut(0).start(&["--relay", "--no-mdns"]);
    let relay_ticket = lab.host(0).ticket();
    lab.host_mut(1).start(&["--no-mdns", "--join", &relay_ticket]);
    let relayed = wait_relayed_addresses(&lab, 1);
    let relay = lab.host(0).peer_id();
    assert!(relayed.iter().all(|a| a.contains(&format!("/p2p/{relay}/p2p-circuit"))), "{relayed:?}");
    let ticket = lab.host(1).ticket();
    let started = Instant::now();
    lab.host_mut(2).start(&["--no-mdns", "--join", &ticket]);
    let h1 = lab.host(1).peer_id();
    lab.wait_until(STEP_TIMEOUT, "h2 is linked with h1", || connected_entry(&lab, 2, &h1).map(drop));
    let linked = started.elapsed();
    lab.host(1).put("h1:first", &json!({"from": 1}));
    let written = Instant::now();
    wait_holds(&lab, 2, "h1:first", &json!({"from": 1}));
    (lab, linked, written.elapsed())
}

/// Writes on each side reach the other.
fn sync_both_ways(lab: &Lab, tag: &str) {
    lab.host(1).put(&format!("{tag}:h1"), &json!({"by": 1}));
    lab.host(2).put(&format!("{tag}:h2"), &json!({"by": 2}));
    wait_holds(lab, 2, &format!("{tag}:h1"), &json!({"by": 1}));
    wait_holds(lab, 1, &format!("{tag}:h2"), &json!({"by": 2}));
}

/// The routers behave as their recipes say: each LAN reaches the public
/// segment, the public segment reaches neither the LANs nor the routers,
/// and one LAN cannot reach another's hosts.
#[test]
fn nat_lab_routers_masquerade_their_lans_and_let_nothing_in() {
    if !netlab::supported() {
        return;
    }
    let lab = Lab::nat(1, &[Nat::Cone, Nat::Symmetric, Nat::UdpBlocked], 1);
    let id = lab.id().to_owned();
    assert_eq!(netlab::live_namespaces(&id).len(), 1 + 1 + 3 * 2, "switch, public host, three routers and their hosts");
    let public = lab.host(0).address;
    for host in 1..=3 {
        assert!(lab.host(host).ping(public), "h{host} cannot reach the public segment");
        assert!(!lab.host(0).ping(lab.host(host).address), "the public segment reaches h{host}'s private address");
        assert!(!lab.host(0).ping(netlab::nat_router_public_address(host - 1)), "router {} answers the public segment", host - 1);
    }
    assert!(!lab.host(1).ping(lab.host(2).address), "one private LAN reaches another");
    assert!(Nat::Symmetric.ruleset("eth0", "eth1").contains("masquerade random"));
    assert!(Nat::UdpBlocked.ruleset("eth0", "eth1").contains("meta l4proto udp drop"));
    drop(lab);
    assert!(netlab::live_namespaces(&id).is_empty(), "the lab left namespaces behind");
}

/// Both members behind cone NATs: they meet through the relay, sync, and
/// end on a direct (hole-punched) connection, which `pluresdb peers` shows
/// without a relay and `/metrics` counts as an upgrade.
#[test]
#[cfg_attr(not(feature = "libp2p"), ignore = "needs the libp2p feature (relays and hole punching)")]
fn members_behind_cone_nats_sync_and_end_on_a_direct_connection() {
    if !netlab::supported() {
        return;
    }
    let (lab, linked, first_write) = two_members_behind(Nat::Cone, Nat::Cone);
    let h1 = lab.host(1).peer_id();
    let entry = lab.wait_until(STEP_TIMEOUT, "h2's connection to h1 is direct", || {
        let entry = connected_entry(&lab, 2, &h1)?;
        if entry["relay"].is_null() && entry["transport"] == "libp2p" {
            Ok(entry)
        } else {
            Err(format!("{entry}"))
        }
    });
    assert!(!entry["address"].as_str().unwrap_or_default().contains("/p2p-circuit"), "{entry}");
    assert!(metric(&lab, 1, "pluresdb_relay_upgrades_total") + metric(&lab, 2, "pluresdb_relay_upgrades_total") >= 1);
    sync_both_ways(&lab, "direct");
    // Both learned from AutoNAT (the relay dialling them back, which their
    // routers drop) that they are not reachable from outside, and the relay
    // accepted both reservations.
    for host in [1, 2] {
        lab.wait_until(STEP_TIMEOUT, &format!("h{host} learns it is behind a NAT"), || {
            match (metric(&lab, host, "pluresdb_reachability_private"), metric(&lab, host, "pluresdb_reachability_public")) {
                (1, 0) => Ok(()),
                other => Err(format!("(private, public) = {other:?}")),
            }
        });
    }
    assert!(metric(&lab, 0, "pluresdb_relay_reservations_accepted_total") >= 2, "the relay accepted both reservations");
    eprintln!(
        "netlab: cone/cone: linked {} ms after h2 started, first write crossed in {} ms; ended direct at {}",
        linked.as_millis(),
        first_write.as_millis(),
        entry["address"]
    );
}

/// One member behind a symmetric NAT: hole punching cannot work (its port
/// toward the other member is not the one the relay saw), so they sync
/// through the relay, both ways, and `pluresdb peers` names the relay.
#[test]
#[cfg_attr(not(feature = "libp2p"), ignore = "needs the libp2p feature (relays and hole punching)")]
fn a_member_behind_a_symmetric_nat_syncs_through_the_relay_both_ways() {
    if !netlab::supported() {
        return;
    }
    let (lab, linked, first_write) = two_members_behind(Nat::Cone, Nat::Symmetric);
    let (relay, h1) = (lab.host(0).peer_id(), lab.host(1).peer_id());
    let entry = connected_entry(&lab, 2, &h1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entry["relay"], relay.as_str(), "h2 reaches h1 through the relay: {entry}");
    sync_both_ways(&lab, "relayed");
    let entry = connected_entry(&lab, 2, &h1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entry["relay"], relay.as_str(), "still through the relay after syncing: {entry}");
    eprintln!(
        "netlab: cone/symmetric: linked {} ms after h2 started, first write crossed in {} ms",
        linked.as_millis(),
        first_write.as_millis()
    );
}

/// One member's router drops its UDP: it reaches the relay over TCP (or
/// WebSocket), and syncs with the other member through the relay.
#[test]
#[cfg_attr(not(feature = "libp2p"), ignore = "needs the libp2p feature (relays and hole punching)")]
fn a_member_whose_udp_is_blocked_syncs_through_the_relay_over_tcp() {
    if !netlab::supported() {
        return;
    }
    let (lab, linked, first_write) = two_members_behind(Nat::Cone, Nat::UdpBlocked);
    let (relay, h1, h2) = (lab.host(0).peer_id(), lab.host(1).peer_id(), lab.host(2).peer_id());
    // The relay (root in its namespace) also has its WebSocket on 443.
    let https = format!("/ip4/{}/tcp/443/ws/p2p/{relay}", lab.host(0).address);
    assert!(
        lab.host(0).started()["listen"].as_array().is_some_and(|l| l.iter().any(|a| *a == https.as_str())),
        "{}",
        lab.host(0).started()
    );
    // h2's link with the relay is TCP (plain or WebSocket): UDP never left.
    let to_relay = connected_entry(&lab, 2, &relay).unwrap_or_else(|e| panic!("{e}"));
    let address = to_relay["address"].as_str().unwrap_or_default().to_owned();
    assert!(address.contains("/tcp/") && !address.contains("/quic"), "h2 reaches the relay over TCP: {to_relay}");
    // h1 was first reached by h2 through the relay.
    lab.wait_until(STEP_TIMEOUT, "h1 logs h2 reaching it through the relay", || {
        if logged(&lab, 1, &["reached this node through a relay", &h2]) {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    });
    sync_both_ways(&lab, "udp-blocked");
    let entry = connected_entry(&lab, 2, &h1).unwrap_or_else(|e| panic!("{e}"));
    let address = entry["address"].as_str().unwrap_or_default();
    assert!(!address.contains("/quic"), "no QUIC leaves h2's LAN: {entry}");
    eprintln!(
        "netlab: cone/udp-blocked: linked {} ms after h2 started, first write crossed in {} ms; now {}",
        linked.as_millis(),
        first_write.as_millis(),
        entry
    );
}

/// A node of another network that knows a member's address through the
/// relay cannot use the relay to reach the member: the relay refuses its
/// circuit (it is no member: the relay's sync protocol refused it), and
/// the member never hears of it.
#[test]
#[cfg_attr(not(feature = "libp2p"), ignore = "needs the libp2p feature (relays and hole punching)")]
fn a_node_outside_the_network_cannot_use_the_relay_to_reach_a_member() {
    if !netlab::supported() {
        return;
    }
    // h0 relay and h1 stranger on the public segment, h2 member behind a
    // cone NAT.
    let mut lab = Lab::nat(2, &[Nat::Cone], 1);
    lab.host_mut(0).start(&["--relay", "--no-mdns"]);
    let relay_ticket = lab.host(0).ticket();
    lab.host_mut(2).start(&["--no-mdns", "--join", &relay_ticket]);
    let relayed = wait_relayed_addresses(&lab, 2);
    let circuit = relayed.iter().find(|a| a.contains("/tcp/") && !a.contains("/ws")).cloned().unwrap_or_else(|| relayed[0].clone());
    // Its own network (a fresh secret); the member's relayed address as its
    // only bootstrap.
    lab.host_mut(1).start(&["--no-mdns", "--bootstrap", &circuit]);
    let stranger = lab.host(1).peer_id();
    lab.wait_until(STEP_TIMEOUT, "the relay refuses the stranger's circuit", || {
        if metric(&lab, 0, "pluresdb_relay_circuits_denied_total") >= 1 {
            Ok(())
        } else {
            Err(format!("relay log tail: {}", lab.host(0).log_tail(5)))
        }
    });
    assert!(logged(&lab, 0, &["relay: circuit refused", &stranger]), "the refusal names the stranger");
    lab.host(1).put("stranger:1", &json!({"from": "another network"}));
    lab.host(2).put("member:1", &json!({"from": "the network"}));
    // The member syncs with the relay meanwhile (a positive condition to
    // wait on); the stranger's write never arrives, nor does it connect.
    wait_holds(&lab, 0, "member:1", &json!({"from": "the network"}));
    assert!(connected_entry(&lab, 2, &stranger).is_err(), "the member is connected to the stranger");
    assert_eq!(lab.host(2).get("stranger:1"), None);
    assert_eq!(lab.host(1).get("member:1"), None);
    assert!(!logged(&lab, 2, &["reached this node through a relay", &stranger]), "a circuit from the stranger reached the member");
}

/// Two relays; a member behind a cone NAT reserves on both, one behind a
/// symmetric NAT reaches it through one of them. That relay is killed:
/// the pair moves to the other relay and keeps syncing, and every write
/// made before and after is on both.
#[test]
#[cfg_attr(not(feature = "libp2p"), ignore = "needs the libp2p feature (relays and hole punching)")]
fn when_the_relay_dies_the_members_move_to_the_other_relay_and_lose_nothing() {
    if !netlab::supported() {
        return;
    }
    // h0, h1: relays; h2 behind a cone NAT; h3 behind a symmetric NAT.
    let mut lab = Lab::nat(2, &[Nat::Cone, Nat::Symmetric], 1);
    lab.host_mut(0).start(&["--relay", "--no-mdns"]);
    let ticket = lab.host(0).ticket();
    let started = lab.host_mut(1).start(&["--relay", "--no-mdns", "--join", &ticket]);
    let second_relay = started["listen"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|a| a.starts_with("/ip4/") && a.contains("/tcp/") && !a.contains("/ws"))
        .unwrap_or_else(|| panic!("no libp2p TCP address in h1's start line {started}"))
        .to_owned();
    lab.host_mut(2).start(&["--no-mdns", "--join", &ticket, "--bootstrap", &second_relay]);
    let relays = [lab.host(0).peer_id(), lab.host(1).peer_id()];
    lab.wait_until(STEP_TIMEOUT, "h2 holds reservations on both relays", || {
        let relayed = wait_relayed_addresses(&lab, 2);
        if relays.iter().all(|r| relayed.iter().any(|a| a.contains(&format!("/p2p/{r}/p2p-circuit")))) {
            Ok(())
        } else {
            Err(format!("{relayed:?}"))
        }
    });
    let member_ticket = lab.host(2).ticket();
    lab.host_mut(3).start(&["--no-mdns", "--join", &member_ticket]);
    let h2 = lab.host(2).peer_id();
    let entry = lab.wait_until(STEP_TIMEOUT, "h3 is linked with h2 through a relay", || {
        let entry = connected_entry(&lab, 3, &h2)?;
        if entry["relay"].is_string() {
            Ok(entry)
        } else {
            Err(format!("{entry}"))
        }
    });
    lab.host(2).put("before", &json!({"n": 1}));
    wait_holds(&lab, 3, "before", &json!({"n": 1}));
    let used = entry["relay"].as_str().unwrap_or_default().to_owned();
    let (dead, other) = if used == relays[0] { (0, 1) } else { (1, 0) };
    lab.host_mut(dead).kill();
    let moved = Instant::now();
    // A killed relay says nothing: its circuits end when their QUIC or TCP
    // connection times out, so this wait is longer than a step's.
    let entry = lab.wait_until(STEP_TIMEOUT * 2, "h3 reaches h2 through the other relay", || {
        let entry = connected_entry(&lab, 3, &h2)?;
        if entry["relay"] == relays[other].as_str() {
            Ok(entry)
        } else {
            Err(format!("{entry}"))
        }
    });
    let moved = moved.elapsed();
    lab.host(2).put("after:h2", &json!({"n": 2}));
    lab.host(3).put("after:h3", &json!({"n": 3}));
    for (host, id, value) in [(3, "after:h2", json!({"n": 2})), (2, "after:h3", json!({"n": 3})), (3, "before", json!({"n": 1}))] {
        wait_holds(&lab, host, id, &value);
    }
    eprintln!("netlab: relay killed: h3 reached h2 through the other relay {} ms later ({entry})", moved.as_millis());
}

/// A member behind a NAT that knows only a member which is no relay finds
/// the network's relay through the DHT (the relay provides the network's
/// key like every member; the only libp2p way to it is the DHT), reserves
/// on it, and a member behind another NAT reaches it through that relay.
#[test]
#[cfg_attr(not(feature = "libp2p"), ignore = "needs the libp2p feature (relays and the DHT)")]
fn a_member_behind_a_nat_finds_the_relay_through_the_dht() {
    if !netlab::supported() {
        return;
    }
    // h0: a public member, no relay (the only node the others are told
    // of); h1: a public relay that joined h0; h2 behind a symmetric NAT;
    // h3 behind a cone NAT. No QUIC engine: its peer exchange would name
    // h1 to h2 without the DHT.
    let mut lab = Lab::nat(2, &[Nat::Symmetric, Nat::Cone], 1);
    lab.host_mut(0).start(&["--no-mdns", "--no-quic"]);
    let ticket = lab.host(0).ticket();
    assert!(!ticket.is_empty());
    lab.host_mut(1).start(&["--relay", "--no-mdns", "--no-quic", "--join", &ticket]);
    let started = Instant::now();
    lab.host_mut(2).start(&["--no-mdns", "--no-quic", "--join", &ticket]);
    let relay = lab.host(1).peer_id();
    let relayed = wait_relayed_addresses(&lab, 2);
    let found = started.elapsed();
    assert!(relayed.iter().all(|a| a.contains(&format!("/p2p/{relay}/p2p-circuit"))), "h2 reserved on h1: {relayed:?}");
    let member_ticket = lab.host(2).ticket();
    lab.host_mut(3).start(&["--no-mdns", "--no-quic", "--join", &member_ticket]);
    let h2 = lab.host(2).peer_id();
    let entry = lab.wait_until(STEP_TIMEOUT, "h3 is linked with h2 through the relay", || {
        let entry = connected_entry(&lab, 3, &h2)?;
        if entry["relay"] == relay.as_str() {
            Ok(entry)
        } else {
            Err(format!("{entry}"))
        }
    });
    lab.host(2).put("dht:h2", &json!({"by": 2}));
    lab.host(3).put("dht:h3", &json!({"by": 3}));
    wait_holds(&lab, 3, "dht:h2", &json!({"by": 2}));
    wait_holds(&lab, 2, "dht:h3", &json!({"by": 3}));
    eprintln!("netlab: relay found through the DHT: h2 held a reservation {} ms after it started; h3 linked: {entry}", found.as_millis());
}

/// The figures of `docs/libp2p.md` ("Relays and NATs"), by hand (as root):
/// `cargo test --test natlab nat_trials -- --ignored --nocapture`.
/// `PLURESDB_NAT_TRIALS` trials (default 20) of each topology: how many
/// pairs end on a direct connection within 15 s of linking, the time from
/// the joining node's start to its link, and from a write to its arrival.
#[test]
#[ignore = "measurement: run by hand for the figures (about 10 minutes)"]
fn nat_trials() {
    if !netlab::supported() {
        return;
    }
    let trials: usize = std::env::var("PLURESDB_NAT_TRIALS").ok().and_then(|n| n.parse().ok()).unwrap_or(20);
    for (name, second) in [("cone/cone", Nat::Cone), ("cone/symmetric", Nat::Symmetric), ("cone/udp-blocked", Nat::UdpBlocked)] {
        let (mut direct, mut links, mut writes) = (0, Vec::new(), Vec::new());
        for _ in 0..trials {
            let (lab, linked, first_write) = two_members_behind(Nat::Cone, second);
            let h1 = lab.host(1).peer_id();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if connected_entry(&lab, 2, &h1).is_ok_and(|e| e["relay"].is_null()) {
                    direct += 1;
                    break;
                }
                std::thread::sleep(netlab::POLL_INTERVAL);
            }
            links.push(linked.as_millis());
            writes.push(first_write.as_millis());
        }
        links.sort_unstable();
        writes.sort_unstable();
        let median = |v: &[u128]| v[v.len() / 2];
        eprintln!(
            "netlab: {name}: {direct}/{trials} direct within 15 s; link after start: median {} ms, max {} ms; first write: median {} ms, max {} ms",
            median(&links),
            links[links.len() - 1],
            median(&writes),
            writes[writes.len() - 1]
        );
    }
}
