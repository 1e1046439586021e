//! Tests in the network lab (`tests/netlab/mod.rs`): real `pluresdb serve`
//! processes on hosts in their own network namespaces, on one LAN or on two
//! LANs behind a router, under packet loss, link cuts and partitions.
//!
//! They need root and iproute2, nftables and ping; elsewhere each test says
//! it is skipped and returns (with `CI=true` as root it fails instead).

#[path = "netlab/mod.rs"]
mod netlab;

use netlab::{api_get, live_namespaces, Lab};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How long replication may take to converge in these tests.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(45);

/// How long a link change may take to show in pings.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);

/// The ids in `expected` that `host` does not hold, as an observation for
/// [`Lab::wait_until`]: `Ok` once it holds them all.
fn holds_all(lab: &Lab, host: usize, expected: &BTreeSet<String>) -> Result<(), String> {
    let held: BTreeSet<String> = lab.host(host).list_ids().into_iter().collect();
    let missing: Vec<&String> = expected.difference(&held).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        let shown: Vec<&&String> = missing.iter().take(5).collect();
        Err(format!("h{host} holds {} ids and lacks {} (e.g. {shown:?})", held.len(), missing.len()))
    }
}

/// Waits until every host in `hosts` holds every id in `expected`.
fn wait_converged(lab: &Lab, hosts: &[usize], expected: &BTreeSet<String>, what: &str) {
    lab.wait_until(CONVERGE_TIMEOUT, what, || {
        hosts.iter().map(|&h| holds_all(lab, h, expected)).collect::<Result<Vec<()>, String>>().map(drop)
    });
}

/// Pings from host `from` to host `to` until the answer is `reachable`.
fn wait_ping(lab: &Lab, from: usize, to: usize, reachable: bool) {
    let address = lab.host(to).address;
    let what = format!("h{from} {} h{to} ({address})", if reachable { "reaches" } else { "no longer reaches" });
    lab.wait_until(LINK_TIMEOUT, &what, || {
        let answered = lab.host(from).ping(address);
        if answered == reachable {
            Ok(())
        } else {
            Err(format!("ping answered: {answered}"))
        }
    });
}

/// The set of `ids`, owned.
fn id_set<'a>(ids: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    ids.into_iter().map(str::to_owned).collect()
}

/// The harness itself: addresses, pings, cuts, loss, partitions, teardown.
#[test]
fn lan_harness_connectivity() {
    if !netlab::supported() {
        return;
    }
    let lab = Lab::lan(3);
    let id = lab.id().to_owned();
    assert_eq!(live_namespaces(&id).len(), 4, "three hosts and the switch: {:?}", live_namespaces(&id));
    for from in 0..3 {
        for to in (0..3).filter(|&to| to != from) {
            assert!(lab.host(from).ping(lab.host(to).address), "h{from} cannot ping h{to}");
        }
    }
    let routes = lab.host(1).exec("ip", &["route", "show"]);
    assert!(String::from_utf8_lossy(&routes.stdout).contains("224.0.0.0/4 dev eth0"), "no multicast route: {routes:?}");

    lab.cut(2);
    assert!(!lab.host(0).ping(lab.host(2).address), "h0 still reaches h2 after the cut");
    assert!(!lab.host(2).ping(lab.host(1).address), "h2 still reaches h1 after the cut");
    assert!(lab.host(0).ping(lab.host(1).address), "the cut of h2 broke h0-h1");
    lab.restore(2);
    wait_ping(&lab, 0, 2, true);
    wait_ping(&lab, 2, 1, true);

    lab.set_loss(1, 100);
    assert!(!lab.host(0).ping(lab.host(1).address), "100 % loss on h1 lets pings through");
    lab.clear_loss(1);
    wait_ping(&lab, 0, 1, true);

    lab.partition(&[0], &[1, 2]);
    assert!(!lab.host(0).ping(lab.host(1).address), "h0 reaches h1 across the partition");
    assert!(!lab.host(2).ping(lab.host(0).address), "h2 reaches h0 across the partition");
    assert!(lab.host(1).ping(lab.host(2).address), "h1 and h2 are on the same side");
    lab.heal();
    wait_ping(&lab, 0, 1, true);
    wait_ping(&lab, 2, 0, true);

    drop(lab);
    assert_eq!(live_namespaces(&id), Vec::<String>::new(), "the lab left namespaces behind");
}

/// A lab dropped by a panicking test kills its node and removes its
/// namespaces.
#[test]
fn teardown_after_panic_leaves_nothing() {
    if !netlab::supported() {
        return;
    }
    let built = std::sync::Mutex::new(None);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut lab = Lab::lan(2);
        lab.host_mut(0).start(&[]);
        *built.lock().unwrap() = Some((lab.id().to_owned(), lab.host(0).node_pid().expect("the node runs")));
        assert_eq!(live_namespaces(lab.id()).len(), 3);
        panic!("netlab: deliberate panic (expected) with a lab and a running node");
    }));
    assert!(outcome.is_err(), "the closure panics");
    let (id, pid) = built.lock().unwrap().clone().expect("the lab was built before the panic");
    assert_eq!(live_namespaces(&id), Vec::<String>::new(), "the panicking lab left namespaces behind");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the node (pid {pid}) still runs");
}

