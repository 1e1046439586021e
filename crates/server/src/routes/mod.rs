//! The handlers, one module per resource, and the OpenAPI document that
//! lists them.

pub mod changes;
pub mod conflicts;
pub mod import;
pub mod metrics;
pub mod network;
pub mod nodes;
pub mod queries;
pub mod rates;
pub mod vectors;

use crate::docs::*;
use axum::Json;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "PluresDB node API",
        description = "A running PluresDB node: a replica of a local-first, peer-to-peer graph database. \
Nodes are JSON objects; a property {\"#\": \"other:id\"} links to another node. Writes answer once durable. \
On loopback no token is needed except for /network/invite and changes under /trust; bound elsewhere every route but /health \
needs `Authorization: Bearer <token>` (the token is in api.token in the data directory; a WebSocket may offer the subprotocol \
`bearer.<token>` instead); a token in the URL is refused (400). \
Requests must name the node in `Host` (its address, or a name in api_hosts) and, when they carry an `Origin`, come from the \
node's own origin or one in allowed_origins (403 otherwise); with an `Origin`, a body must not be text/plain, a form or \
untyped (415). GET /changes is a WebSocket of ChangeMessage documents."
    ),
    paths(
        nodes::health, nodes::list, nodes::get_node, nodes::put_node, nodes::patch_node, nodes::delete_node, nodes::history,
        conflicts::list, conflicts::resolve, import::import, changes::changes, metrics::metrics, openapi_json,
        network::peers, network::connect, network::disconnect, network::discovered, network::status, network::network, network::invite,
        network::trust, network::trust_mode, network::trust_add, network::trust_remove,
        rates::rates,
        queries::list, queries::get_index, queries::create, queries::drop_index, queries::query,
        vectors::list, vectors::create, vectors::drop_index, vectors::search,
    ),
    // OnError is the schema of `/import`'s `on_error` parameter: the
    // parameter refers to it by name, so it must be listed here.
    components(schemas(ChangeMessage, import::OnError)),
    modifiers(&BearerToken, &BrowserRefusals, &InternalErrors)
)]
struct ApiDoc;

/// The token (the `token` security scheme) and who needs it: by default a
/// request may carry it or not (a node on loopback takes requests without
/// it); the operations that always need it say so themselves, and `/health`
/// never does. The document also names its server: the node that serves it
/// (a relative URL).
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        use utoipa::openapi::server::ServerBuilder;
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("token", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        // Either requirement satisfies: the token, or none (`{}`).
        openapi.security = Some(vec![SecurityRequirement::new("token", Vec::<String>::new()), SecurityRequirement::default()]);
        let server = ServerBuilder::new()
            .url("/")
            .description(Some("The node that serves this document (by default http://127.0.0.1:34570)"))
            .build();
        openapi.servers = Some(vec![server]);
        if let Some(health) = openapi.paths.paths.get_mut("/health").and_then(|item| item.get.as_mut()) {
            health.security = Some(Vec::new());
        }
        // The token check is one middleware in front of every route but
        // /health, so its 401 is added here rather than on each handler.
        let unauthorized = ResponseBuilder::new()
            .description("The API token is missing or wrong: needed on every route when the node requires it")
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorDoc"))).build())
            .build();
        for (_, item) in openapi.paths.paths.iter_mut().filter(|(path, _)| *path != "/health") {
            for operation in [&mut item.get, &mut item.put, &mut item.post, &mut item.patch, &mut item.delete].into_iter().flatten() {
                operation.responses.responses.entry("401".into()).or_insert_with(|| unauthorized.clone().into());
            }
        }
    }
}

/// The answers of the checks in front of every route (`crate::browser`):
/// 400 for a token in the URL, 403 for a foreign `Host` or `Origin`, and 415
/// for a page's body that is not JSON on the methods that take one.
struct BrowserRefusals;

