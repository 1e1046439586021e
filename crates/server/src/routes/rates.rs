//! `GET /status/rates`: the node's write and sync rates over the last
//! minutes, from the history it keeps ([`crate::rates`]).

use crate::docs::*;
use crate::error::{rejected, ApiError};
use crate::rates::{self, SPAN_MINUTES, STEP};
use crate::ApiState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RatesQuery {
    /// How many minutes back, 1 to 15 (default 15).
    #[param(minimum = 1, maximum = 15)]
    minutes: Option<u64>,
}

/// What the node wrote, applied, sent and received in each 10-second
/// bucket of the last minutes (at most 15), oldest first; the last bucket
/// runs to now. Kept by the node in fixed memory from its start, so a
/// chart of it survives a page reload.
#[utoipa::path(get, path = "/status/rates", tag = "network", params(RatesQuery),
    responses((status = 200, body = RatesDoc), (status = 400, description = "minutes outside 1 to 15", body = ErrorDoc)))]
pub async fn rates(State(state): State<ApiState>, query: Result<Query<RatesQuery>, QueryRejection>) -> Result<Json<RatesDoc>, ApiError> {
    let Query(q) = query.map_err(rejected)?;
    let minutes = q.minutes.unwrap_or(SPAN_MINUTES);
    if !(1..=SPAN_MINUTES).contains(&minutes) {
        return Err(ApiError::bad_request(format!("minutes={minutes}: the node keeps 1 to {SPAN_MINUTES} minutes")));
    }
    let current = rates::counters(&state).await?;
    let now = rates::now_ms(&state);
    let buckets = state.rates.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).buckets(now, current, minutes);
    let buckets = buckets
        .into_iter()
        .map(|b| RateBucketDoc {
            started_ms_ago: now.saturating_sub(b.start_ms),
            duration_ms: b.duration_ms,
            local_ops: b.growth.local_ops,
            remote_ops: b.growth.remote_ops,
            ops_sent: b.growth.ops_sent,
            ops_received: b.growth.ops_received,
            bytes_sent: b.growth.bytes_sent,
            bytes_received: b.growth.bytes_received,
        })
        .collect();
    Ok(Json(RatesDoc { step_s: STEP.as_secs(), buckets }))
}