/// Two nodes on one LAN: the second joins with the first's ticket, writes
/// on both sides reach both.
#[test]
#[cfg_attr(not(feature = "quic"), ignore = "needs the quic feature (the nodes' network transport)")]
fn lan_two_nodes_replicate() {
    if !netlab::supported() {
        return;
    }
    let mut lab = Lab::lan(2);
    let started = lab.host_mut(0).start(&[]);
    // QUIC's address first, then the libp2p engine's multiaddrs at the QUIC
    // port + 10 (TCP, QUIC-v1) and + 11 (WebSocket).
    let address = lab.host(0).address;
    let peer = started["peer_id"].as_str().unwrap_or_default().to_owned();
    let (libp2p, ws) = (netlab::PEER_PORT + 10, netlab::PEER_PORT + 11);
    let mut listen: Vec<String> =
        started["listen"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).map(str::to_owned).collect();
    assert_eq!(listen.first(), Some(&format!("{address}:{}", netlab::PEER_PORT)), "{started}");
    listen.sort();
    let mut expected = vec![
        format!("{address}:{}", netlab::PEER_PORT),
        format!("/ip4/{address}/tcp/{libp2p}/p2p/{peer}"),
        format!("/ip4/{address}/udp/{libp2p}/quic-v1/p2p/{peer}"),
        format!("/ip4/{address}/tcp/{ws}/ws/p2p/{peer}"),
    ];
    expected.sort();
    assert_eq!(listen, expected, "{started}");
    let ticket = lab.host(0).ticket();
    lab.host_mut(1).start(&["--join", &ticket]);
    lab.host(0).put("from:h0", &json!({"by": 0}));
    lab.host(1).put("from:h1", &json!({"by": 1}));
    let since = Instant::now();
    wait_converged(&lab, &[0, 1], &id_set(["from:h0", "from:h1"]), "both hosts hold both writes");
    eprintln!("netlab: lan_two_nodes_replicate converged in {} ms", since.elapsed().as_millis());
    assert_eq!(lab.host(1).get("from:h0"), Some(json!({"by": 0})));
    assert_eq!(lab.host(0).get("from:h1"), Some(json!({"by": 1})));
    assert_eq!(lab.host(0).connected_peers(), vec![lab.host(1).peer_id()]);
    for host in [1, 0] {
        assert!(lab.host_mut(host).stop().success(), "h{host} did not stop cleanly:\n{}", lab.host(host).log_tail(20));
    }
}

/// A node on another LAN joins through the router and converges.
#[test]
#[cfg_attr(not(feature = "quic"), ignore = "needs the quic feature (the nodes' network transport)")]
fn routed_join_converges() {
    if !netlab::supported() {
        return;
    }
    let mut lab = Lab::routed(1, 1);
    assert_eq!(lab.host(1).address.octets()[2], 2, "host 1 is on LAN 2");
    assert!(lab.host(1).ping(lab.host(0).address), "LAN 2 cannot reach LAN 1 through the router");
    lab.host_mut(0).start(&[]);
    let ticket = lab.host(0).ticket();
    lab.host_mut(1).start(&["--join", &ticket]);
    lab.host(0).put("lan1:w", &json!({"lan": 1}));
    lab.host(1).put("lan2:w", &json!({"lan": 2}));
    let since = Instant::now();
    wait_converged(&lab, &[0, 1], &id_set(["lan1:w", "lan2:w"]), "both LANs hold both writes");
    eprintln!("netlab: routed_join_converges converged in {} ms", since.elapsed().as_millis());
    assert_eq!(lab.host(0).get("lan2:w"), Some(json!({"lan": 2})));
}

/// 200 writes reach a node whose link loses 10 % of the packets each way.
#[test]
#[cfg_attr(not(feature = "quic"), ignore = "needs the quic feature (the nodes' network transport)")]
fn lossy_link_converges() {
    if !netlab::supported() {
        return;
    }
    let mut lab = Lab::lan(2);
    lab.host_mut(0).start(&[]);
    lab.set_loss(1, 10);
    let ticket = lab.host(0).ticket();
    let since = Instant::now();
    lab.host_mut(1).start(&["--join", &ticket]);
    let h0 = lab.host(0).peer_id();
    lab.wait_until(CONVERGE_TIMEOUT, "h1 connects to h0 over the lossy link", || {
        let connected = lab.host(1).connected_peers();
        if connected.contains(&h0) {
            Ok(())
        } else {
            Err(format!("h1 connected to {connected:?}"))
        }
    });
    eprintln!("netlab: lossy_link_converges: h1 connected in {} ms", since.elapsed().as_millis());
    // About 1 KiB each: the transfer spans a few hundred frames, so the
    // loss certainly hits it.
    let nodes: Vec<(String, Value)> = (0..200).map(|i| (format!("lossy:{i:03}"), json!({"i": i, "pad": "x".repeat(1000)}))).collect();
    let since = Instant::now();
    assert_eq!(lab.host(0).import(&nodes), 200);
    let expected: BTreeSet<String> = nodes.iter().map(|(id, _)| id.clone()).collect();
    wait_converged(&lab, &[1], &expected, "h1 (10 % loss) holds all 200 writes");
    let (frames, lost) = lab.link_counters(1);
    eprintln!(
        "netlab: lossy_link_converges: 200 writes over a 10 % lossy link in {} ms ({lost} of {frames} frames dropped)",
        since.elapsed().as_millis()
    );
    assert!(lost > 0, "the 10 % loss dropped none of {frames} frames");
    assert_eq!(lab.host(1).get("lossy:199"), Some(nodes[199].1.clone()));
}

