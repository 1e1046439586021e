//! A Rust client of the PluresDB node API, generated at build time by
//! progenitor from the node's OpenAPI document (`clients/openapi.json`);
//! `build.rs` says how the 3.1 document is read as 3.0. One method per
//! operation, named by its `operationId`; answers and errors are the
//! document's types (`types::NodeDoc`, `types::ErrorDoc`, ...).
//!
//! `tests/rust_client.rs` (at the repository root) calls a running node
//! with it. The `/changes` WebSocket is not covered: the document cannot
//! tell progenitor to send the upgrade, so use a WebSocket client there
//! (its messages are `types::ChangeMessage`).
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let node = pluresdb_client::Client::new("http://127.0.0.1:34570");
//! let value = serde_json::json!({"name": "Alice"}).as_object().cloned().unwrap_or_default();
//! node.put_node("user:123", &value).await?;
//! let alice = node.get_node("user:123", None).await?;
//! assert_eq!(alice.value["name"], "Alice");
//! # Ok(())
//! # }
//! ```

include!(concat!(env!("OUT_DIR"), "/client.rs"));

impl Client {
    /// A client of the node at `baseurl` (`http://host:port`) that sends
    /// `token` (the node's `api.token`) with every request, as a node that
    /// requires it (bound beyond loopback, or `--require-token`) needs.
    pub fn with_token(baseurl: &str, token: &str) -> Result<Self, TokenError> {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| TokenError)?;
        value.set_sensitive(true);
        let headers = reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]);
        let client = reqwest::Client::builder().default_headers(headers).build().map_err(|_| TokenError)?;
        Ok(Self::new_with_client(baseurl, client))
    }
}

/// The token cannot be sent in a header (it holds a control character).
#[derive(Debug, thiserror::Error)]
#[error("the API token cannot be sent in an Authorization header")]
pub struct TokenError;
