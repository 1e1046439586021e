//! Strangers cannot fill a node's connection slots: connection attempts
//! that never get admitted (TLS completed and then silence, or a first
//! packet from an address that never answers, as a spoofed one) hold only
//! the small budget of handshakes in flight, and an honest peer still
//! connects both ways: it dials the node, and the node dials it.
//!
//! The attackers come from other loopback addresses (127.0.0.2, ...: Linux
//! routes all of 127/8 to `lo`), so the per-address limit and the eviction
//! rule see them as distinct hosts, as they would be on a network.

mod common;

use common::{connected, node, start, until, Options, DEADLINE};
use pluresdb_net::{NetworkConfig, NetworkEngine};
use pluresdb_security::{tls, Identity};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// The attacking hosts, `HOSTS` loopback addresses other than 127.0.0.1.
const HOSTS: u8 = 5;

/// The default budget of incoming handshakes in flight, and its share per
/// address.
const BUDGET: usize = 32;
const PER_HOST: usize = 8;

fn host(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + n))
}

/// A node under attack: a small connection limit (the old code let
/// handshakes take these slots) and timeouts far longer than the test, so
/// that nothing the attackers hold expires while the honest peers connect.
fn victim_options() -> Options {
    let mut options = Options::new(2);
    options.config = NetworkConfig {
        max_connections: 8,
        handshake_timeout: Duration::from_secs(120),
        connection_timeout: Duration::from_secs(120),
        ..common::config()
    };
    options
}

fn client_config(seed: u8) -> quinn::ClientConfig {
    let identity = Identity::from_seed([seed; 32]);
    let tls = tls::client_config(&identity, None).expect("client TLS config");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC client config");
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// A raw quinn client at `ip` with a valid node certificate: it completes
/// the TLS handshake (following a Retry if asked) and then never speaks.
async fn silent_client(seed: u8, ip: IpAddr, server: SocketAddr) -> (quinn::Endpoint, Result<quinn::Connection, quinn::ConnectionError>) {
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(ip, 0)).expect("client endpoint");
    endpoint.set_default_client_config(client_config(seed));
    let connection = match endpoint.connect(server, "pluresdb") {
        Ok(connecting) => connecting.await,
        Err(err) => panic!("connect: {err}"),
    };
    (endpoint, connection)
}

/// Sends the first packet of a QUIC connection attempt to `server` from a
/// socket at `ip` that never answers what comes back: how a spoofed source
/// address looks to the server. Returns the socket and the first byte of
/// the server's answer.
async fn first_packet_from(seed: u8, ip: IpAddr, server: SocketAddr) -> (UdpSocket, u8) {
    // A real client makes the packet; the socket at `ip` forwards its first
    // datagram and keeps whatever the server answers to itself.
    let relay = UdpSocket::bind(SocketAddr::new(ip, 0)).await.expect("bind");
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client endpoint");
    client.set_default_client_config(client_config(seed));
    let connecting = client.connect(relay.local_addr().unwrap(), "pluresdb").expect("connect");
    let mut datagram = vec![0u8; 2048];
    let (len, _) = tokio::time::timeout(DEADLINE, relay.recv_from(&mut datagram)).await.expect("the client's first packet").unwrap();
    drop(connecting);
    client.close(quinn::VarInt::from_u32(0), b"");
    relay.send_to(&datagram[..len], server).await.unwrap();
    let mut answer = vec![0u8; 2048];
    loop {
        let (_, from) = tokio::time::timeout(DEADLINE, relay.recv_from(&mut answer)).await.expect("the server's answer").unwrap();
        if from == server {
            return (relay, answer[0]);
        }
    }
}

/// A long-header QUIC v1 packet of type Retry (RFC 9000 17.2.5).
fn is_retry(first_byte: u8) -> bool {
    first_byte & 0xf0 == 0xf0
}

/// Dials `victim` from a fresh honest node, and has `victim` dial another;
/// returns how long each took.
async fn honest_peers_connect_both_ways(victim: &mut common::Node) -> (Duration, Duration) {
    let mut dialler = node(40).await;
    let started = Instant::now();
    let found = tokio::time::timeout(DEADLINE, dialler.engine.connect_peer(&victim.addr.to_string()))
        .await
        .expect("dial in: no answer within the deadline")
        .expect("dial in");
    let dial_in = started.elapsed();
    assert_eq!(found, victim.id);
    connected(&mut victim.events, &dialler.id).await;
    connected(&mut dialler.events, &victim.id).await;

    let mut listener = node(41).await;
    let started = Instant::now();
    let found = tokio::time::timeout(DEADLINE, victim.engine.connect_peer(&listener.addr.to_string()))
        .await
        .expect("dial out: no answer within the deadline")
        .expect("dial out");
    let dial_out = started.elapsed();
    assert_eq!(found, listener.id);
    connected(&mut victim.events, &listener.id).await;
    connected(&mut listener.events, &victim.id).await;
    (dial_in, dial_out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_speak_after_tls_leave_room_for_honest_peers() {
    let mut victim = start(victim_options()).await;
    // More silent clients than the budget holds, PER_HOST from each host.
    let mut attackers = tokio::task::JoinSet::new();
    for n in 0..HOSTS {
        for k in 0..PER_HOST as u8 {
            attackers.spawn(silent_client(100 + n * 10 + k, host(n), victim.addr));
        }
    }
    let mut held = Vec::new();
    while let Some(joined) = attackers.join_next().await {
        held.push(joined.expect("attacker task"));
    }
    let silent: Vec<&quinn::Connection> = held.iter().filter_map(|(_, connection)| connection.as_ref().ok()).collect();
    assert!(silent.len() >= BUDGET, "only {} silent clients completed TLS", silent.len());
    // Until it is admitted, a connection may not open a bulk stream: quinn
    // knows at once that it has no credit for one (a connection that was
    // evicted meanwhile fails instead).
    for connection in &silent {
        let mut open = std::pin::pin!(connection.open_uni());
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        let opened = open.as_mut().poll(&mut context);
        assert!(!matches!(opened, std::task::Poll::Ready(Ok(_))), "a stranger opened a bulk stream");
    }
    until("the handshake budget is full of silent clients", async || victim.engine.handshakes_in_flight() == BUDGET).await;

    let (dial_in, dial_out) = honest_peers_connect_both_ways(&mut victim).await;
    eprintln!("budget full of {BUDGET} silent TLS handshakes: honest dial in {dial_in:?}, dial out {dial_out:?}");
    assert!(victim.engine.handshakes_in_flight() <= BUDGET);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_packets_that_never_complete_hold_no_slot_once_under_load() {
    let mut victim = start(victim_options()).await;
    let attempts = usize::from(HOSTS) * PER_HOST;
    let mut sockets = Vec::new();
    let mut retries = 0;
    for i in 0..attempts {
        let (socket, first_byte) = first_packet_from(100 + i as u8, host((i / PER_HOST) as u8), victim.addr).await;
        retries += usize::from(is_retry(first_byte));
        sockets.push(socket);
    }
    // A quarter of the budget is taken at face value; past that, each
    // attempt must prove its address first, which these never do.
    let accepted = BUDGET / 4;
    assert_eq!(retries, attempts - accepted, "every attempt past the first {accepted} is answered with a Retry");
    assert_eq!(victim.engine.handshakes_in_flight(), accepted);

    let (dial_in, dial_out) = honest_peers_connect_both_ways(&mut victim).await;
    eprintln!("{attempts} first packets that never complete: honest dial in {dial_in:?}, dial out {dial_out:?}");
    drop(sockets);
}
