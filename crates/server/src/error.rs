//! Error answers: `{"error": "..."}` with a status that says whose fault it is.

use crate::docs::ErrorDoc;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pluresdb_core::{error_chain, Error as CoreError};
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

/// An error answer: status and message.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError(StatusCode::NOT_FOUND, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorDoc { error: self.1 })).into_response()
    }
}

impl From<CoreError> for ApiError {
    fn from(err: CoreError) -> Self {
        let status = match &err {
            CoreError::NotFound { .. } => StatusCode::NOT_FOUND,
            e if e.is_invalid_input() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %error_chain(&err), "request failed");
        }
        ApiError(status, error_chain(&err))
    }
}

impl From<RuntimeError> for ApiError {
    fn from(err: RuntimeError) -> Self {
        match err {
            RuntimeError::Core(core) => core.into(),
            RuntimeError::NotConnected { .. } => ApiError(StatusCode::NOT_FOUND, err.to_string()),
            RuntimeError::NoTransport { .. } | RuntimeError::Stopped => ApiError(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
            RuntimeError::Network(pluresdb_net::NetworkError::InvalidAddress { .. }) => {
                ApiError(StatusCode::BAD_REQUEST, error_chain(&err))
            }
            RuntimeError::Network(ref net) => ApiError(StatusCode::BAD_GATEWAY, format!("{err}: {}", error_chain(net))),
            other => {
                tracing::error!(error = %error_chain(&other), "request failed");
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, error_chain(&other))
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
    ApiError(status, text)
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