/// Four nodes joined to h0 (a star: without peer exchange each knows only
/// h0). Partitioned {h0, h1} | {h2, h3}, h2 and h3 lose h0; every side
/// writes; after healing all four hold every write.
#[test]
#[cfg_attr(not(feature = "quic"), ignore = "needs the quic feature (the nodes' network transport)")]
fn partition_and_heal() {
    if !netlab::supported() {
        return;
    }
    let mut lab = Lab::lan(4);
    lab.host_mut(0).start(&[]);
    let ticket = lab.host(0).ticket();
    for host in 1..4 {
        lab.host_mut(host).start(&["--join", &ticket]);
    }
    lab.host(0).put("before", &json!({"phase": "before"}));
    wait_converged(&lab, &[0, 1, 2, 3], &id_set(["before"]), "all hosts hold the write made before the partition");

    lab.partition(&[0, 1], &[2, 3]);
    let mut side_a = BTreeSet::new();
    let mut side_b = BTreeSet::new();
    for host in 0..4 {
        for n in 0..5 {
            let id = format!("during:h{host}:{n}");
            lab.host(host).put(&id, &json!({"host": host, "n": n}));
            let side = if host < 2 { &mut side_a } else { &mut side_b };
            side.insert(id);
        }
    }
    // h0 notices that h2 and h3 are gone (the QUIC idle timeout).
    let cut_off = [lab.host(2).peer_id(), lab.host(3).peer_id()];
    lab.wait_until(CONVERGE_TIMEOUT, "h0 sees h2 and h3 disconnected", || {
        let connected = lab.host(0).connected_peers();
        if cut_off.iter().any(|p| connected.contains(p)) {
            Err(format!("h0 connected to {connected:?}"))
        } else {
            Ok(())
        }
    });
    wait_converged(&lab, &[0, 1], &side_a, "h0 and h1 hold their side's writes during the partition");
    for host in [2, 3] {
        let held: BTreeSet<String> = lab.host(host).list_ids().into_iter().collect();
        assert!(held.is_disjoint(&side_a), "h{host} got writes across the partition: {held:?}");
    }
    let held: BTreeSet<String> = lab.host(0).list_ids().into_iter().collect();
    assert!(held.is_disjoint(&side_b), "h0 got writes across the partition: {held:?}");

    lab.heal();
    let since = Instant::now();
    let mut everything: BTreeSet<String> = side_a.union(&side_b).cloned().collect();
    everything.insert("before".to_owned());
    wait_converged(&lab, &[0, 1, 2, 3], &everything, "all hosts hold every write after healing");
    eprintln!("netlab: partition_and_heal converged {} ms after healing", since.elapsed().as_millis());
    assert_eq!(lab.host(1).get("during:h3:4"), Some(json!({"host": 3, "n": 4})));
}

