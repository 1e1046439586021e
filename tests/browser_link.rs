//! A node's WebSocket link for browser pages (`serve --browser-listen`),
//! against a real `pluresdb serve`: the page side is the browser
//! package's own replica and link (crates/wasm, as the page runs them),
//! driven natively over a real WebSocket. What a member page, an outsider
//! and a page sending junk can do.

mod common;

use common::{invite, Node};
use futures_util::{SinkExt, StreamExt};
use pluresdb_wasm::BrowserReplica;
use serde_json::{json, Value};
use std::io::Read;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Every wait in these tests ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(60);

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn browser_node(dir: &std::path::Path) -> (Node, String, String) {
    let node = Node::start_with(dir, &["--no-mdns", "--no-libp2p", "--browser-listen", "127.0.0.1:0"]);
    let url = node.started["browser"].as_str().unwrap_or_else(|| panic!("no browser URL in {}", node.started)).to_owned();
    let ticket = invite(dir, node.listen.as_deref().expect("a QUIC address"));
    (node, url, ticket)
}

/// A page connected to `url` with `ticket`.
async fn page_connect(page: &mut BrowserReplica, url: &str, ticket: &str) -> Socket {
    let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("the browser socket opens");
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).unwrap();
    page.connect(ticket, nonce, now_ms()).expect("a valid ticket");
    socket
}

/// Moves messages between the page and the node until `done` holds or the
/// link ends (as the JS client does: journal first, then messages).
async fn pump(page: &mut BrowserReplica, socket: &mut Socket, mut done: impl FnMut(&mut BrowserReplica) -> bool) -> Result<(), String> {
    let give_up = Instant::now() + DEADLINE;
    loop {
        let _ = page.take_journal();
        for (_, message) in page.take_messages() {
            socket.send(Message::Binary(message.into())).await.map_err(|e| format!("send: {e}"))?;
        }
        if done(page) {
            return Ok(());
        }
        if let Some((_, reason)) = page.take_ended().into_iter().next() {
            return Err(reason);
        }
        if Instant::now() > give_up {
            return Err(format!("timed out; link {}", page.link_status()));
        }
        let wait = page.next_timeout_ms(now_ms()).unwrap_or(100).min(100);
        match tokio::time::timeout(Duration::from_millis(wait), socket.next()).await {
            Ok(Some(Ok(Message::Binary(bytes)))) => page.handle_message("node", &bytes, now_ms()),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) => page.handle_lost("node", "the node closed the socket", now_ms()),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(err))) => page.handle_lost("node", &err.to_string(), now_ms()),
            Err(_) => page.handle_timeout(now_ms()),
        }
    }
}

/// A page with the network's ticket links to the node over WebSocket, is
/// listed among its peers (transport `websocket`, under the page's own
/// peer id), and they sync both ways: a page write shows on the node's API,
/// a node write (HTTP) arrives in the page, each signed by its author.
#[test]
fn a_page_and_a_node_sync_both_ways_over_the_websocket_link() {
    let dir = tempfile::tempdir().unwrap();
    let (node, url, ticket) = browser_node(dir.path());
    let mut page = BrowserReplica::open(None, [], now_ms()).unwrap();
    let page_id = page.peer_id();
    let result = runtime().block_on(async {
        let mut socket = page_connect(&mut page, &url, &ticket).await;
        pump(&mut page, &mut socket, |p| p.link_status()["state"] == "connected").await?;
        page.put("page:1", json!({"from": "page"}), now_ms()).map_err(|e| e.to_string())?;
        let (status, _) = node.request("PUT", "/nodes/node:1", r#"{"from":"node"}"#);
        assert_eq!(status, 200);
        let mut on_node = Value::Null;
        pump(&mut page, &mut socket, |p| {
            if on_node.is_null() {
                let (status, body) = node.request("GET", "/nodes/page:1", "");
                if status == 200 {
                    on_node = body;
                }
            }
            !on_node.is_null() && !p.get("node:1").unwrap().is_null()
        })
        .await?;
        // While the page is linked.
        let (_, peers) = node.request("GET", "/peers", "");
        Ok::<_, String>((on_node, peers))
    });
    let (_, history) = node.request("GET", "/nodes/page:1/history", "");
    let (clean, stderr) = node.stop();
    let (on_node, peers) = result.unwrap_or_else(|err| panic!("{err}\nnode stderr: {stderr}"));
    assert_eq!(on_node["value"]["from"], "page", "{on_node}");
    assert_eq!(page.get("node:1").unwrap()["value"]["from"], "node");
    let listed = peers["peers"].as_array().cloned().unwrap_or_default();
    assert!(listed.iter().any(|p| p["peer_id"] == page_id.as_str() && p["transport"] == "websocket"), "the node lists the page: {peers}");
    assert!(history.to_string().contains(&page_id), "the page's write has the page as its origin: {history}");
    assert!(clean, "{stderr}");
}

/// A page whose ticket carries another secret is refused `access_denied`
/// (as a native peer without the secret is), learns why, and the node
/// keeps serving with no peer added.
#[test]
fn a_page_without_the_network_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, url, ticket) = browser_node(dir.path());
    let real: pluresdb_security::Ticket = ticket.parse().unwrap();
    let forged = pluresdb_security::Ticket {
        peer_id: real.peer_id,
        addresses: real.addresses.clone(),
        secret: pluresdb_security::NetworkSecret::generate().unwrap(),
    }
    .to_text()
    .unwrap();
    let mut page = BrowserReplica::open(None, [], now_ms()).unwrap();
    let ended = runtime().block_on(async {
        let mut socket = page_connect(&mut page, &url, &forged).await;
        pump(&mut page, &mut socket, |_| false).await
    });
    let (status, peers) = node.request("GET", "/peers", "");
    let (clean, stderr) = node.stop();
    let reason = ended.expect_err("the link cannot succeed");
    assert!(reason.contains("access_denied") || reason.contains("proof"), "{reason}");
    assert_eq!(status, 200);
    assert!(!peers.to_string().contains(&page.peer_id()), "{peers}");
    assert!(clean, "{stderr}");
}

