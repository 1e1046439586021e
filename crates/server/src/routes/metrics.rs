//! Prometheus metrics, and the request counter behind some of them.

use crate::error::ApiError;
use crate::ApiState;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pluresdb_runtime::Stats;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

/// Counts every answer by status class.
pub async fn count(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let class = (response.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    state.answered[class].fetch_add(1, Relaxed);
    response
}

fn metric<T: std::fmt::Display>(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, T)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// `text` escaped as a Prometheus label value.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let stats = state.handle.stats();
    let sync = state.handle.sync_status().await?;
    let held = sync.operations_held;
    let connected = sync.peers.iter().filter(|p| p.connected).count() as u64;
    let t = sync.traffic;
    let mut out = String::with_capacity(2048);
    metric(
        &mut out,
        "pluresdb_ops_applied_total",
        "counter",
        "Operations applied to the replica since start, by where they came from.",
        &[("{source=\"local\"}", Stats::get(&stats.local_ops)), ("{source=\"remote\"}", Stats::get(&stats.remote_ops))],
    );
    metric(&mut out, "pluresdb_operations_held", "gauge", "Operations the replica holds, from every origin.", &[("", held)]);
    metric(
        &mut out,
        "pluresdb_commits_total",
        "counter",
        "Durable transactions committed (each may hold many writes).",
        &[("", Stats::get(&stats.commits))],
    );
    metric(&mut out, "pluresdb_failed_commits_total", "counter", "Commits that failed.", &[("", Stats::get(&stats.failed_commits))]);
    metric(
        &mut out,
        "pluresdb_commit_microseconds_total",
        "counter",
        "Time the writer spent committing local writes (merge, sign, durable transaction), summed over pluresdb_commits_total.",
        &[("", Stats::get(&stats.commit_us))],
    );
    metric(
        &mut out,
        "pluresdb_remote_applies_total",
        "counter",
        "Peer messages whose operations the writer applied.",
        &[("", Stats::get(&stats.remote_applies))],
    );
    metric(
        &mut out,
        "pluresdb_remote_apply_microseconds_total",
        "counter",
        "Time the writer spent applying peers' operations (decode, verify, merge, durable transaction), summed over pluresdb_remote_applies_total.",
        &[("", Stats::get(&stats.remote_apply_us))],
    );
    let store = &sync.store;
    metric(
        &mut out,
        "pluresdb_store_degraded",
        "gauge",
        "1 while the store cannot write (a full disk, an I/O error): writes answer 507/503 until the node reopens it.",
        &[("", u64::from(store.degraded))],
    );
    metric(
        &mut out,
        "pluresdb_store_faults_total",
        "counter",
        "Times the store stopped writing (a full disk, an I/O error).",
        &[("", store.faults)],
    );
    metric(
        &mut out,
        "pluresdb_store_recoveries_total",
        "counter",
        "Times the node reopened its store and writes resumed.",
        &[("", store.recoveries)],
    );
    metric(
        &mut out,
        "pluresdb_store_refused_total",
        "counter",
        "While the store could not write: local writes refused, and operations from peers not stored (asked for again later).",
        &[("{what=\"local_writes\"}", store.writes_refused), ("{what=\"peer_operations\"}", store.ops_not_stored)],
    );
    metric(&mut out, "pluresdb_peers_connected", "gauge", "Peers connected now.", &[("", connected)]);
    metric(
        &mut out,
        "pluresdb_sync_ops_total",
        "counter",
        "Operations sent to and received from peers.",
        &[("{direction=\"sent\"}", t.ops_sent), ("{direction=\"received\"}", t.ops_received)],
    );
    metric(
        &mut out,
        "pluresdb_sync_bytes_total",
        "counter",
        "Sync bytes sent to and received from peers.",
        &[("{direction=\"sent\"}", t.bytes_sent), ("{direction=\"received\"}", t.bytes_received)],
    );
    metric(&mut out, "pluresdb_sync_errors_total", "counter", "Messages from peers that were refused.", &[("", t.errors)]);
    metric(
        &mut out,
        "pluresdb_sync_lag_operations",
        "gauge",
        "Operations that peers have not acknowledged yet.",
        &[("", sync.pending_operations)],
    );
    for counter in state.handle.transport_counters() {
        metric(&mut out, counter.name, counter.kind, counter.help, &[("", counter.value)]);
    }
    metric(&mut out, "pluresdb_watchers", "gauge", "Change-feed subscribers (WebSockets) open now.", &[("", Stats::get(&stats.watchers))]);
    metric(
        &mut out,
        "pluresdb_watch_changes_total",
        "counter",
        "Changes delivered to subscribers.",
        &[("", Stats::get(&stats.delivered_changes))],
    );
    metric(
        &mut out,
        "pluresdb_watch_lagged_total",
        "counter",
        "Subscribers ended because they fell behind.",
        &[("", Stats::get(&stats.lagged_watchers))],
    );
    let clock = &sync.clock;
    metric(
        &mut out,
        "pluresdb_clock_correction_ms",
        "gauge",
        "The correction this node applies to its wall clock because most peers' clocks disagree with it.",
        &[("", clock.wall_clock_offset_ms)],
    );
    metric(
        &mut out,
        "pluresdb_deferred_operations",
        "gauge",
        "Operations held and synced but not in effect yet: stamped beyond the clock drift bound.",
        &[("", clock.deferred_operations)],
    );
    // The core bounds the number of origins listed.
    let skew: Vec<(String, i64)> =
        clock.origins.iter().map(|o| (format!("{{origin=\"{}\"}}", label_value(&o.origin)), o.max_ahead_ms)).collect();
    let skew: Vec<(&str, i64)> = skew.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(
        &mut out,
        "pluresdb_clock_skew_ms",
        "gauge",
        "Per origin, the most its operations were stamped ahead of this node's wall clock when received.",
        &skew,
    );
    let offsets: Vec<(String, i64)> = state
        .handle
        .peer_clock_offsets()
        .into_iter()
        .map(|(peer, offset)| (format!("{{peer=\"{}\"}}", label_value(&peer.to_string())), offset))
        .collect();
    let offsets: Vec<(&str, i64)> = offsets.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(&mut out, "pluresdb_peer_clock_offset_ms", "gauge", "Per connected peer, its wall clock minus this node's.", &offsets);
    let answered: Vec<(String, u64)> = (0..5).map(|i| (format!("{{class=\"{}xx\"}}", i + 1), state.answered[i].load(Relaxed))).collect();
    let answered: Vec<(&str, u64)> = answered.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(&mut out, "pluresdb_http_responses_total", "counter", "HTTP answers, by status class.", &answered);
    metric(&mut out, "pluresdb_uptime_seconds", "gauge", "Seconds since the node started.", &[("", state.started.elapsed().as_secs())]);
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
