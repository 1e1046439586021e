//! An outsider cannot keep members out of a node's sync handshakes over
//! libp2p: its `/pluresdb/sync/1` streams, opened and left silent after
//! the node's nonce `hello`, hold one address's share of the handshake
//! budget, and when that share is the whole budget the oldest gives way to
//! a member from another address.
//!
//! Telling addresses apart on loopback: every TCP connection to 127/8
//! leaves from 127.0.0.1, so the outsider (a bare libp2p client over TCP)
//! comes from 127.0.0.1; the member listens on QUIC-v1 at 127.0.0.2 and
//! dials from that socket (libp2p's QUIC dials from its listener), so it
//! comes from 127.0.0.2.

mod common;

use common::*;
use libp2p::Multiaddr;
use pluresdb_net::{ErrorCode, NetworkConfig, NetworkEngine, NetworkError};
use std::time::Duration;
use tokio::sync::mpsc;

/// The default budget of incoming handshakes in flight and its share per
/// address.
const BUDGET: usize = 32;
const PER_ADDRESS: usize = 8;

/// A node under attack: handshake and idle timeouts far longer than the
/// test, so that nothing the outsider holds expires while the member
/// connects.
fn victim_config(per_address: usize) -> NetworkConfig {
    NetworkConfig {
        max_handshakes: BUDGET,
        max_handshakes_per_ip: per_address,
        handshake_timeout: Duration::from_secs(120),
        connection_timeout: Duration::from_secs(120),
        ..NetworkConfig::loopback()
    }
}

/// An outsider's silent sync streams: opened from one TCP connection
/// (from 127.0.0.1) and never written to; each is read to its end in a
/// task of its own, which reports the stream's number and the code of its
/// last frame if that was an `error` (`None` otherwise).
struct Silent {
    client: RawClient,
    address: String,
    opened: usize,
    ended_tx: mpsc::Sender<(usize, Option<ErrorCode>)>,
    ended: mpsc::Receiver<(usize, Option<ErrorCode>)>,
}

impl Silent {
    fn new(victim: &Node) -> Self {
        let (ended_tx, ended) = mpsc::channel(1024);
        Silent { client: RawClient::spawn(), address: address(&victim.engine, Kind::Tcp), opened: 0, ended_tx, ended }
    }

    /// Opens one stream; returns its number.
    async fn open(&mut self) -> usize {
        let mut stream = self.client.open(&self.address).await;
        let number = self.opened;
        self.opened += 1;
        let ended_tx = self.ended_tx.clone();
        tokio::spawn(async move {
            let frames = read_to_end_unbounded(&mut stream).await;
            let code = frames.last().and_then(error_of).map(|(code, _)| code);
            let _ = ended_tx.send((number, code)).await;
        });
        number
    }

    /// The next stream to end (within the deadline).
    async fn next_ended(&mut self) -> (usize, Option<ErrorCode>) {
        tokio::time::timeout(DEADLINE, self.ended.recv()).await.expect("a stream ended in time").expect("the readers run")
    }

