//! `GET /changes`: the change feed over a WebSocket.
//!
//! The query string says what to watch (`id`, `prefix`, or neither for
//! everything) and, with `from`, where to resume. The server sends
//! `subscribed` with the version the live feed starts at, then a `change`
//! for each change to a watched node in the order the node applied them.
//! A client's position is that version advanced by each change's
//! `origin`/`seq`; after a disconnect, `from` = its position resumes with
//! nothing missed and nothing repeated. A client that reads too slowly
//! gets `lagged` with the position to resume from, and the socket closes:
//! the node does not buffer without bound for anyone.
//!
//! The client only needs to read. Messages it sends are ignored, up to a
//! rate; a client that floods gets an `error` and the socket closes with
//! code 1008 (policy violation).

use super::nodes::node_doc;
use crate::auth::BEARER_PROTOCOL_PREFIX;
use crate::docs::{version_doc, ChangeMessage, ErrorDoc, OperationDoc};
use crate::error::{rejected, ApiError};
use crate::ApiState;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use pluresdb_core::VersionVector;
use pluresdb_runtime::{Filter, Stats, Watch, WatchEvent};
use pluresdb_security::{RateLimit, RateLimiter};
use serde::Deserialize;
use std::collections::BTreeMap;
use utoipa::IntoParams;

/// The most change-feed sockets open at once.
pub const MAX_WATCHERS: u64 = 4_096;

/// Client messages allowed per second (and in a burst) before the socket
/// is closed as a flood.
const CLIENT_MESSAGES: RateLimit = RateLimit { messages_per_second: 20, burst: 100 };

/// The read buffer and the largest message accepted from a client.
const CLIENT_BUFFER: usize = 4 * 1024;

/// The close code for a policy violation (RFC 6455).
const POLICY_VIOLATION: u16 = 1008;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesQuery {
    /// Watch this node only.
    id: Option<String>,
    /// Watch nodes whose id starts with this (neither `id` nor `prefix`: every node).
    prefix: Option<String>,
    /// A live query: a JSON query (`prefix` and `where`, as `POST /query`
    /// takes, without `sort` or `steps`). Changes that make a node pass it
    /// come with `matches: true`; a change to a node that passed it and no
    /// longer does (or its delete) with `matches: false`.
    query: Option<String>,
    /// Replay what was applied after this position first: a JSON object of
    /// origin peer id to sequence number (from `subscribed.version`
    /// advanced by the changes received, or from `lagged.resume_from`).
    from: Option<String>,
}

/// Subscribes to changes over a WebSocket (see the `ChangeMessage` schema).
#[utoipa::path(get, path = "/changes", tag = "changes", params(ChangesQuery),
    responses((status = 101, description = "WebSocket of ChangeMessage documents (JSON text frames)"),
        (status = 400, body = ErrorDoc), (status = 503, description = "Too many subscribers", body = ErrorDoc)))]
