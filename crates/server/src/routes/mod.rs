//! The handlers, one module per resource, and the OpenAPI document that
//! lists them.

pub mod changes;
pub mod conflicts;
pub mod import;
pub mod metrics;
pub mod network;
pub mod nodes;

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
    ),
    components(schemas(ChangeMessage)),
    modifiers(&BearerToken, &BrowserRefusals)
)]
struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("token", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
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

/// The OpenAPI document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}
