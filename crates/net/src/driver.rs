//! [`SyncDriver`]: a small task that runs a `DataSyncEngine` over a
//! [`NetworkEngine`], for examples, tests and benches. The node runtime
//! has its own actor; this one shows the whole contract in a page:
//!
//! - [`PeerEvent::Connected`] -> `DataSyncEngine::peer_connected`,
//!   [`PeerEvent::Message`] -> `handle_input`, [`PeerEvent::Disconnected`]
//!   -> `peer_disconnected`;
//! - at `poll_timeout`, `handle_timeout`;
//! - after each of those (and after [`SyncDriver::with`]), everything
//!   `poll_transmit` returns goes to `NetworkEngine::send_message` as
//!   [`NetworkMessage::EncodedSync`]. A refused send (`PeerBusy`, peer gone)
//!   is dropped: the sync engine resends what a peer did not acknowledge.

use crate::engine::NetworkEngine;
use crate::events::{PeerEvent, PeerEvents};
use crate::message::NetworkMessage;
use pluresdb_core::Store;
use pluresdb_sync::{DataSyncEngine, Transmit};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;

/// Events applied under one lock before transmits are sent again.
const MAX_EVENTS_PER_TURN: usize = 256;

/// The longest the driver sleeps when the sync engine has no timer.
const IDLE_WAKE: Duration = Duration::from_secs(60);

/// Milliseconds since the Unix epoch: the sync engine's time.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

struct DriverShared<S: Store> {
    sync: Mutex<DataSyncEngine<S>>,
    wake: Notify,
    stop: Notify,
}

/// Runs a `DataSyncEngine` over a network engine in a tokio task.
pub struct SyncDriver<S: Store> {
    shared: Arc<DriverShared<S>>,
    task: JoinHandle<()>,
}

impl<S: Store + Send + 'static> SyncDriver<S> {
    /// Starts `sync` (if it is not) and spawns the task that feeds it
    /// `events` and sends its output through `network`.
    pub fn spawn<E: NetworkEngine + ?Sized + 'static>(network: Arc<E>, mut sync: DataSyncEngine<S>, events: PeerEvents) -> Self {
        if !sync.is_active() {
            sync.start(now_ms());
        }
        let shared = Arc::new(DriverShared { sync: Mutex::new(sync), wake: Notify::new(), stop: Notify::new() });
        let task = tokio::spawn(drive(network, shared.clone(), events));
        Self { shared, task }
    }

    /// Runs `f` on the sync engine (with the current time), e.g. a local
    /// write, then lets the driver send what it produced.
    pub async fn with<R>(&self, f: impl FnOnce(&mut DataSyncEngine<S>, u64) -> R) -> R {
        let result = {
            let mut sync = self.shared.sync.lock().await;
            f(&mut sync, now_ms())
        };
        self.shared.wake.notify_one();
        result
    }

    /// Stops the task and hands back the sync engine.
    pub async fn stop(self) -> Option<DataSyncEngine<S>> {
        self.shared.stop.notify_one();
        let _ = self.task.await;
        Arc::try_unwrap(self.shared).ok().map(|shared| shared.sync.into_inner())
    }
}

async fn drive<E: NetworkEngine + ?Sized, S: Store + Send>(network: Arc<E>, shared: Arc<DriverShared<S>>, mut events: PeerEvents) {
    loop {
        let (transmits, next_timeout) = {
            let mut sync = shared.sync.lock().await;
            let transmits: Vec<_> = std::iter::from_fn(|| sync.poll_transmit()).collect();
            (transmits, sync.poll_timeout())
        };
        for transmit in transmits {
            send_transmit(&*network, transmit).await;
        }
        let sleep = next_timeout.map_or(IDLE_WAKE, |at| Duration::from_millis(at.saturating_sub(now_ms())));
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                let mut sync = shared.sync.lock().await;
                apply(&mut sync, event);
                for _ in 0..MAX_EVENTS_PER_TURN {
                    let Some(event) = events.try_recv() else { break };
                    apply(&mut sync, event);
                }
            }
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => shared.sync.lock().await.handle_timeout(now_ms()),
            _ = shared.stop.notified() => break,
        }
    }
}

/// Sends one of the sync engine's messages. A refused send (`PeerBusy`,
/// peer gone) is logged and dropped: the sync engine resends whatever a
/// peer does not acknowledge.
pub async fn send_transmit<E: NetworkEngine + ?Sized>(network: &E, transmit: Transmit) {
    let peer = transmit.peer.clone();
    if let Err(err) = network.send_message(&peer, NetworkMessage::from(transmit)).await {
        tracing::debug!(%peer, error = %err, "sync message not sent; unacknowledged operations are resent");
    }
}

/// Feeds one peer event to a sync engine (the contract above); refused
/// messages are logged and counted by the engine.
pub fn apply<S: Store>(sync: &mut DataSyncEngine<S>, event: PeerEvent) {
    let now = now_ms();
    match event {
        PeerEvent::Connected { peer_id, .. } => sync.peer_connected(&peer_id, now),
        PeerEvent::Disconnected { peer_id, .. } => sync.peer_disconnected(&peer_id),
        PeerEvent::Message { peer_id, bytes } => {
            if let Err(err) = sync.handle_input(&peer_id, &bytes, now) {
                tracing::debug!(peer = %peer_id, error = %err, "sync message refused");
            }
        }
    }
}
