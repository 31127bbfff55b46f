//! The internal API routers call: the route table long-poll, activation of a cold app, and
//! per-app activity reports that feed the autoscaler.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use http::StatusCode;
use sdplane_wire::admin::{ActivityReport, AppRoute, RouteTable};

use super::ApiState;
use crate::error::{Error, Result};

/// `GET /internal/v1/routes?after=V`: at once when the table's version is not `V` (or no `after`
/// is given), otherwise when it changes or after the long-poll limit, with the current table.
#[tracing::instrument(skip_all, fields(after))]
pub async fn routes(
    State(state): State<Arc<ApiState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<RouteTable>> {
    let after = parse_after(query.as_deref())?;
    let mut rx = state.registry.routes();
    if let Some(after) = after {
        tracing::Span::current().record("after", after);
        let changed = rx.wait_for(|t| t.version != after);
        tokio::select! {
            _ = tokio::time::timeout(state.long_poll, changed) => {}
            _ = state.shutdown.cancelled() => {}
        }
    }
    let table = rx.borrow().clone();
    Ok(Json(table))
}

fn parse_after(query: Option<&str>) -> Result<Option<u64>> {
    let Some(query) = query else { return Ok(None) };
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("after=") {
            return value.parse().map(Some).map_err(|_| {
                Error::BadRequest(format!("invalid `after`: {value:?} is not a route table version"))
            });
        }
    }
    Ok(None)
}

/// `POST /internal/v1/apps/<name>/activate`: idempotent; many concurrent calls start one replica.
#[tracing::instrument(skip_all, fields(app = %name))]
pub async fn activate(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Json<AppRoute>> {
    Ok(Json(state.registry.activate(name).await?))
}

/// `POST /internal/v1/activity`.
pub async fn activity(State(state): State<Arc<ApiState>>, body: Bytes) -> Result<StatusCode> {
    let report: ActivityReport = serde_json::from_slice(&body)
        .map_err(|e| Error::BadRequest(format!("invalid activity report: {e}")))?;
    state.registry.activity(report).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_is_read_from_the_query_and_garbage_is_a_400() {
        assert_eq!(parse_after(None).expect("none"), None);
        assert_eq!(parse_after(Some("after=17")).expect("17"), Some(17));
        assert_eq!(parse_after(Some("x=1&after=3")).expect("3"), Some(3));
        assert_eq!(
            parse_after(Some("after=abc")).expect_err("abc").status().as_u16(),
            400
        );
    }
}