/// A node whose wall clock reads a year ahead (libfaketime), among two
/// honest ones. What it wrote alone, stamped a year ahead, is stored and
/// synced everywhere but takes effect nowhere else and drags no clock; once
/// connected it learns from its peers' heartbeats that its clock is the odd
/// one out, says so, and writes with their time; `/status` shows the skew
/// on every side.
#[test]
#[cfg_attr(not(feature = "quic"), ignore = "needs the quic feature (the nodes' network transport)")]
fn a_node_a_year_ahead_writes_with_its_peers_time_and_drags_no_clock() {
    if !netlab::supported() {
        return;
    }
    let Some(faketime) = netlab::libfaketime() else { return };
    let faketime = faketime.to_string_lossy().into_owned();
    // A year ahead for the wall clock only: timers run on the monotonic
    // clock, as on a machine whose clock was simply set wrong.
    let year_ahead = [("LD_PRELOAD", faketime.as_str()), ("FAKETIME", "+365d"), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")];
    const YEAR_MS: i64 = 365 * 86_400_000;
    const DAY_MS: i64 = 86_400_000;
    let drift_ms = 5 * 60_000;
    let real_now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let wall_of = |stamp: &Value| -> i64 {
        stamp.as_str().and_then(|s| s.split('.').next()).and_then(|w| w.parse().ok()).unwrap_or_else(|| panic!("not a timestamp: {stamp}"))
    };

    let mut lab = Lab::lan(3);
    lab.host_mut(0).start(&[]);
    let ticket = lab.host(0).ticket();
    lab.host_mut(1).start(&["--join", &ticket]);
    let h1_address = format!("{}:{}", lab.host(1).address, netlab::PEER_PORT);

    // Alone (no network), h2 writes with its clock a year ahead.
    lab.host_mut(2).start_with_env(&year_ahead, &["--join", &ticket, "--no-network"]);
    let early = lab.host(2).cli_json(&["put", "skewed:early", r#"{"when": "early"}"#]);
    assert!((wall_of(&early["timestamp"]) - real_now() - YEAR_MS).abs() < DAY_MS, "not stamped a year ahead: {early}");
    assert!(lab.host_mut(2).stop().success());

    // Connected, it learns that its clock is a year ahead of both peers'.
    let h2 = lab.host(2).peer_id();
    lab.host_mut(2).start_with_env(&year_ahead, &["--join", &ticket, "--bootstrap", &h1_address]);
    let corrected = lab.wait_until(Duration::from_secs(90), "h2 corrects its clock by its peers'", || {
        let status = lab.host(2).status();
        let correction = status["clock"]["correction_ms"].as_i64().unwrap_or(0);
        if (correction + YEAR_MS).abs() < 60_000 {
            Ok(status)
        } else {
            Err(format!("{} peers connected, clock {}", status["peers_connected"], status["clock"]))
        }
    });
    assert_eq!(corrected["clock"]["peers"].as_array().map(Vec::len), Some(2), "{corrected}");
    let log = std::fs::read_to_string(&lab.host(2).log_path).unwrap_or_default();
    let warning = log.lines().find(|line| line.contains("ahead of most of its peers'") && line.contains("writes with corrected time"));
    eprintln!("netlab: h2 said: {}", warning.unwrap_or_else(|| panic!("no warning in h2's log:\n{log}")));

    // It writes with corrected time: the write takes effect at once everywhere.
    let later = lab.host(2).cli_json(&["put", "skewed:later", r#"{"when": "later"}"#]);
    assert!((wall_of(&later["timestamp"]) - real_now()).abs() < 60_000, "not written with corrected time: {later}");
    wait_converged(&lab, &[0, 1], &id_set(["skewed:later"]), "h0 and h1 take h2's corrected write");

    for host in [0, 1] {
        let status = lab.host(host).status();
        // The early write is held (and counted) but not in effect.
        assert_eq!(status["version_vector"][&h2], 2, "h{host}: {status}");
        assert_eq!(lab.host(host).get("skewed:early"), None, "h{host} shows a write from a year ahead");
        let clock = &status["clock"];
        assert_eq!(clock["deferred_operations"], 1, "h{host}: {clock}");
        // No clock dragged a year ahead.
        assert!(wall_of(&clock["clock"]) <= real_now() + drift_ms, "h{host}'s clock moved to {}", clock["clock"]);
        // The skew shows, per origin and per peer.
        let origin = clock["origins"].as_array().into_iter().flatten().find(|o| o["origin"] == h2.as_str());
        let ahead = origin.and_then(|o| o["max_ahead_ms"].as_i64()).unwrap_or(0);
        assert!((ahead - YEAR_MS).abs() < DAY_MS, "h{host}: h2's operations came {ahead} ms ahead: {clock}");
        let peer = clock["peers"].as_array().into_iter().flatten().find(|p| p["peer_id"] == h2.as_str());
        let offset = peer.and_then(|p| p["offset_ms"].as_i64()).unwrap_or(0);
        assert!((offset - YEAR_MS).abs() < 60_000, "h{host}: h2's clock offset {offset} ms: {clock}");
        assert_eq!(clock["correction_ms"], 0, "h{host} corrected its own clock: {clock}");
    }
    let metrics = api_get(&lab, 0, "/metrics");
    let skew_line = metrics.lines().find(|l| l.starts_with(&format!("pluresdb_clock_skew_ms{{origin=\"{h2}\"}} ")));
    let skew: i64 = skew_line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!((skew - YEAR_MS).abs() < DAY_MS, "no skew metric for h2: {metrics}");
    assert!(metrics.lines().any(|l| l == "pluresdb_deferred_operations 1"), "{metrics}");
}

// ---- discovery in the lab ---------------------------------------------------

/// Gives host `to` the network secret of host `from` (its `network.secret`
/// file, as a user copies it): `to` belongs to the network but knows no
/// address, so it meets peers through discovery alone.
fn share_secret(lab: &Lab, from: usize, to: usize) {
    use std::os::unix::fs::PermissionsExt;
    let source = lab.host(from).data_dir.join("network.secret");
    let dir = &lab.host(to).data_dir;
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let target = dir.join("network.secret");
    std::fs::copy(&source, &target).unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", source.display(), target.display()));
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod network.secret");
}

/// Waits until host `host` has discovered each host in `others` with
/// `method`.
fn wait_discovered(lab: &Lab, host: usize, others: &[usize], method: &str) {
    let ids: Vec<String> = others.iter().map(|&o| lab.host(o).peer_id()).collect();
    lab.wait_until(CONVERGE_TIMEOUT, &format!("h{host} discovers {others:?} by {method}"), || {
        let found = discovered(lab, host);
        let missing: Vec<&String> = ids
            .iter()
            .filter(|id| {
                !found.iter().any(|p| {
                    p["peer_id"] == id.as_str()
                        && p["same_network"] == true
                        && p["methods"].as_array().is_some_and(|m| m.contains(&json!(method)))
                })
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing {missing:?} in {found:?}"))
        }
    });
}

/// `pluresdb peers --discovered` on `host`.
fn discovered(lab: &Lab, host: usize) -> Vec<Value> {
    let doc = lab.host(host).cli_json(&["peers", "--discovered"]);
    doc["peers"].as_array().cloned().unwrap_or_default()
}

/// Waits until each host in `hosts` is connected to every other one.
fn wait_full_mesh(lab: &Lab, hosts: &[usize], timeout: Duration, what: &str) {
    let ids: Vec<String> = hosts.iter().map(|&h| lab.host(h).peer_id()).collect();
    lab.wait_until(timeout, what, || {
        for (i, &h) in hosts.iter().enumerate() {
            let connected: BTreeSet<String> = lab.host(h).connected_peers().into_iter().collect();
            let missing: Vec<&String> =
                ids.iter().enumerate().filter(|(j, id)| *j != i && !connected.contains(*id)).map(|(_, id)| id).collect();
            if !missing.is_empty() {
                return Err(format!("h{h} is not connected to {missing:?}"));
            }
        }
        Ok(())
    });
}

/// Four hosts on one LAN that share a secret but no address find each other
/// by mDNS alone and converge on writes made on every host.
#[test]
fn lan_hosts_find_each_other_by_mdns_and_converge() {
    if !netlab::supported() {
        return;
    }
    let mut lab = Lab::lan(4);
    lab.host_mut(0).start(&[]);
    let started = Instant::now();
    for h in 1..4 {
        share_secret(&lab, 0, h);
        if h == 3 {
            // One host keeps mDNS to its LAN interface by name.
            let config = format!("mdns_interfaces = [\"{}\"]\n", netlab::HOST_INTERFACE);
            std::fs::write(lab.host(h).data_dir.join("pluresdb.toml"), config).expect("write pluresdb.toml");
        }
        lab.host_mut(h).start(&[]);
    }
    wait_full_mesh(&lab, &[0, 1, 2, 3], CONVERGE_TIMEOUT, "every host connects to every other by mDNS");
    let meshed = started.elapsed();
    for h in 0..4 {
        let others: Vec<usize> = (0..4).filter(|&o| o != h).collect();
        wait_discovered(&lab, h, &others, "mdns");
    }
    let mut expected = BTreeSet::new();
    for h in 0..4 {
        for n in 0..5 {
            let id = format!("lan:h{h}:{n}");
            lab.host(h).put(&id, &json!({"host": h, "n": n}));
            expected.insert(id);
        }
    }
    let writes_done = Instant::now();
    wait_converged(&lab, &[0, 1, 2, 3], &expected, "all four hosts hold the 20 writes");
    eprintln!(
        "netlab: lan(4) by mDNS alone: full mesh {} ms after the joiners started; 20 writes converged in {} ms",
        meshed.as_millis(),
        writes_done.elapsed().as_millis()
    );
}

/// Two LANs behind a router, mDNS off: every node knows only the first
/// node's address (from its ticket), learns the others by peer exchange,
/// connects to all of them across the router, and converges.
#[test]
fn routed_nodes_meet_through_bootstrap_and_peer_exchange() {
    if !netlab::supported() {
        return;
    }
    let mut lab = Lab::routed(2, 2);
    lab.host_mut(0).start(&["--no-mdns"]);
    let ticket = lab.host(0).ticket();
    let started = Instant::now();
    for h in 1..4 {
        lab.host_mut(h).start(&["--no-mdns", "--join", &ticket]);
    }
    wait_full_mesh(&lab, &[0, 1, 2, 3], CONVERGE_TIMEOUT, "every node connects to every other");
    let meshed = started.elapsed();
    // The last node learned the two before it from the nodes it met.
    let found = discovered(&lab, 3);
    for other in [1, 2] {
        let id = lab.host(other).peer_id();
        let entry = found.iter().find(|p| p["peer_id"] == id.as_str()).unwrap_or_else(|| panic!("h3 did not learn h{other}: {found:?}"));
        assert!(entry["methods"].as_array().unwrap().contains(&json!("exchange")), "{entry}");
        let via = entry["via"].as_str().unwrap_or_default();
        assert!(via != id && lab.hosts().iter().any(|h| h.peer_id() == via), "told by another node of the lab: {entry}");
        assert!(!entry["methods"].as_array().unwrap().contains(&json!("mdns")), "mDNS is off: {entry}");
    }
    let mut expected = BTreeSet::new();
    for h in 0..4 {
        let id = format!("routed:h{h}");
        lab.host(h).put(&id, &json!({"host": h}));
        expected.insert(id);
    }
    let writes_done = Instant::now();
    wait_converged(&lab, &[0, 1, 2, 3], &expected, "all four nodes hold the 4 writes");
    eprintln!(
        "netlab: routed(2,2) by bootstrap + peer exchange: full mesh {} ms after the joiners started; writes converged in {} ms",
        meshed.as_millis(),
        writes_done.elapsed().as_millis()
    );
}

/// A node of another network on the same LAN is discovered (and listed as
/// such) but never connected to or synced with.
#[test]
fn another_network_on_the_lan_is_seen_but_never_synced() {
    if !netlab::supported() {
        return;
    }
    let mut lab = Lab::lan(3);
    lab.host_mut(0).start(&[]);
    share_secret(&lab, 0, 1);
    lab.host_mut(1).start(&[]);
    lab.host_mut(2).start(&[]); // its own, fresh network
    let stranger = lab.host(2).peer_id();
    let member = lab.host(1).peer_id();
    lab.wait_until(CONVERGE_TIMEOUT, "h0 lists the stranger as another network and h1 as connected", || {
        let found = discovered(&lab, 0);
        let s = found.iter().find(|p| p["peer_id"] == stranger.as_str());
        let m = found.iter().find(|p| p["peer_id"] == member.as_str());
        match (s, m) {
            (Some(s), Some(m)) if s["same_network"] == false && m["same_network"] == true && m["connected"] == true => Ok(()),
            _ => Err(format!("{found:?}")),
        }
    });
    lab.host(2).put("foreign:1", &json!({"from": "another network"}));
    lab.host(0).put("home:1", &json!({"from": "h0"}));
    wait_converged(&lab, &[1], &id_set(["home:1"]), "h1 holds h0's write");
    // h1 has synced with h0 since the stranger wrote; nothing crossed.
    for h in [0, 1] {
        assert_eq!(lab.host(h).get("foreign:1"), None, "h{h} holds the stranger's write");
        assert!(!lab.host(h).connected_peers().contains(&stranger), "h{h} is connected to the stranger");
    }
    assert_eq!(lab.host(2).get("home:1"), None, "the stranger holds the network's write");
    assert!(lab.host(2).connected_peers().is_empty(), "the stranger is connected: {}", lab.host(2).peers());
    let found = discovered(&lab, 0);
    let entry = found.iter().find(|p| p["peer_id"] == stranger.as_str()).unwrap();
    assert_eq!(entry["connected"], false, "{entry}");
}

/// Nodes found by mDNS reconnect by themselves after one restarts and after
/// one moves to another address.
#[test]
fn mdns_peers_reconnect_after_a_restart_and_an_address_change() {
    if !netlab::supported() {
        return;
    }
    let mut lab = Lab::lan(2);
    lab.host_mut(0).start(&[]);
    share_secret(&lab, 0, 1);
    // Listening on every address lets h1 keep serving when its address changes.
    lab.host_mut(1).start(&["--bind", "0.0.0.0"]);
    wait_full_mesh(&lab, &[0, 1], CONVERGE_TIMEOUT, "h0 and h1 connect");

    lab.host_mut(1).stop();
    lab.host(0).put("while-down", &json!({"n": 1}));
    let restarted = Instant::now();
    lab.host_mut(1).start(&["--bind", "0.0.0.0"]);
    wait_full_mesh(&lab, &[0, 1], CONVERGE_TIMEOUT, "h1 reconnects after its restart");
    wait_converged(&lab, &[1], &id_set(["while-down"]), "h1 catches up after its restart");
    let after_restart = restarted.elapsed();

    // Move h1 to a new address (the old one goes first: a second address in
    // the same subnet would be a secondary, deleted with the primary).
    let old = lab.host(1).address;
    let new = std::net::Ipv4Addr::new(10, 77, 1, 99);
    for (verb, address) in [("del", old), ("add", new)] {
        let prefix = format!("{address}/24");
        let out = lab.host(1).exec("ip", &["addr", verb, &prefix, "dev", netlab::HOST_INTERFACE]);
        assert!(out.status.success(), "ip addr {verb} {prefix}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let moved = Instant::now();
    let h1 = lab.host(1).peer_id();
    let new_text = new.to_string();
    lab.wait_until(Duration::from_secs(60), "h0 reaches h1 at its new address", || {
        let peers = lab.host(0).peers();
        let entry = peers["peers"].as_array().into_iter().flatten().find(|p| p["peer_id"] == h1.as_str()).cloned();
        match entry {
            Some(p) if p["connected"] == true && p["address"].as_str().is_some_and(|a| a.starts_with(&new_text)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // mDNS follows the move too: h1 announces its new address.
    let announced = format!("{new_text}:");
    lab.wait_until(Duration::from_secs(30), "h0's mDNS entry for h1 shows the new address", || {
        let found = discovered(&lab, 0);
        let entry = found.iter().find(|p| p["peer_id"] == h1.as_str()).cloned();
        match entry {
            Some(p)
                if p["methods"].as_array().is_some_and(|m| m.contains(&json!("mdns")))
                    && p["addresses"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|a| a.as_str().is_some_and(|a| a.starts_with(&announced)))) =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    });
    lab.host(1).put("after-move", &json!({"at": new_text}));
    wait_converged(&lab, &[0], &id_set(["after-move"]), "h0 holds h1's write from its new address");
    eprintln!(
        "netlab: mDNS reconnection: {} ms after a restart; {} ms after an address change",
        after_restart.as_millis(),
        moved.elapsed().as_millis()
    );
}

// ---- restored and copied data directories -------------------------------------

/// Copies data directory `from` to `to` (replacing it) as a user would,
/// with `cp -a` (modes kept: the key files stay private).
fn copy_data_dir(from: &std::path::Path, to: &std::path::Path) {
    if to.exists() {
        std::fs::remove_dir_all(to).unwrap_or_else(|e| panic!("cannot remove {}: {e}", to.display()));
    }
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().expect("run cp");
    assert!(status.success(), "cp -a {} {} failed", from.display(), to.display());
}

/// No host's peers list shows a batch refused for a broken hash chain.
fn assert_no_refused_batch(lab: &Lab, hosts: &[usize]) {
    for &h in hosts {
        let peers = lab.host(h).peers();
        for peer in peers["peers"].as_array().into_iter().flatten() {
            let error = peer["last_error"].as_str().unwrap_or_default();
            assert!(!error.contains("hash chain"), "h{h} refused a batch of {}: {error}", peer["peer_id"]);
        }
    }
}

/// B's data directory is restored from an old copy while A and C hold the
/// writes B made after it; B writes while its cable is out, then again once
/// it is back. Everything converges with every acknowledged write: B takes
/// its own later operations back from its peers, and its offline writes,
/// which forked its log, lose to the older branch and are written again
/// after it.
#[test]
#[cfg_attr(not(feature = "quic"), ignore = "needs the quic feature (the nodes' network transport)")]
fn a_restored_backup_converges_with_every_acknowledged_write() {
    if !netlab::supported() {
        return;
    }
    let mut lab = Lab::lan(3);
    lab.host_mut(0).start(&[]);
    let ticket = lab.host(0).ticket();
    lab.host_mut(1).start(&["--join", &ticket]);
    lab.host_mut(2).start(&["--join", &ticket]);
    let mut expected = BTreeSet::new();
    for n in 0..5 {
        let id = format!("b:before-backup:{n}");
        lab.host(1).put(&id, &json!({"n": n}));
        expected.insert(id);
    }
    wait_converged(&lab, &[0, 1, 2], &expected, "all hosts hold B's writes made before the backup");
    let b_id = lab.host(1).peer_id();
    assert!(lab.host_mut(1).stop().success(), "B did not stop cleanly");
    let backup = lab.dir().join("b-backup");
    copy_data_dir(&lab.host(1).data_dir, &backup);

    lab.host_mut(1).start(&["--join", &ticket]);
    for n in 0..8 {
        let id = format!("b:after-backup:{n}");
        lab.host(1).put(&id, &json!({"n": n}));
        expected.insert(id);
    }
    wait_converged(&lab, &[0, 2], &expected, "A and C hold B's writes made after the backup");
    assert!(lab.host_mut(1).stop().success(), "B did not stop cleanly");

    // Restored while its cable is out: B writes before it can learn that
    // its peers hold more of its own log (those writes reuse sequence
    // numbers: a fork).
    copy_data_dir(&backup, &lab.host(1).data_dir);
    lab.cut(1);
    lab.host_mut(1).start(&["--join", &ticket]);
    assert_eq!(lab.host(1).peer_id(), b_id, "a backup restored in place keeps its identity");
    for n in 0..3 {
        let id = format!("b:restored-offline:{n}");
        lab.host(1).put(&id, &json!({"n": n}));
        expected.insert(id);
    }
    for (h, id) in [(0, "a:during"), (2, "c:during")] {
        lab.host(h).put(id, &json!({"host": h}));
        expected.insert(id.to_owned());
    }
    let started = Instant::now();
    lab.restore(1);
    lab.host(1).put("b:reconnected", &json!({"n": 3}));
    expected.insert("b:reconnected".to_owned());
    wait_converged(&lab, &[0, 1, 2], &expected, "all hosts hold every acknowledged write after the restore");
    eprintln!("netlab: restored backup: converged {} ms after B's cable came back", started.elapsed().as_millis());
    let status = lab.host(1).status();
    let forks = status["forks"].as_array().cloned().unwrap_or_default();
    assert!(forks.iter().any(|f| f["origin"] == b_id.as_str() && f["last_seq"] == 6), "B reports the fork of its log at 6: {status}");
    for h in 0..3 {
        assert_eq!(lab.host(h).get("b:restored-offline:2"), Some(json!({"n": 2})), "h{h}");
        assert_eq!(lab.host(h).get("b:after-backup:7"), Some(json!({"n": 7})), "h{h}");
    }
    // One more write on B after everything settled reaches both peers.
    lab.host(1).put("b:last", &json!({"last": true}));
    expected.insert("b:last".to_owned());
    wait_converged(&lab, &[0, 2], &expected, "A and C hold B's write made after it caught up");
    assert_no_refused_batch(&lab, &[0, 1, 2]);
}

/// A's data directory is copied to host D and both run: D notices it is a
/// copy and takes a new identity before it writes, so writes on both (and
/// on B all along) converge everywhere and B's writes keep replicating.
#[test]
#[cfg_attr(not(feature = "quic"), ignore = "needs the quic feature (the nodes' network transport)")]
fn a_copied_data_dir_runs_next_to_its_original() {
    if !netlab::supported() {
        return;
    }
    let mut lab = Lab::lan(3);
    lab.host_mut(0).start(&[]);
    let ticket = lab.host(0).ticket();
    lab.host_mut(1).start(&["--join", &ticket]);
    let mut expected = BTreeSet::new();
    for n in 0..5 {
        let id = format!("a:before-copy:{n}");
        lab.host(0).put(&id, &json!({"n": n}));
        expected.insert(id);
    }
    wait_converged(&lab, &[0, 1], &expected, "A and B hold A's first writes");
    let a_id = lab.host(0).peer_id();
    assert!(lab.host_mut(0).stop().success(), "A did not stop cleanly");
    copy_data_dir(&lab.host(0).data_dir.clone(), &lab.host(2).data_dir.clone());
    lab.host_mut(0).start(&[]);
    let b_ticket = lab.host(1).ticket();
    lab.host_mut(2).start(&["--join", &b_ticket]);
    let d_id = lab.host(2).peer_id();
    assert_ne!(d_id, a_id, "the copy took a new identity");
    assert_eq!(lab.host(0).peer_id(), a_id, "the original kept its identity");

    let started = Instant::now();
    for n in 0..10 {
        for (h, name) in [(0, "a"), (2, "d"), (1, "b")] {
            let id = format!("{name}:after-copy:{n}");
            lab.host(h).put(&id, &json!({"host": h, "n": n}));
            expected.insert(id);
        }
    }
    let from_b: BTreeSet<String> = expected.iter().filter(|id| id.starts_with("b:")).cloned().collect();
    wait_converged(&lab, &[0, 2], &from_b, "A and D hold B's writes");
    wait_converged(&lab, &[0, 1, 2], &expected, "all hosts hold every acknowledged write");
    eprintln!("netlab: copied data dir: converged {} ms after the writes began", started.elapsed().as_millis());
    for h in 0..3 {
        assert_eq!(lab.host(h).get("d:after-copy:9"), Some(json!({"host": 2, "n": 9})), "h{h}");
        assert_eq!(lab.host(h).get("a:after-copy:9"), Some(json!({"host": 0, "n": 9})), "h{h}");
        let status = lab.host(h).status();
        assert_eq!(status["forks"], json!([]), "h{h}: no fork (the copy never wrote as A): {status}");
    }
    assert_no_refused_batch(&lab, &[0, 1, 2]);
}

/// The node's libp2p TCP multiaddr from its start line
/// (`/ip4/10.77.x.y/tcp/N/p2p/12D3KooW...`).
fn libp2p_tcp_address(started: &Value) -> String {
    started["listen"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|a| a.starts_with("/ip4/") && a.contains("/tcp/") && !a.contains("/ws"))
        .unwrap_or_else(|| panic!("no libp2p TCP address in the start line {started}"))
        .to_owned()
}

/// Six nodes on two LANs behind a router, mDNS off, each given as its only
/// bootstrap a node of another network (h0): they find each other through
/// the Kademlia DHT (under their network's key, across the router), connect
/// in a full mesh and converge, and each lists the five others as found by
/// the DHT. Neither the bootstrap nor a node of a third network on the same
/// DHT (h7, bootstrapped the same way, looking up its own key) is ever
/// anyone's sync peer: no member's `GET /peers` lists either as connected at
/// any poll, and no write crosses either way.
#[test]
fn routed_nodes_find_their_network_through_a_strangers_dht() {
    if !netlab::supported() {
        return;
    }
    // h0..h3 on 10.77.1.0/24, h4..h7 on 10.77.2.0/24.
    let mut lab = Lab::routed(4, 4);
    let stranger = lab.host_mut(0).start(&["--no-mdns"]);
    let bootstrap = libp2p_tcp_address(&stranger);
    let members = [1, 2, 3, 4, 5, 6];
    let outsider = 7; // its own, fresh network: a third secret
    let started = Instant::now();
    lab.host_mut(1).start(&["--no-mdns", "--bootstrap", &bootstrap]);
    for &h in &members[1..] {
        share_secret(&lab, 1, h);
        lab.host_mut(h).start(&["--no-mdns", "--bootstrap", &bootstrap]);
    }
    lab.host_mut(outsider).start(&["--no-mdns", "--bootstrap", &bootstrap]);
    let strangers = [(0, lab.host(0).peer_id()), (outsider, lab.host(outsider).peer_id())];
    let member_ids: Vec<String> = members.iter().map(|&h| lab.host(h).peer_id()).collect();
    // Checked at every poll below, not only at the end.
    let no_stranger_connected = |lab: &Lab| {
        for &h in &members {
            let connected = lab.host(h).connected_peers();
            for (s, id) in &strangers {
                assert!(!connected.contains(id), "h{h} is connected for sync to h{s} of another network: {}", lab.host(h).peers());
            }
        }
    };
    lab.wait_until(CONVERGE_TIMEOUT, "the six members connect to each other through the DHT", || {
        no_stranger_connected(&lab);
        for (i, &h) in members.iter().enumerate() {
            let connected: BTreeSet<String> = lab.host(h).connected_peers().into_iter().collect();
            let missing: Vec<usize> =
                members.iter().enumerate().filter(|&(j, _)| j != i && !connected.contains(&member_ids[j])).map(|(_, &o)| o).collect();
            if !missing.is_empty() {
                return Err(format!("h{h} is not connected to {missing:?}"));
            }
        }
        Ok(())
    });
    let meshed = started.elapsed();
    // `GET /peers/discovered`: each member lists the five others with the
    // method `dht`, and the DHT named no one else.
    for &h in &members {
        let others: Vec<usize> = members.iter().copied().filter(|&o| o != h).collect();
        wait_discovered(&lab, h, &others, "dht");
        for entry in discovered(&lab, h) {
            if entry["methods"].as_array().is_some_and(|m| m.contains(&json!("dht"))) {
                let id = entry["peer_id"].as_str().unwrap_or_default();
                assert!(member_ids.iter().any(|m| m == id), "h{h}: the DHT named a non-member: {entry}");
            }
        }
    }
    let mut expected = BTreeSet::new();
    for &h in &members {
        let id = format!("dht:h{h}");
        lab.host(h).put(&id, &json!({"host": h}));
        expected.insert(id);
    }
    lab.host(0).put("stranger:1", &json!({"from": "another network"}));
    lab.host(outsider).put("outsider:1", &json!({"from": "a third network"}));
    let writes_done = Instant::now();
    lab.wait_until(CONVERGE_TIMEOUT, "the six members hold the 6 writes", || {
        no_stranger_connected(&lab);
        members.iter().map(|&h| holds_all(&lab, h, &expected)).collect::<Result<Vec<()>, String>>().map(drop)
    });
    let converged = writes_done.elapsed();
    no_stranger_connected(&lab);
    for &h in &members {
        for foreign in ["stranger:1", "outsider:1"] {
            assert_eq!(lab.host(h).get(foreign), None, "h{h} holds {foreign}, written in another network");
        }
    }
    for (s, _) in &strangers {
        assert!(lab.host(*s).connected_peers().is_empty(), "h{s} of another network has sync peers: {}", lab.host(*s).peers());
        for id in &expected {
            assert_eq!(lab.host(*s).get(id), None, "h{s} of another network holds {id}");
        }
    }
    // The outsider looked up its own network's key on the same DHT and
    // found none of the members there.
    let found = discovered(&lab, outsider);
    assert!(
        !found
            .iter()
            .any(|p| p["methods"].as_array().is_some_and(|m| m.contains(&json!("dht")))
                && member_ids.iter().any(|m| p["peer_id"] == m.as_str())),
        "h{outsider} found a member under its own key: {found:?}"
    );
    eprintln!(
        "netlab: routed(4,4) by a stranger's DHT, a third network beside: full mesh of 6 {} ms after the first member started; writes converged in {} ms",
        meshed.as_millis(),
        converged.as_millis()
    );
}