    /// Opens streams one at a time until `victim` holds `count` of them in
    /// their handshake. A stream that ends instead (libp2p_stream drops an
    /// incoming stream unread when the engine has not taken the one before
    /// it yet) is replaced.
    async fn fill(&mut self, victim: &Node, count: usize) {
        while victim.engine.handshakes_in_flight() < count {
            let before = victim.engine.handshakes_in_flight();
            let number = self.open().await;
            let deadline = tokio::time::Instant::now() + DEADLINE;
            loop {
                if victim.engine.handshakes_in_flight() > before {
                    break;
                }
                if let Ok((ended, code)) = self.ended.try_recv() {
                    assert_eq!((ended, code), (number, None), "a stream in the budget's room ended");
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "stream {number} neither counted nor ended");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Reads frames until the stream ends, however long that takes (the
/// streams that hold their slot end when the test does).
async fn read_to_end_unbounded(stream: &mut libp2p::Stream) -> Vec<pluresdb_net::Frame> {
    use futures::AsyncReadExt;
    let mut decoder = pluresdb_net::FrameDecoder::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => decoder.extend(&chunk[..n]),
        }
    }
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = decoder.decode() {
        frames.push(frame);
    }
    frames
}

/// A member that listens (and so dials) on QUIC-v1 at `ip`.
async fn member_at(ip: &str) -> Node {
    let listen: Multiaddr = format!("/ip4/{ip}/udp/0/quic-v1").parse().unwrap();
    start_with(member(1), NetworkConfig::loopback(), |engine| engine.with_listen_addresses(vec![listen])).await
}

/// A member dials `victim` over QUIC-v1 from 127.0.0.2 and must be
/// linked.
async fn member_is_admitted(victim: &mut Node) -> Node {
    member_from_is_admitted(victim, "127.0.0.2").await
}

/// A member dials `victim` over QUIC-v1 from `ip` and must be linked.
async fn member_from_is_admitted(victim: &mut Node, ip: &str) -> Node {
    let member_node = member_at(ip).await;
    let address = address(&victim.engine, Kind::Quic);
    let found = tokio::time::timeout(DEADLINE, member_node.engine.connect_peer(&address))
        .await
        .expect("the member got an answer within the deadline")
        .expect("the member is admitted");
    assert_eq!(found, victim.id);
    let member_id = member_node.id;
    wait_for(&mut victim.events, |event| matches!(event, pluresdb_net::PeerEvent::Connected { peer_id, .. } if *peer_id == member_id))
        .await;
    member_node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsider_s_silent_sync_streams_from_one_address_hold_one_address_s_share() {
    let mut victim = start_with(member(1), victim_config(PER_ADDRESS), |engine| engine).await;
    let mut outsider = Silent::new(&victim);
    outsider.fill(&victim, PER_ADDRESS).await;
    // Past its address's share, every stream ends at once: refused and
    // told why (or dropped unread, as in `fill`), though the budget has
    // room for 24 more.
    let mut told = 0;
    for _ in 0..BUDGET {
        let number = outsider.open().await;
        let (ended, code) = outsider.next_ended().await;
        assert_eq!(ended, number, "only the stream over the share ends");
        assert!(matches!(code, Some(ErrorCode::TooManyConnections) | None), "{code:?}");
        told += usize::from(code.is_some());
    }
    assert!(told > 0, "no refused stream was told why");
    assert_eq!(victim.engine.handshakes_in_flight(), PER_ADDRESS);

    let member_node = member_is_admitted(&mut victim).await;
    assert!(victim.engine.is_peer_connected(&member_node.id).await);
    assert_eq!(victim.engine.handshakes_in_flight(), PER_ADDRESS, "the outsider's share is untouched");
    stop(member_node).await;
    stop(victim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_budget_full_of_one_address_gives_way_to_a_member_from_another() {
    // One address may hold the whole budget: only eviction lets the member
    // in.
    let mut victim = start_with(member(1), victim_config(BUDGET), |engine| engine).await;
    let mut outsider = Silent::new(&victim);
    outsider.fill(&victim, BUDGET).await;

    let member_node = member_is_admitted(&mut victim).await;
    assert!(victim.engine.is_peer_connected(&member_node.id).await);
    // The member's handshake took the slot of the outsider's oldest, which
    // was told why; the member's own slot is free again once admitted.
    let (_, code) = outsider.next_ended().await;
    assert_eq!(code, Some(ErrorCode::TooManyConnections));
    assert_eq!(victim.engine.handshakes_in_flight(), BUDGET - 1);
    stop(member_node).await;
    stop(victim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dht_neighbours_do_not_count_against_max_connections_and_give_way_to_members() {
    // Two sync links at most; incoming connections without a link (the
    // DHT's, or anyone's before its sync handshake) have a budget of two
    // as well.
    let config = NetworkConfig { max_connections: 2, ..NetworkConfig::loopback() };
    let mut victim = start_with(member(1), config, |engine| engine).await;
    let address = address(&victim.engine, Kind::Tcp);
    // Neighbours that never open a sync stream (identify only), all from
    // 127.0.0.1: two fill the budget, the third is refused (its address
    // already holds the most).
    let mut neighbours = Vec::new();
    for _ in 0..3 {
        let neighbour = RawClient::spawn();
        neighbour.dial(&address).await;
        neighbours.push(neighbour);
    }
    eventually("two neighbours hold the budget", || victim.engine.unlinked_connections() == 2).await;

    // Members from other addresses take the neighbours' places and link,
    // up to max_connections.
    let first = member_from_is_admitted(&mut victim, "127.0.0.2").await;
    let second = member_from_is_admitted(&mut victim, "127.0.0.3").await;
    assert_eq!(victim.engine.get_connected_peers().await.unwrap().len(), 2);
    assert!(victim.engine.unlinked_connections() <= 2);

    // A third member connects but gets no sync link: the links are full.
    let third = member_at("127.0.0.4").await;
    let err = third.engine.connect_peer(&common::address(&victim.engine, Kind::Quic)).await.expect_err("sync links are full");
    assert!(matches!(err, NetworkError::Refused { code: ErrorCode::TooManyConnections, .. }), "{err}");
    assert!(!victim.engine.is_peer_connected(&third.id).await);
    assert!(victim.engine.is_peer_connected(&first.id).await && victim.engine.is_peer_connected(&second.id).await);
    for node in [first, second, third] {
        stop(node).await;
    }
    stop(victim).await;
}
