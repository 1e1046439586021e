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
        // Only the WebSocket link ending ends the pump (a WebRTC channel's
        // link ending leaves the page on its WebSocket).
        if let Some((_, reason)) = page.take_ended().into_iter().find(|(name, _)| name == "node") {
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
    let node_id = ticket.parse::<pluresdb_security::Ticket>().unwrap().peer_id.to_string();
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
        // The node's own signal (it offers WebRTC) is not a relayed one.
        pump(&mut b, &mut socket_b, |p| {
            got.extend(p.take_signals().into_iter().filter(|(from, _)| *from != node_id));
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

/// A native WebRTC peer (str0m) standing in for the page's browser: its
/// own UDP socket on loopback, one data channel, the page's replica
/// (`BrowserReplica`) on both the WebSocket and the channel, as the JS
/// client runs it.
struct RtcPage {
    rtc: str0m::Rtc,
    udp: tokio::net::UdpSocket,
    local: std::net::SocketAddr,
    channel: Option<str0m::channel::ChannelId>,
    /// Frames the page's replica has for the channel, waiting for room.
    out: std::collections::VecDeque<Vec<u8>>,
    /// The channel's link was handed to the replica.
    opened: bool,
    /// How the session ended: the node closed it (the channel or DTLS), or
    /// ICE gave up on a node gone silent (20 s or more).
    ended: Option<&'static str>,
    /// Bind a fingerprint other than the node's, as a page would whose
    /// SDP a relay rewrote.
    swap_fingerprint: bool,
}

/// [`RtcPage::ended`] when the node closed the session.
const CLOSED_BY_NODE: &str = "the node closed the session";

/// A fresh WebRTC peer and its offer (one data channel, `channels` in all).
async fn rtc_page(channels: usize) -> (RtcPage, String, str0m::change::SdpPendingOffer) {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = udp.local_addr().unwrap();
    let mut rtc =
        str0m::RtcConfig::new().set_crypto_provider(std::sync::Arc::new(str0m::crypto::from_feature_flags())).build(Instant::now());
    rtc.add_local_candidate(str0m::Candidate::host(local, "udp").unwrap());
    let mut api = rtc.sdp_api();
    for n in 0..channels {
        api.add_channel(format!("pluresdb-{n}"));
    }
    let (offer, pending) = api.apply().expect("an offer");
    (
        RtcPage { rtc, udp, local, channel: None, out: Default::default(), opened: false, ended: None, swap_fingerprint: false },
        offer.to_sdp_string(),
        pending,
    )
}

/// The node's answer to `attempt` (or its refusal), from the signals the
/// page took.
fn node_reply(signals: &mut Vec<(String, Vec<u8>)>, node_id: &str, attempt: &str) -> Option<Value> {
    let at = signals
        .iter()
        .position(|(from, data)| from == node_id && serde_json::from_slice::<Value>(data).is_ok_and(|v| v["attempt"] == attempt))?;
    let (_, data) = signals.remove(at);
    serde_json::from_slice(&data).ok()
}

/// Sends `message` (JSON) to the node as a signal and pumps until the
/// node's reply to its `attempt` arrives.
async fn signal_node(page: &mut BrowserReplica, socket: &mut Socket, node_id: &str, message: Value) -> Result<Value, String> {
    let attempt = message["attempt"].as_str().unwrap_or_default().to_owned();
    page.send_signal(node_id, message.to_string().into_bytes()).map_err(|e| e.to_string())?;
    let mut signals = Vec::new();
    let mut reply = None;
    pump(page, socket, |p| {
        signals.extend(p.take_signals());
        reply = node_reply(&mut signals, node_id, &attempt);
        reply.is_some()
    })
    .await?;
    reply.ok_or_else(|| "no reply".to_owned())
}

/// Moves everything between the page's replica, its WebSocket, and its
/// WebRTC peer until `done` holds (or the deadline). `extra` writes on the
/// open channel before the replica's frames when it returns bytes.
async fn pump_rtc(
    page: &mut BrowserReplica,
    socket: &mut Socket,
    rtc: &mut RtcPage,
    node_id: &str,
    mut done: impl FnMut(&mut BrowserReplica, &mut RtcPage) -> bool,
) -> Result<(), String> {
    let give_up = Instant::now() + DEADLINE;
    let mut buf = vec![0u8; 2048];
    loop {
        let _ = page.take_journal();
        for (name, message) in page.take_messages() {
            if name == "node" {
                socket.send(Message::Binary(message.into())).await.map_err(|e| format!("send: {e}"))?;
            } else {
                rtc.out.push_back(message);
            }
        }
        if let Some(id) = rtc.channel {
            while let Some(piece) = rtc.out.front() {
                match rtc.rtc.channel(id).map(|mut c| c.write(true, piece)) {
                    Some(Ok(true)) => {
                        rtc.out.pop_front();
                    }
                    _ => break,
                }
            }
        }
        let timeout = loop {
            match rtc.rtc.poll_output().map_err(|e| format!("rtc: {e}"))? {
                str0m::Output::Timeout(at) => break at,
                str0m::Output::Transmit(t) => {
                    let _ = rtc.udp.send_to(&t.contents, t.destination).await;
                }
                str0m::Output::Event(event) => match event {
                    str0m::Event::ChannelOpen(id, _) if rtc.channel.is_none() => {
                        rtc.channel = Some(id);
                        let mut nonce = [0u8; 32];
                        getrandom::fill(&mut nonce).unwrap();
                        let local = pluresdb_net::webrtc::sdp_fingerprint(rtc.rtc.direct_api().local_dtls_fingerprint());
                        let remote = rtc.rtc.direct_api().remote_dtls_fingerprint().map(pluresdb_net::webrtc::sdp_fingerprint);
                        let fingerprints = if rtc.swap_fingerprint { Some("sha-256 66:66:66".to_owned()) } else { remote };
                        let fingerprints = fingerprints.as_deref().map(|remote| (local.as_str(), remote));
                        page.open_channel(node_id, true, nonce, fingerprints, now_ms()).map_err(|e| e.to_string())?;
                        rtc.opened = true;
                    }
                    str0m::Event::ChannelData(data) if Some(data.id) == rtc.channel => page.handle_message(node_id, &data.data, now_ms()),
                    str0m::Event::ChannelClose(id) if Some(id) == rtc.channel => {
                        rtc.ended = Some(CLOSED_BY_NODE);
                        page.handle_lost(node_id, "the data channel closed", now_ms());
                    }
                    str0m::Event::Closed => {
                        rtc.ended.get_or_insert(CLOSED_BY_NODE);
                    }
                    str0m::Event::IceConnectionStateChange(str0m::IceConnectionState::Disconnected) => {
                        rtc.ended.get_or_insert("ICE disconnected");
                    }
                    _ => {}
                },
            }
        };
        if done(page, rtc) {
            return Ok(());
        }
        if Instant::now() > give_up {
            return Err(format!("timed out; link {}", page.link_status()));
        }
        let wait = timeout.saturating_duration_since(Instant::now()).min(Duration::from_millis(20));
        tokio::select! {
            message = socket.next() => match message {
                Some(Ok(Message::Binary(bytes))) => page.handle_message("node", &bytes, now_ms()),
                Some(Ok(Message::Close(_))) | None => return Err("the node closed the WebSocket".to_owned()),
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err.to_string()),
            },
            received = rtc.udp.recv_from(&mut buf) => {
                let (len, source) = received.map_err(|e| e.to_string())?;
                if let Ok(receive) = str0m::net::Receive::new(str0m::net::Protocol::Udp, source, rtc.local, &buf[..len]) {
                    let _ = rtc.rtc.handle_input(str0m::Input::Receive(Instant::now(), receive));
                }
            }
            () = tokio::time::sleep(wait) => {
                let _ = rtc.rtc.handle_input(str0m::Input::Timeout(Instant::now()));
                page.handle_timeout(now_ms());
            }
        }
    }
}

/// Links a page over WebSocket, then over WebRTC to the node; returns the
/// page's socket and WebRTC peer with the channel's link up.
async fn page_over_webrtc(page: &mut BrowserReplica, url: &str, ticket: &str, node_id: &str) -> Result<(Socket, RtcPage), String> {
    page_over_webrtc_with(page, url, ticket, node_id, 1).await
}

/// [`page_over_webrtc`] with `channels` data channels in the offer (the
/// first to open carries the link).
async fn page_over_webrtc_with(
    page: &mut BrowserReplica,
    url: &str,
    ticket: &str,
    node_id: &str,
    channels: usize,
) -> Result<(Socket, RtcPage), String> {
    let mut socket = page_connect(page, url, ticket).await;
    pump(page, &mut socket, |p| p.link_status()["state"] == "connected").await?;
    let (mut rtc, offer, pending) = rtc_page(channels).await;
    let answer = signal_node(page, &mut socket, node_id, json!({"type": "offer", "sdp": offer, "attempt": "a1"})).await?;
    let sdp = answer["sdp"].as_str().ok_or_else(|| format!("not an answer: {answer}"))?;
    let answer = str0m::change::SdpAnswer::from_sdp_string(sdp).map_err(|e| e.to_string())?;
    rtc.rtc.sdp_api().accept_answer(pending, answer).map_err(|e| e.to_string())?;
    pump_rtc(page, &mut socket, &mut rtc, node_id, |p, _| p.link_status()["channels"][node_id]["state"] == "connected").await?;
    Ok((socket, rtc))
}

/// A page (the browser package's replica) and a node over WebRTC: the
/// node answers the page's offer (signalled over the WebSocket), ICE, DTLS
/// and SCTP come up on loopback UDP, the link on the data channel proves
/// the ids and the secret, and sync runs there both ways; the node lists
/// the page over `webrtc`.
#[test]
fn a_page_and_a_node_sync_both_ways_over_a_webrtc_data_channel() {
    let dir = tempfile::tempdir().unwrap();
    let (node, url, ticket) = browser_node(dir.path());
    let node_id = ticket.parse::<pluresdb_security::Ticket>().unwrap().peer_id.to_string();
    let mut page = BrowserReplica::open(None, [], now_ms()).unwrap();
    let page_id = page.peer_id();
    let result = runtime().block_on(async {
        let (mut socket, mut rtc) = page_over_webrtc(&mut page, &url, &ticket, &node_id).await?;
        page.put("rtc:page", json!({"from": "page"}), now_ms()).map_err(|e| e.to_string())?;
        let (status, _) = node.request("PUT", "/nodes/rtc:node", r#"{"from":"node"}"#);
        assert_eq!(status, 200);
        let mut on_node = Value::Null;
        pump_rtc(&mut page, &mut socket, &mut rtc, &node_id, |p, _| {
            if on_node.is_null() {
                let (status, body) = node.request("GET", "/nodes/rtc:page", "");
                if status == 200 {
                    on_node = body;
                }
            }
            !on_node.is_null() && !p.get("rtc:node").unwrap().is_null()
        })
        .await?;
        let (_, peers) = node.request("GET", "/peers", "");
        Ok::<_, String>((on_node, peers))
    });
    let (clean, stderr) = node.stop();
    let (on_node, peers) = result.unwrap_or_else(|err| panic!("{err}\nnode stderr: {stderr}"));
    assert_eq!(on_node["value"]["from"], "page");
    let listed = peers["peers"].as_array().cloned().unwrap_or_default();
    assert!(listed.iter().any(|p| p["peer_id"] == page_id.as_str() && p["transport"] == "webrtc"), "the node lists the page: {peers}");
    assert!(clean, "{stderr}");
}

/// Bad input on the node's WebRTC surface, each refused while the node
/// and the page's WebSocket link go on: junk SDP (an `error` signal naming
/// it), a signal that is neither offer nor candidate, datagrams of junk on
/// the UDP socket, more sessions from one address than the limit (8), and
/// a session that never completes its handshake (its slot is freed after
/// the deadline, so a new offer is answered again).
#[test]
fn bad_webrtc_signals_junk_datagrams_and_too_many_sessions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, url, ticket) = browser_node(dir.path());
    let udp = node.started["webrtc"].as_str().unwrap_or_else(|| panic!("no webrtc address in {}", node.started)).to_owned();
    let node_id = ticket.parse::<pluresdb_security::Ticket>().unwrap().peer_id.to_string();
    let result = runtime().block_on(async {
        let mut page = BrowserReplica::open(None, [], now_ms()).unwrap();
        let mut socket = page_connect(&mut page, &url, &ticket).await;
        pump(&mut page, &mut socket, |p| p.link_status()["state"] == "connected").await?;
        let junk_sdp = signal_node(&mut page, &mut socket, &node_id, json!({"type": "offer", "sdp": "v=0 junk", "attempt": "j1"})).await?;
        let not_a_signal = signal_node(&mut page, &mut socket, &node_id, json!({"type": "hello", "attempt": "j2"})).await?;
        // Junk datagrams: random bytes, a truncated STUN header, a DTLS-looking record.
        let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut seed = 7u64;
        for n in 0..200usize {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let mut datagram: Vec<u8> = (0..(n % 300 + 1)).map(|i| (seed >> (i % 56)) as u8).collect();
            datagram[0] = [0x00, 0x01, 0x16, 0x80, 0xff][n % 5];
            junk.send_to(&datagram, &udp).unwrap();
        }
        // Eight sessions from this address that never do ICE, then a ninth.
        let (_rtc, offer, _pending) = rtc_page(1).await;
        let mut answers = Vec::new();
        for n in 0..9 {
            let mut other = BrowserReplica::open(None, [], now_ms()).unwrap();
            let mut other_socket = page_connect(&mut other, &url, &ticket).await;
            pump(&mut other, &mut other_socket, |p| p.link_status()["state"] == "connected").await?;
            let reply =
                signal_node(&mut other, &mut other_socket, &node_id, json!({"type": "offer", "sdp": offer, "attempt": format!("s{n}")}))
                    .await?;
            answers.push((reply, other, other_socket));
        }
        let ninth = answers.last().map(|(reply, _, _)| reply.clone()).unwrap_or_default();
        // After the handshake deadline the stuck sessions are gone: a new offer is answered.
        let freed_at = Instant::now();
        let mut again = Value::Null;
        while Instant::now() < freed_at + DEADLINE {
            let (reply, other, other_socket) = answers.last_mut().unwrap();
            let _ = reply;
            again = signal_node(other, other_socket, &node_id, json!({"type": "offer", "sdp": offer, "attempt": "again"})).await?;
            if again["type"] == "answer" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // The first page's link is still up and syncs.
        page.put("after:junk", json!({"ok": true}), now_ms()).map_err(|e| e.to_string())?;
        pump(&mut page, &mut socket, |_| node.request("GET", "/nodes/after:junk", "").0 == 200).await?;
        let answered = answers[..8].iter().filter(|(reply, _, _)| reply["type"] == "answer").count();
        Ok::<_, String>((junk_sdp, not_a_signal, answered, ninth, again))
    });
    let (status, _) = node.request("GET", "/status", "");
    let (clean, stderr) = node.stop();
    let (junk_sdp, not_a_signal, answered, ninth, again) = result.unwrap_or_else(|err| panic!("{err}\nnode stderr: {stderr}"));
    assert_eq!(junk_sdp["type"], "error", "{junk_sdp}");
    assert!(junk_sdp["message"].as_str().is_some_and(|m| m.contains("not an SDP offer")), "{junk_sdp}");
    assert_eq!(not_a_signal["type"], "error", "{not_a_signal}");
    assert_eq!(answered, 8, "eight sessions from one address are answered");
    assert!(ninth["message"].as_str().is_some_and(|m| m.contains("too many WebRTC sessions from")), "{ninth}");
    assert_eq!(again["type"], "answer", "the stuck sessions were not freed after the handshake deadline: {again}");
    assert_eq!(status, 200);
    assert!(clean, "{stderr}");
}

/// A page on an established WebRTC link that misbehaves on it: a message
/// over the chunk limit ends its WebRTC session (the page falls back to
/// its WebSocket, which still syncs), and a page opening more data
/// channels than the limit (5 of 4) has its session ended too, while a page
/// opening 4 links up. The node closes an ended session's channels, so
/// the page knows at once (before, it went silent, and the page's ICE
/// noticed ~20 s later).
#[test]
fn oversized_messages_and_too_many_channels_end_the_webrtc_session_only() {
    let dir = tempfile::tempdir().unwrap();
    let (node, url, ticket) = browser_node(dir.path());
    let node_id = ticket.parse::<pluresdb_security::Ticket>().unwrap().peer_id.to_string();
    let result = runtime().block_on(async {
        // Oversized: one message of 100 KiB on the channel (limit 64 KiB).
        let mut page = BrowserReplica::open(None, [], now_ms()).unwrap();
        let page_id = page.peer_id();
        let (mut socket, mut rtc) = page_over_webrtc(&mut page, &url, &ticket, &node_id).await?;
        pump_rtc(&mut page, &mut socket, &mut rtc, &node_id, |_, _| listed_webrtc(&node.request("GET", "/peers", "").1, &page_id)).await?;
        let id = rtc.channel.expect("the channel");
        let written = rtc.rtc.channel(id).map(|mut c| c.write(true, &vec![1u8; 100 * 1024]));
        assert!(matches!(written, Some(Ok(true))), "{written:?}");
        // The node says why in its goodbye on the channel, drops the page's
        // WebRTC link and closes the channel.
        let mut why = String::new();
        pump_rtc(&mut page, &mut socket, &mut rtc, &node_id, |p, r| {
            if let Some(reason) = p.link_status()["channels"][node_id.as_str()]["reason"].as_str() {
                why = reason.to_owned();
            }
            !why.is_empty() && r.ended.is_some() && !listed_webrtc(&node.request("GET", "/peers", "").1, &page_id)
        })
        .await?;
        if rtc.ended != Some(CLOSED_BY_NODE) {
            return Err(format!("after the oversized message the session ended by {:?}, not the node closing it", rtc.ended));
        }
        // Sync goes on over the WebSocket.
        page.put("after:oversized", json!({"ok": true}), now_ms()).map_err(|e| e.to_string())?;
        pump(&mut page, &mut socket, |_| node.request("GET", "/nodes/after:oversized", "").0 == 200).await?;

        // Four channels (the limit) are taken: the link comes up on one.
        let mut four = BrowserReplica::open(None, [], now_ms()).unwrap();
        let four_id = four.peer_id();
        let (mut four_socket, mut four_rtc) = page_over_webrtc_with(&mut four, &url, &ticket, &node_id, 4).await?;
        pump_rtc(&mut four, &mut four_socket, &mut four_rtc, &node_id, |_, _| {
            listed_webrtc(&node.request("GET", "/peers", "").1, &four_id)
        })
        .await?;

        // Too many channels: five in the offer (limit 4).
        let mut greedy = BrowserReplica::open(None, [], now_ms()).unwrap();
        let mut greedy_socket = page_connect(&mut greedy, &url, &ticket).await;
        pump(&mut greedy, &mut greedy_socket, |p| p.link_status()["state"] == "connected").await?;
        let (mut many, offer, pending) = rtc_page(5).await;
        let answer =
            signal_node(&mut greedy, &mut greedy_socket, &node_id, json!({"type": "offer", "sdp": offer, "attempt": "m1"})).await?;
        let answer = str0m::change::SdpAnswer::from_sdp_string(answer["sdp"].as_str().unwrap_or_default()).map_err(|e| e.to_string())?;
        many.rtc.sdp_api().accept_answer(pending, answer).map_err(|e| e.to_string())?;
        // Its channels open, then the node ends the session and closes them.
        pump_rtc(&mut greedy, &mut greedy_socket, &mut many, &node_id, |_, r| r.channel.is_some() && r.ended.is_some()).await?;
        if many.ended != Some(CLOSED_BY_NODE) {
            return Err(format!("the greedy page's session ended by {:?}, not the node closing it", many.ended));
        }
        // Its WebSocket link still syncs.
        greedy.put("after:greedy", json!({"ok": true}), now_ms()).map_err(|e| e.to_string())?;
        pump(&mut greedy, &mut greedy_socket, |_| node.request("GET", "/nodes/after:greedy", "").0 == 200).await?;
        Ok::<_, String>(why)
    });
    let (status, _) = node.request("GET", "/status", "");
    let (clean, stderr) = node.stop();
    let why = result.unwrap_or_else(|err| panic!("{err}\nnode stderr: {stderr}"));
    assert!(why.contains("a data-channel message of 102400 bytes"), "the node's reason: {why}");
    assert_eq!(status, 200);
    assert!(clean, "{stderr}");
}

fn listed_webrtc(peers: &Value, page: &str) -> bool {
    peers["peers"]
        .as_array()
        .is_some_and(|l| l.iter().any(|p| p["peer_id"] == page && p["transport"] == "webrtc" && p["connected"] == true))
}

/// The DTLS fingerprints are bound into the link on the channel: a page
/// that binds a fingerprint other than the one the node's DTLS presented
/// (what it would see if a relay had rewritten the node's SDP answer to
/// sit in the middle) fails the link's identity step, and the node never
/// lists it over WebRTC. (With the real fingerprints it links:
/// `a_page_and_a_node_sync_both_ways_over_a_webrtc_data_channel`.)
#[test]
fn a_webrtc_link_whose_dtls_fingerprint_was_swapped_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, url, ticket) = browser_node(dir.path());
    let node_id = ticket.parse::<pluresdb_security::Ticket>().unwrap().peer_id.to_string();
    let mut page = BrowserReplica::open(None, [], now_ms()).unwrap();
    let page_id = page.peer_id();
    let result = runtime().block_on(async {
        let mut socket = page_connect(&mut page, &url, &ticket).await;
        pump(&mut page, &mut socket, |p| p.link_status()["state"] == "connected").await?;
        let (mut rtc, offer, pending) = rtc_page(1).await;
        rtc.swap_fingerprint = true;
        let answer = signal_node(&mut page, &mut socket, &node_id, json!({"type": "offer", "sdp": offer, "attempt": "x1"})).await?;
        let answer = str0m::change::SdpAnswer::from_sdp_string(answer["sdp"].as_str().unwrap_or_default()).map_err(|e| e.to_string())?;
        rtc.rtc.sdp_api().accept_answer(pending, answer).map_err(|e| e.to_string())?;
        let mut ended = Value::Null;
        pump_rtc(&mut page, &mut socket, &mut rtc, &node_id, |p, r| {
            let state = p.link_status()["channels"][node_id.as_str()].clone();
            if r.opened && state.is_null() || state["state"] == "closed" {
                ended = state;
            }
            !ended.is_null() || (r.opened && p.link_status()["channels"][node_id.as_str()].is_null())
        })
        .await?;
        let (_, peers) = node.request("GET", "/peers", "");
        Ok::<_, String>((ended, peers))
    });
    let (clean, stderr) = node.stop();
    let (ended, peers) = result.unwrap_or_else(|err| panic!("{err}\nnode stderr: {stderr}"));
    assert_ne!(ended["state"], "connected", "{ended}");
    assert!(!listed_webrtc(&peers, &page_id), "the node lists the page over WebRTC: {peers}");
    assert!(clean, "{stderr}");
}