impl utoipa::Modify for BrowserRefusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let answer = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorDoc"))).build())
                .build()
        };
        let query_token = answer("Bad request (on every route: a token in the URL; send it in the Authorization header)");
        let forbidden =
            answer("The Host is not this node's (DNS rebinding), or the request comes from a web page of an origin not allowed");
        let unsupported = answer("A request from a web page with a body of a type any page may send unasked (text/plain, a form, none)");
        for (_, item) in openapi.paths.paths.iter_mut() {
            let with_body = [&mut item.put, &mut item.post, &mut item.patch, &mut item.delete];
            for operation in with_body.into_iter().flatten() {
                operation.responses.responses.entry("415".into()).or_insert_with(|| unsupported.clone().into());
            }
            for operation in [&mut item.get, &mut item.put, &mut item.post, &mut item.patch, &mut item.delete].into_iter().flatten() {
                operation.responses.responses.entry("400".into()).or_insert_with(|| query_token.clone().into());
                operation.responses.responses.entry("403".into()).or_insert_with(|| forbidden.clone().into());
            }
        }
    }
}

/// The 500 every handler that returns an [`ApiError`](crate::ApiError) may
/// answer: an error the node did not expect (a store it cannot read, a
/// bug), logged by the node. Only `GET /openapi.json` cannot fail.
struct InternalErrors;

impl utoipa::Modify for InternalErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let internal = ResponseBuilder::new()
            .description("An error the node did not expect (a store it cannot read, a bug); the node logs it")
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorDoc"))).build())
            .build();
        for (_, item) in openapi.paths.paths.iter_mut().filter(|(path, _)| *path != "/openapi.json") {
            for operation in [&mut item.get, &mut item.put, &mut item.post, &mut item.patch, &mut item.delete].into_iter().flatten() {
                operation.responses.responses.entry("500".into()).or_insert_with(|| internal.clone().into());
            }
        }
    }
}

/// The OpenAPI document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object, content_type = "application/json")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// Every `$ref` string in `value`, with where it was found (a JSON pointer).
    fn refs(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let here = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
                    match (key.as_str(), child) {
                        ("$ref", Value::String(target)) => out.push((here, target.clone())),
                        _ => refs(child, &here, out),
                    }
                }
            }
            Value::Array(items) => items.iter().enumerate().for_each(|(i, child)| refs(child, &format!("{at}/{i}"), out)),
            _ => {}
        }
    }

    /// The `on_error` parameter of `POST /import` referred to
    /// `#/components/schemas/OnError`, which the document did not define:
    /// third-party validators and client generators stop there.
    #[test]
    fn every_ref_in_the_document_resolves_within_it() {
        let doc = serde_json::to_value(super::openapi()).unwrap();
        let mut found = Vec::new();
        refs(&doc, "", &mut found);
        assert!(found.len() > 50, "the document refers to its schemas ({} refs)", found.len());
        let dangling: Vec<String> = found
            .iter()
            .filter(|(_, target)| target.strip_prefix('#').and_then(|pointer| doc.pointer(pointer)).is_none())
            .map(|(at, target)| format!("{at} -> {target}"))
            .collect();
        assert!(dangling.is_empty(), "references to nothing: {dangling:#?}");
        let on_error = &doc["paths"]["/import"]["post"]["parameters"][0];
        assert_eq!(on_error["name"], "on_error");
        let schema = doc.pointer(on_error["schema"]["$ref"].as_str().unwrap().trim_start_matches('#')).unwrap();
        assert_eq!(schema["enum"], serde_json::json!(["stop", "skip"]));
    }

    /// The token's rules in the document: optional by default (loopback),
    /// required where the route always needs it, never for `/health`.
    #[test]
    fn every_operation_states_whether_it_needs_the_token() {
        let doc = serde_json::to_value(super::openapi()).unwrap();
        assert_eq!(doc["security"], serde_json::json!([{"token": []}, {}]));
        assert_eq!(doc["paths"]["/health"]["get"]["security"], serde_json::json!([]));
        for (path, method) in [("/network/invite", "get"), ("/trust/mode", "put"), ("/trust/peers/{peer_id}", "put")] {
            assert_eq!(doc["paths"][path][method]["security"], serde_json::json!([{"token": []}]), "{method} {path}");
        }
        assert_eq!(doc["servers"][0]["url"], "/");
    }

    /// Every handler but the document's own returns `ApiError`, which is
    /// 500 for an error the node did not expect: the document says so.
    #[test]
    fn every_operation_that_can_fail_documents_500() {
        let doc = serde_json::to_value(super::openapi()).unwrap();
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let documented = operation["responses"].get("500").is_some();
                assert_eq!(documented, path != "/openapi.json", "{method} {path}: 500 documented: {documented}");
                operations += 1;
            }
        }
        assert!(operations > 20, "{operations} operations");
    }
}
