//! PluresDB's HTTP and WebSocket API, served by `pluresdb serve`.
//!
//! JSON in and out; the OpenAPI document at `/openapi.json` lists every
//! route with its parameters and answers (it is generated from the handlers
//! and the types they return, see [`openapi`]). Errors are
//! `{"error": "..."}` with 400 (bad input, or a token in the URL), 401
//! (token missing or wrong), 403 (a `Host` that is not the node, or a web
//! page of a foreign `Origin`), 404 (no such node, peer or route), 409
//! (nothing to resolve), 413 (body over 2 MiB), 415 (a page's body that is
//! not JSON), 503 (no transport for a network action) or 500 (storage).
//!
//! The node's web UI is served at `/` (see [`ui`]); it uses the API like
//! any other client.
//!
//! What the API accepts from web pages (DNS rebinding, cross-origin
//! requests and WebSockets, simple bodies, tokens in URLs) is in
//! [`browser`].
//!
//! Writes are answered once durable. Concurrent writes are committed
//! together (the runtime's group commit), so many clients cost one fsync
//! per group rather than one each; reads never wait for a commit.

mod auth;
pub mod browser;
pub mod docs;
mod error;
pub mod rates;
mod routes;
pub mod ui;

pub use browser::{ApiHost, BrowserPolicy, Origin};
pub use error::{ApiError, ConfigError};
pub use routes::import::parse_line as parse_import_line;
pub use routes::openapi;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;
use pluresdb_runtime::Handle;
use pluresdb_security::NetworkSecret;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// The largest request body accepted (a node value is at most 1 MiB of
/// JSON; an import batch at most this).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// The default address of the API: loopback only.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:34570";

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The replica.
    pub handle: Handle,
    /// The network secret (for invites and the network tag).
    pub secret: Arc<NetworkSecret>,
    /// The API token.
    pub token: Arc<str>,
    /// Whether every route (but `/health`) needs the token.
    pub require_token: bool,
    /// When the node started.
    pub started: std::time::Instant,
    /// Requests answered, by status class (1xx..5xx).
    pub answered: Arc<[AtomicU64; 5]>,
    /// Which requests from browsers are taken (the names the API answers
    /// to, the origins allowed).
    pub browsers: Arc<BrowserPolicy>,
    /// The write and sync counters of the last minutes (`GET
    /// /status/rates`), fed by [`serve`].
    pub rates: Arc<std::sync::Mutex<rates::RateHistory>>,
}

impl ApiState {
    /// State for serving `handle`; `require_token` for any non-loopback bind.
    pub fn new(handle: Handle, secret: NetworkSecret, token: String, require_token: bool) -> Self {
        Self {
            handle,
            secret: Arc::new(secret),
            token: token.into(),
            require_token,
            started: std::time::Instant::now(),
            answered: Arc::new(Default::default()),
            browsers: Arc::new(BrowserPolicy::default()),
            rates: Arc::new(std::sync::Mutex::new(rates::RateHistory::new())),
        }
    }

    /// The same state with `policy` for requests from browsers (by
    /// default only the node's own addresses and origin).
    pub fn with_browser_policy(mut self, policy: BrowserPolicy) -> Self {
        self.browsers = Arc::new(policy);
        self
    }
}

/// The router with every route.
pub fn router(state: ApiState) -> Router {
    use routes::*;
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/{*path}", get(ui::asset))
        .route("/health", get(nodes::health))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/nodes", get(nodes::list))
        .route("/nodes/{id}", get(nodes::get_node).put(nodes::put_node).patch(nodes::patch_node).delete(nodes::delete_node))
        .route("/nodes/{id}/history", get(nodes::history))
        .route("/nodes/{id}/resolve", post(conflicts::resolve))
        .route("/conflicts", get(conflicts::list))
        .route("/import", post(import::import))
        .route("/indexes", get(queries::list).post(queries::create))
        .route("/indexes/{name}", get(queries::get_index).delete(queries::drop_index))
        .route("/query", post(queries::query))
        .route("/vectors", get(vectors::list).post(vectors::create))
        .route("/vectors/{name}", delete(vectors::drop_index))
        .route("/vectors/{name}/search", post(vectors::search))
        .route("/changes", get(changes::changes))
        .route("/peers", get(network::peers).post(network::connect))
        .route("/peers/discovered", get(network::discovered))
        .route("/peers/{peer_id}", delete(network::disconnect))
        .route("/status", get(network::status))
        .route("/status/rates", get(routes::rates::rates))
        .route("/network", get(network::network))
        .route("/network/invite", get(network::invite))
        .route("/trust", get(network::trust))
        .route("/trust/mode", put(network::trust_mode))
        .route("/trust/peers/{peer_id}", put(network::trust_add).delete(network::trust_remove))
        .fallback(|| async { ApiError::not_found("no such route (GET /openapi.json lists them)") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::check_token))
        // Before the token: a foreign page is refused whatever it sends.
        .layer(axum::middleware::from_fn_with_state(state.clone(), browser::check_request))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::count))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes, then finishes
/// the requests in flight. Requests must name the node by the address they
/// reached, the listen address or a name of the state's
/// [`BrowserPolicy`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    mut state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listen = listener.local_addr()?;
    state.browsers = Arc::new((*state.browsers).clone().listening_on(listen));
    // Before the first request, so that every write it answers is counted.
    rates::snapshot(&state).await;
    let sampler = tokio::spawn(rates::sample(state.clone()));
    let app = router(state).into_make_service_with_connect_info::<browser::LocalAddr>();
    let listener = ApiListener(listener);
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    sampler.abort();
    served
}

/// The API's listener: accepted connections send without Nagle's delay.
/// With it on, a small answer or change event written while the client's
/// acknowledgement of the previous one was delayed waited for it: up to
/// 40 ms (the p99 of a write's trip to another node's `/changes` in the
/// two_process bench).
pub(crate) struct ApiListener(tokio::net::TcpListener);

impl axum::serve::Listener for ApiListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The listener's own accept retries (and logs) failed accepts.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "cannot turn Nagle's algorithm off on an API connection");
        }
        (stream, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Whether `addr` may be served without requiring the API token.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