/// One WebRTC session per page: each new offer replaces the page's
/// earlier session, so a page offering again and again (its attempts
/// retried) never holds more than one slot. Ten offers in a row from one
/// page are all answered, where ten sessions from one address would be
/// refused past the eighth.
#[test]
fn a_pages_new_offer_replaces_its_webrtc_session() {
    let dir = tempfile::tempdir().unwrap();
    let (node, url, ticket) = browser_node(dir.path());
    let node_id = ticket.parse::<pluresdb_security::Ticket>().unwrap().peer_id.to_string();
    let result = runtime().block_on(async {
        let mut page = BrowserReplica::open(None, [], now_ms()).unwrap();
        let mut socket = page_connect(&mut page, &url, &ticket).await;
        pump(&mut page, &mut socket, |p| p.link_status()["state"] == "connected").await?;
        let (_rtc, offer, _pending) = rtc_page(1).await;
        let mut replies = Vec::new();
        for n in 0..10 {
            let reply =
                signal_node(&mut page, &mut socket, &node_id, json!({"type": "offer", "sdp": offer, "attempt": format!("r{n}")})).await?;
            replies.push(reply["type"].as_str().unwrap_or_default().to_owned());
        }
        Ok::<_, String>(replies)
    });
    let (clean, stderr) = node.stop();
    let replies = result.unwrap_or_else(|err| panic!("{err}\nnode stderr: {stderr}"));
    assert_eq!(replies, vec!["answer"; 10], "{replies:?}");
    assert!(clean, "{stderr}");
}
