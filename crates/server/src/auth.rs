//! The API token.
//!
//! On loopback the API answers anyone on the machine, except for the routes
//! that reveal or change who may join the network (`/network/invite`,
//! changes under `/trust`), which always need the token. Bound to any other
//! address (or with `require_token`), every route but `/health` and the web
//! UI's assets (`/`, `/ui/...`, which hold no data) needs it.
//! The token goes in `Authorization: Bearer <token>`, or, for WebSockets
//! from browsers (which cannot set headers on them), as the subprotocol
//! `bearer.<token>` in `Sec-WebSocket-Protocol` (the server answers with
//! that protocol). Never in the URL: [`crate::browser`] refuses that.

use crate::error::ApiError;
use crate::ApiState;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

/// Whether a route reveals or changes network membership.
fn is_sensitive(method: &Method, path: &str) -> bool {
    path == "/network/invite" || (path.starts_with("/trust") && method != Method::GET)
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The prefix of the WebSocket subprotocol that carries the token.
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// The WebSocket subprotocols a request offers.
pub fn offered_protocols(headers: &axum::http::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
}

fn presented(request: &Request) -> Option<String> {
    if let Some(value) = request.headers().get(axum::http::header::AUTHORIZATION) {
        return value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(|t| t.trim().to_owned());
    }
    offered_protocols(request.headers()).find_map(|p| p.strip_prefix(BEARER_PROTOCOL_PREFIX)).map(str::to_owned)
}

pub async fn check_token(State(state): State<ApiState>, request: Request, next: Next) -> Result<Response, ApiError> {
    let path = request.uri().path();
    // The web UI's assets hold no data: the page loads, then asks for the
    // token when the API answers 401.
    let public = path == "/health" || crate::ui::is_asset_path(path);
    let needed = (state.require_token && !public) || is_sensitive(request.method(), path);
    if needed {
        match presented(&request) {
            None => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "this route needs the API token: send `Authorization: Bearer <token>` (a WebSocket may offer the subprotocol \
                     `bearer.<token>` instead); the token is in api.token in the node's data directory"
                        .into(),
                ))
            }
            Some(token) if !same(token.as_bytes(), state.token.as_bytes()) => {
                return Err(ApiError::new(StatusCode::UNAUTHORIZED, "the API token is wrong".into()));
            }
            Some(_) => {}
        }
    }
    Ok(next.run(request).await)
}
