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
needs `Authorization: Bearer <token>` (the token is in api.token in the data directory). \
GET /changes is a WebSocket of ChangeMessage documents."
    ),
    paths(
        nodes::health, nodes::list, nodes::get_node, nodes::put_node, nodes::patch_node, nodes::delete_node, nodes::history,
        conflicts::list, conflicts::resolve, import::import, changes::changes, metrics::metrics, openapi_json,
        network::peers, network::connect, network::disconnect, network::discovered, network::status, network::network, network::invite,
        network::trust, network::trust_mode, network::trust_add, network::trust_remove,
    ),
    components(schemas(ChangeMessage)),
    modifiers(&BearerToken)
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

/// The OpenAPI document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}
