//! Two and more discoveries in one process find each other over mDNS
//! (multicast loops back to the sockets of the same host), tell networks
//! apart and see a stopped node withdraw.
//!
//! The daemons run on the loopback interface only and announce 127.0.0.1
//! on ports nobody listens on: nothing leaves the machine, nothing is
//! dialled here (the network lab tests mDNS between hosts). Other tests and
//! processes on the host may announce too, so each test looks only at the
//! peer ids it made.

#![cfg(feature = "mdns")]

use pluresdb_discovery::{CombinedDiscovery, DiscoveredPeer, DiscoveryConfig, DiscoveryMethod, LocalPeer};
use pluresdb_security::{Identity, NetworkSecret};
use std::time::Duration;
use tokio::time::Instant;

/// How long mDNS may take here: probing (about 750 ms) plus announcing, or
/// a withdrawal; far more than it needs on a quiet host.
const DEADLINE: Duration = Duration::from_secs(15);

/// Tests stay on loopback: mDNS here never leaves the machine.
fn loopback_only() -> Vec<String> {
    vec!["lo".to_owned()]
}

fn node(port: u16, network_tag: &str) -> CombinedDiscovery {
    let peer_id = Identity::generate().expect("randomness").peer_id().to_string();
    CombinedDiscovery::new(DiscoveryConfig::default())
        .with_interfaces(loopback_only())
        .with_local(LocalPeer::new(peer_id, port, network_tag).with_addresses(vec!["127.0.0.1".parse().expect("an IP")]))
}

fn id(discovery: &CombinedDiscovery) -> String {
    discovery.local().map(|local| local.peer_id.clone()).unwrap_or_default()
}

/// Waits until `done` holds for `discovery`'s peers, woken by directory
/// changes; panics with the last listing at the deadline.
async fn wait_for(discovery: &CombinedDiscovery, what: &str, done: impl Fn(&[DiscoveredPeer]) -> bool) -> Vec<DiscoveredPeer> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let changed = discovery.changed();
        let peers = discovery.discover_peers().await.expect("discover");
        if done(&peers) {
            return peers;
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            panic!("{what}: not within {DEADLINE:?}; peers: {peers:#?}");
        }
    }
}

fn find<'a>(peers: &'a [DiscoveredPeer], peer_id: &str) -> Option<&'a DiscoveredPeer> {
    peers.iter().find(|peer| peer.id == peer_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_each_other_tell_networks_apart_and_see_withdrawals() {
    let tag = NetworkSecret::generate().expect("randomness").network_tag();
    let other_tag = NetworkSecret::generate().expect("randomness").network_tag();
    let first = node(41001, &tag);
    let second = node(41002, &tag);
    let stranger = node(41003, &other_tag);
    for discovery in [&first, &second, &stranger] {
        discovery.start_discovery().await.expect("start");
        discovery.announce_peer().await.expect("announce");
    }
    let (first_id, second_id, stranger_id) = (id(&first), id(&second), id(&stranger));

    let peers = wait_for(&first, "first finds second and stranger", |peers| {
        find(peers, &second_id).is_some() && find(peers, &stranger_id).is_some()
    })
    .await;
    assert!(find(&peers, &first_id).is_none(), "a node does not list itself");
    let found = find(&peers, &second_id).unwrap();
    assert!(found.same_network);
    assert_eq!(found.methods, [DiscoveryMethod::Mdns]);
    assert!(found.address.ends_with(":41002"), "{found:?}");
    assert!(!find(&peers, &stranger_id).unwrap().same_network, "another network is flagged");

    wait_for(&second, "second finds first", |peers| find(peers, &first_id).is_some_and(|p| p.same_network)).await;

    // Stopping withdraws: the others drop the node at once (its only method
    // was mDNS).
    second.stop().await;
    wait_for(&first, "first sees second leave", |peers| find(peers, &second_id).is_none()).await;
    wait_for(&stranger, "stranger sees second leave", |peers| find(peers, &second_id).is_none()).await;
    assert!(second.discover_peers().await.expect("discover").is_empty(), "a stopped node forgets what mDNS found");
    assert!(second.start_discovery().await.is_err(), "a stopped discovery stays stopped");

    // Dropping without `stop` withdraws too.
    drop(stranger);
    wait_for(&first, "first sees stranger leave", |peers| find(peers, &stranger_id).is_none()).await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_loopback_announce_and_accept_loopback_addresses() {
    let loopback = vec!["127.0.0.1".parse().expect("an IP")];
    let on_loopback = |port| {
        let peer_id = Identity::generate().expect("randomness").peer_id().to_string();
        let local = LocalPeer::new(peer_id, port, "").with_addresses(loopback.clone());
        CombinedDiscovery::new(DiscoveryConfig::default()).with_interfaces(loopback_only()).with_local(local)
    };
    let (first, second) = (on_loopback(41011), on_loopback(41012));
    for discovery in [&first, &second] {
        discovery.start_discovery().await.expect("start");
        discovery.announce_peer().await.expect("announce");
    }
    let second_id = id(&second);
    let peers = wait_for(&first, "first finds second on loopback", |peers| find(peers, &second_id).is_some()).await;
    let found = find(&peers, &second_id).unwrap();
    assert_eq!(found.addresses, ["127.0.0.1:41012"], "only the announced address");
    assert!(found.same_network, "two nodes without a network secret match");
    first.stop().await;
    second.stop().await;
}
