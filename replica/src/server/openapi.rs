//! `GET /openapi.json`: the replica API described from the Rust types (utoipa), so clients
//! and the schemathesis fuzz test read the same contract the handlers implement.

use axum::Json;
use utoipa::OpenApi;

/// The replica's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sdplane replica",
        description = "One Stable Diffusion model served over HTTP."
    ),
    paths(
        super::generate::generate,
        super::health::health,
        super::health::models,
        super::health::prometheus_metrics,
        openapi_json
    ),
    components(schemas(
        sdplane_wire::api::GenerateRequest,
        sdplane_wire::api::GenerateResponse,
        sdplane_wire::api::ReplicaHealth,
        sdplane_wire::api::ModelInfo,
        sdplane_wire::ErrorBody,
    ))
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_route_and_the_request_schema() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("serialise");
        for path in [
            "/v1/generate",
            "/v1/health",
            "/v1/models",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(doc["paths"][path].is_object(), "missing {path}");
        }
        let request = &doc["components"]["schemas"]["GenerateRequest"];
        assert_eq!(request["required"], serde_json::json!(["prompt"]));
        assert_eq!(request["additionalProperties"], serde_json::json!(false));
    }
}