pub async fn changes(
    State(state): State<ApiState>,
    query: Result<Query<ChangesQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(rejected)?;
    let upgrade = upgrade.map_err(rejected)?;
    let filter = match (q.id, q.prefix, q.query) {
        (Some(id), None, None) => {
            pluresdb_core::validate_node_id(&id)?;
            Filter::Node(id)
        }
        (None, Some(prefix), None) => Filter::Prefix(prefix),
        (None, None, Some(text)) => {
            let query = pluresdb_core::Query::from_json(text.as_bytes())?;
            if query.sort.is_some() || !query.steps.is_empty() || query.cursor.is_some() {
                return Err(ApiError::bad_request("a live query takes a prefix and conditions (`where`), not sort, steps or a cursor"));
            }
            Filter::Query(std::sync::Arc::new(query.check()?))
        }
        (None, None, None) => Filter::All,
        _ => return Err(ApiError::bad_request("give one of id, prefix and query")),
    };
    let from = match q.from {
        None => None,
        Some(text) => {
            let entries: BTreeMap<String, u64> = serde_json::from_str(&text)
                .map_err(|err| ApiError::bad_request(format!("from must be a JSON object of origin to sequence number: {err}")))?;
            let mut from = VersionVector::new();
            for (origin, seq) in entries {
                from.advance(&origin, seq);
            }
            Some(from)
        }
    };
    if Stats::get(&state.handle.stats().watchers) >= MAX_WATCHERS {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("too many subscribers (at most {MAX_WATCHERS})")));
    }
    let watch = state.handle.watch(filter, from).await?;
    // Clients only send small messages: a small read buffer (the default,
    // 128 KiB, is zeroed before every read) and a cap on message size.
    let mut upgrade = upgrade.read_buffer_size(CLIENT_BUFFER).max_message_size(CLIENT_BUFFER).max_frame_size(CLIENT_BUFFER);
    // A browser that offered its token as a subprotocol fails the
    // connection unless the answer names that protocol (the token check
    // has passed by now, or was not needed).
    let bearer = upgrade.requested_protocols().find(|p| p.to_str().is_ok_and(|p| p.starts_with(BEARER_PROTOCOL_PREFIX))).cloned();
    if let Some(protocol) = bearer {
        upgrade.set_selected_protocol(protocol);
    }
    Ok(upgrade.on_upgrade(move |socket| run(socket, watch, state)))
}

async fn send(socket: &mut WebSocket, message: &ChangeMessage) -> bool {
    match serde_json::to_string(message) {
        Ok(text) => socket.send(Message::Text(text.into())).await.is_ok(),
        Err(err) => {
            tracing::error!(%err, "cannot encode a change message");
            false
        }
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
}

async fn run(mut socket: WebSocket, mut watch: Watch, state: ApiState) {
    if !send(&mut socket, &ChangeMessage::Subscribed { version: version_doc(watch.position()) }).await {
        return;
    }
    let mut limiter = RateLimiter::new(CLIENT_MESSAGES);
    let started = std::time::Instant::now();
    loop {
        tokio::select! {
            // Changes first: the client's side only matters when it talks.
            biased;
            event = watch.next() => match event {
                Some(Ok(WatchEvent::Change { change, replayed, matches })) => {
                    let node = match &change.node {
                        Some(node) => match node_doc(state.handle.reader(), node) {
                            Ok(doc) => Some(Box::new(doc)),
                            Err(err) => {
                                send(&mut socket, &ChangeMessage::Error { error: err.message }).await;
                                break;
                            }
                        },
                        None => None,
                    };
                    if !send(&mut socket, &ChangeMessage::Change { op: Box::new(OperationDoc::from(&change.op)), node, replayed, matches }).await {
                        break;
                    }
                }
                Some(Ok(WatchEvent::Lagged { missed, resume_from })) => {
                    tracing::info!(missed, "a change subscriber fell behind; closing it");
                    send(&mut socket, &ChangeMessage::Lagged { missed, resume_from: version_doc(&resume_from) }).await;
                    close(&mut socket, POLICY_VIOLATION, "lagged").await;
                    break;
                }
                Some(Err(err)) => {
                    send(&mut socket, &ChangeMessage::Error { error: pluresdb_core::error_chain(&err) }).await;
                    break;
                }
                None => {
                    send(&mut socket, &ChangeMessage::Error { error: "the node is stopping".into() }).await;
                    close(&mut socket, 1001, "node stopping").await;
                    break;
                }
            },
            message = socket.recv() => match message {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {
                    let now_ms = started.elapsed().as_millis() as u64;
                    if limiter.check("client", now_ms).is_err() {
                        tracing::warn!("a change subscriber flooded the socket with messages; closing it");
                        send(&mut socket, &ChangeMessage::Error { error: "too many messages from the client; this socket only sends".into() }).await;
                        close(&mut socket, POLICY_VIOLATION, "flood").await;
                        break;
                    }
                }
            },
        }
    }
}