/// Junk on the browser socket: a text message, bytes that are not a
/// frame, a socket that never speaks, and more sockets stuck before the
/// WebSocket upgrade than the handshake budget allows from one address.
/// Each is refused or closed; the node serves its API and a member page
/// afterwards.
#[test]
fn junk_on_the_browser_socket_is_refused_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (node, url, ticket) = browser_node(dir.path());
    let address = url.trim_start_matches("ws://").trim_end_matches('/').to_owned();
    let outcome = runtime().block_on(async {
        let mut findings = Vec::new();
        for (what, message) in
            [("a text message", Message::Text("hello".into())), ("bytes that are not a frame", Message::Binary(vec![9u8; 64].into()))]
        {
            let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
            socket.send(message).await.unwrap();
            // The node's nonce hello, then its error frame, then the close.
            let mut error_code = None;
            while let Ok(Some(Ok(message))) = tokio::time::timeout(DEADLINE, socket.next()).await {
                if let Message::Binary(bytes) = message {
                    if bytes.get(1) == Some(&pluresdb_net::FrameKind::Error.code()) {
                        let frame = pluresdb_net::Frame::new(pluresdb_net::FrameKind::Error, bytes.slice(6..));
                        error_code = match pluresdb_net::NetworkMessage::from_frame(&frame) {
                            Ok(pluresdb_net::NetworkMessage::Error { code, .. }) => Some(code),
                            _ => None,
                        };
                    }
                }
            }
            findings.push((what, error_code));
        }
        // A socket that never speaks is closed after the handshake timeout.
        let (mut silent, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let started = Instant::now();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, silent.next()).await {}
        let silent_closed = started.elapsed() < DEADLINE;
        // Raw TCP connections that never upgrade: the 9th from one address
        // is closed at once (max_handshakes_per_ip = 8).
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(std::net::TcpStream::connect(&address).unwrap());
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut ninth = std::net::TcpStream::connect(&address).unwrap();
        ninth.set_read_timeout(Some(DEADLINE)).unwrap();
        let ninth_closed = matches!(ninth.read(&mut [0u8; 16]), Ok(0) | Err(_));
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
        // A member page links up afterwards.
        let mut page = BrowserReplica::open(None, [], now_ms()).unwrap();
        let mut socket = page_connect(&mut page, &url, &ticket).await;
        let member = pump(&mut page, &mut socket, |p| p.link_status()["state"] == "connected").await;
        (findings, silent_closed, ninth_closed, member)
    });
    let (status, _) = node.request("GET", "/status", "");
    let (clean, stderr) = node.stop();
    let (findings, silent_closed, ninth_closed, member) = outcome;
    assert_eq!(findings[0].1, Some(pluresdb_net::ErrorCode::UnsupportedVersion), "{findings:?}");
    assert_eq!(findings[1].1, Some(pluresdb_net::ErrorCode::UnsupportedVersion), "{findings:?}");
    assert!(silent_closed, "a silent socket stays open");
    assert!(ninth_closed, "a 9th socket stuck before the upgrade was served");
    assert!(member.is_ok(), "a member page could not link afterwards: {member:?}\n{stderr}");
    assert_eq!(status, 200);
    assert!(clean, "{stderr}");
}

/// The node relays signalling between two linked pages (what they set up
/// a WebRTC channel with), naming the sender as the node authenticated it;
/// a signal for a peer that is not a linked page is dropped and the
/// sender's link stays up.
#[test]
fn the_node_relays_signals_between_linked_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (node, url, ticket) = browser_node(dir.path());
    let mut a = BrowserReplica::open(None, [], now_ms()).unwrap();
    let mut b = BrowserReplica::open(None, [], now_ms()).unwrap();
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    let result = runtime().block_on(async {
        let mut socket_a = page_connect(&mut a, &url, &ticket).await;
        let mut socket_b = page_connect(&mut b, &url, &ticket).await;
        pump(&mut a, &mut socket_a, |p| p.link_status()["state"] == "connected").await?;
        pump(&mut b, &mut socket_b, |p| p.link_status()["state"] == "connected").await?;
        a.send_signal("12D3KooWLV3fXgnJiLBkQoVaGRoYEf8rjqVnX6DVaYd3DZsvhhYT", b"lost".to_vec()).map_err(|e| e.to_string())?;
        a.send_signal(&b_id, b"{\"type\":\"offer\"}".to_vec()).map_err(|e| e.to_string())?;
        pump(&mut a, &mut socket_a, |_| true).await?;
        let mut got = Vec::new();
        pump(&mut b, &mut socket_b, |p| {
            got.extend(p.take_signals());
            !got.is_empty()
        })
        .await?;
        // A's link survived the dropped signal.
        pump(&mut a, &mut socket_a, |p| p.link_status()["state"] == "connected").await?;
        Ok::<_, String>(got)
    });
    let (clean, stderr) = node.stop();
    let got = result.unwrap_or_else(|err| panic!("{err}\n{stderr}"));
    assert_eq!(got, vec![(a_id, b"{\"type\":\"offer\"}".to_vec())]);
    assert!(clean, "{stderr}");
}
