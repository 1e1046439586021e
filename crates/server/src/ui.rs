//! The web UI: `GET /` and `GET /ui/<asset>`.
//!
//! The assets are files under `crates/server/ui/`, embedded in the binary
//! at build time (no build step, no CDN, no network). The UI is a page of
//! the node's own origin that calls the public API like any client, so the
//! Host, Origin and token rules of [`crate::browser`] and [`crate::auth`]
//! hold for it too; only the assets themselves, which carry no data, are
//! served without the token (the page asks for it when the API answers
//! 401). These routes are not API operations and are not in the OpenAPI
//! document.
//!
//! An asset is found by the request's path exactly as sent, before any
//! percent-decoding, among a fixed list: `..`, encoded slashes and every
//! other name outside the list are 404, never a file lookup.

use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One embedded file.
struct Asset {
    /// Its path under `/ui/`.
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// The page at `/`.
const INDEX: Asset = Asset { name: "index.html", content_type: "text/html; charset=utf-8", body: include_bytes!("../ui/index.html") };

/// Everything under `/ui/`.
const ASSETS: &[Asset] = &[
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("../ui/app.js") },
    Asset { name: "style.css", content_type: "text/css; charset=utf-8", body: include_bytes!("../ui/style.css") },
    Asset {
        name: "vendor/preact-htm.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../ui/vendor/preact-htm.js"),
    },
];

/// What the page may load and call: only its own origin (the API and the
/// `/changes` WebSocket are same-origin), no inline scripts, no framing
/// (a foreign page cannot overlay the UI to steal clicks).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Assets are checked again on every load (`no-cache` with an `ETag`): a
/// new binary's UI is never mixed with a cached old one, and an unchanged
/// asset costs a 304.
const CACHE_CONTROL: &str = "no-cache";

/// Whether `path` is one of the UI's routes (served without the token).
pub fn is_asset_path(path: &str) -> bool {
    path == "/" || path.starts_with("/ui/")
}

/// `GET /`: the UI's page.
pub async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

/// `GET /ui/{*path}`: an embedded asset, or 404.
pub async fn asset(uri: Uri, headers: HeaderMap) -> Response {
    let name = uri.path().strip_prefix("/ui/").unwrap_or_default();
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => serve(asset, &headers),
        None => crate::ApiError::not_found("no such asset of the web UI").into_response(),
    }
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", fingerprint(asset.body));
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let headers = response.headers_mut();
    if !fresh {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// FNV-1a: a stable fingerprint of an asset for its `ETag` (not a
/// security measure; it only has to change when the bytes do).
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_embedded() {
        let page = std::str::from_utf8(INDEX.body).unwrap();
        let app = std::str::from_utf8(ASSETS[0].body).unwrap();
        for asset in ASSETS {
            let referenced = page.contains(&format!("/ui/{}", asset.name)) || app.contains(&format!("/ui/{}", asset.name));
            assert!(referenced, "{} is embedded but nothing loads it", asset.name);
        }
    }
}
