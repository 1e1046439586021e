//! Error answers: `{"error": "..."}` with a status that says whose fault it is.

use crate::docs::ErrorDoc;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pluresdb_core::{error_chain, Error as CoreError, StorageFault};
use pluresdb_runtime::Error as RuntimeError;

/// A setting of the API that cannot work (from the node's config).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An entry of `allowed_origins` that is not an origin.
    #[error("{value:?} is not an origin (scheme://host[:port], e.g. http://localhost:3000): {reason}")]
    Origin {
        /// The entry as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An entry of `api_hosts` that is not a host name.
    #[error("{value:?} is not a host name (name, name:port or an IP address): {reason}")]
    Host {
        /// The entry as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// An error answer: status, message and, for a condition that passes by
/// itself, the seconds after which to retry (`Retry-After`).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after_s: Option<u64>,
}

/// What a client is told to wait before retrying a write while the store
/// cannot write: the node's longest wait between two attempts to recover it.
pub const STORE_RETRY_AFTER_S: u64 = pluresdb_sync::MAX_RETRY_MS.div_ceil(1_000);

impl ApiError {
    /// An answer with `status` and `message`.
    pub fn new(status: StatusCode, message: String) -> Self {
        ApiError { status, message, retry_after_s: None }
    }

    /// The answer while the store cannot write (or is being reopened):
    /// `507 Insufficient Storage` when the disk is full, `503 Service
    /// Unavailable` for another I/O error; both with `Retry-After`, since
    /// the node recovers by itself once the cause has gone.
    pub fn store_unavailable(fault: StorageFault, message: String) -> Self {
        let status = match fault {
            StorageFault::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
            StorageFault::Io => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError { status, message, retry_after_s: Some(STORE_RETRY_AFTER_S) }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorDoc { error: self.message })).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
        }
        response
    }
}

impl From<CoreError> for ApiError {
    fn from(err: CoreError) -> Self {
        if let Some(fault) = err.storage_fault() {
            tracing::warn!(error = %error_chain(&err), "the store cannot serve the request now");
            return ApiError::store_unavailable(fault, error_chain(&err));
        }
        let status = match &err {
            CoreError::NotFound { .. } | CoreError::NoSuchIndex { .. } => StatusCode::NOT_FOUND,
            e if e.is_invalid_input() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %error_chain(&err), "request failed");
        }
        ApiError::new(status, error_chain(&err))
    }
}

impl From<RuntimeError> for ApiError {
    fn from(err: RuntimeError) -> Self {
        match err {
            RuntimeError::Core(core) => core.into(),
            RuntimeError::StoreUnavailable { fault, .. } => ApiError::store_unavailable(fault, err.to_string()),
            RuntimeError::NotConnected { .. } => ApiError::new(StatusCode::NOT_FOUND, err.to_string()),
            RuntimeError::NoTransport { .. } | RuntimeError::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
            RuntimeError::Network(pluresdb_net::NetworkError::InvalidAddress { .. }) => {
                ApiError::new(StatusCode::BAD_REQUEST, error_chain(&err))
            }
            RuntimeError::Network(ref net) => ApiError::new(StatusCode::BAD_GATEWAY, format!("{err}: {}", error_chain(net))),
            other => {
                tracing::error!(error = %error_chain(&other), "request failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error_chain(&other))
            }
        }
    }
}

/// Turns axum's extractor rejections (body too large, bad query, path or
/// JSON) into JSON errors with the same status.
pub fn rejected(rejection: impl IntoResponse + std::fmt::Display) -> ApiError {
    let text = rejection.to_string();
    let status = rejection.into_response().status();
    // A body of the wrong shape is bad input like any other.
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY { StatusCode::BAD_REQUEST } else { status };
    ApiError::new(status, text)
}

/// Parses a JSON request body of any content type (curl's `-d` sends
/// form encoding by default), with a clear error when it is not `T`.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<String, axum::extract::rejection::StringRejection>,
    what: &str,
) -> Result<T, ApiError> {
    let body = body.map_err(rejected)?;
    serde_json::from_str(&body).map_err(|err| ApiError::bad_request(format!("the body is not {what}: {err}")))
}
