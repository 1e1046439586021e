//! The accept loop: every incoming connection attempt is retried, refused
//! or given a slot of the handshake budget (see [`crate::admission`]) at
//! once, and each handshake runs in its own task.

use super::handshake::{self, Terms};
use super::registry::{Running, Shared, Slot, TaskGuard};
use super::transport::listen_addresses;
use super::{link, stream};
use crate::admission::Admission;
use crate::message::ErrorCode;
use crate::peer::Direction;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Accepts incoming connections until the engine stops.
pub(super) async fn accept_loop(shared: Arc<Shared>, running: Running, _guard: TaskGuard) {
    let mut shutdown = running.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            incoming = running.endpoint.accept() => incoming,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let Some(incoming) = incoming else { break };
        let remote = incoming.remote_address();
        let at_capacity;
        let (id, evicted) = {
            let mut state = shared.state();
            // A node at its connection limit still tells a caller why, if
            // it can do so without taking another handshake's place.
            at_capacity = state.links.len() + state.dialling >= shared.config.max_connections;
            match state.handshakes.admit(remote.ip(), incoming.remote_address_validated(), !at_capacity) {
                Admission::Accept { id, evict } => {
                    if let Some(cancel) = evict.and_then(|victim| state.evictions.remove(&victim)) {
                        let _ = cancel.send(());
                    }
                    let (cancel, cancelled) = oneshot::channel();
                    state.evictions.insert(id, cancel);
                    (id, cancelled)
                }
                Admission::Retry => {
                    drop(state);
                    tracing::trace!(%remote, "asked an incoming connection to prove its address (QUIC Retry)");
                    if let Err(err) = incoming.retry() {
                        err.into_incoming().refuse();
                    }
                    continue;
                }
                Admission::Refuse(reason) => {
                    drop(state);
                    tracing::debug!(%remote, %reason, "refused an incoming connection before its handshake");
                    incoming.refuse();
                    continue;
                }
            }
        };
        let slot = Slot::incoming(shared.clone(), id);
        let guard = running.tasks.enter();
        let mut shutdown = running.shutdown.subscribe();
        let accept = accept_one(shared.clone(), running.clone(), incoming, slot, evicted, at_capacity);
        tokio::spawn(async move {
            tokio::select! {
                _ = accept => {}
                _ = shutdown.wait_for(|s| *s) => {}
            }
            drop(guard);
        });
    }
}

/// Runs one incoming connection's handshake in its budget `slot`: the QUIC
/// handshake, then the hello exchange, both within `handshake_timeout`,
/// unless a newer attempt takes the slot (`evicted`). With `at_capacity`
/// the connection is closed with `too_many_connections` right after the
/// QUIC handshake.
async fn accept_one(
    shared: Arc<Shared>,
    running: Running,
    incoming: quinn::Incoming,
    slot: Slot,
    mut evicted: oneshot::Receiver<()>,
    at_capacity: bool,
) {
    let remote = incoming.remote_address();
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(err) => {
            tracing::debug!(%remote, error = %err, "incoming connection failed");
            return;
        }
    };
    // Dropping `connecting` closes the connection.
    let connection = tokio::select! {
        connected = tokio::time::timeout_at(deadline, connecting) => match connected {
            Ok(Ok(connection)) => connection,
            Ok(Err(err)) => {
                tracing::debug!(%remote, error = %err, "incoming connection failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "incoming connection timed out in the QUIC handshake");
                return;
            }
        },
        _ = &mut evicted => {
            tracing::debug!(%remote, "incoming connection gave its handshake slot to a newer one");
            return;
        }
    };
    if at_capacity {
        let reason = format!("too many connections (limit {})", shared.config.max_connections);
        tracing::warn!(%remote, "{reason}; closing the new connection");
        connection.close(stream::close_code(ErrorCode::TooManyConnections), reason.as_bytes());
        return;
    }
    let Some(keys) = shared.keys() else { return };
    let terms = Terms {
        direction: Direction::Accepted,
        listen_addresses: listen_addresses(running.local_addr),
        limits: running.receive_limits,
        ask_for_peers: shared.ask_for_peers.load(Ordering::Relaxed),
        deadline,
    };
    let handshake = handshake::run(&keys, &shared.config, &connection, terms);
    tokio::select! {
        done = handshake => match done {
            Ok(done) => link::start(shared, &running, connection, done, Direction::Accepted, slot),
            Err(err) => tracing::warn!(%remote, error = %err, "incoming handshake failed"),
        },
        _ = &mut evicted => {
            tracing::debug!(%remote, "incoming handshake gave its slot to a newer one");
            connection.close(stream::close_code(ErrorCode::TooManyConnections), b"too many handshakes in flight");
        }
    }
}
