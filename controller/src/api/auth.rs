//! The admin token check: when `--admin-token` is set, every admin and internal call must carry
//! `Authorization: Bearer <token>`; anything else is a 401 JSON error. `/metrics` and `/healthz`
//! stay open so scrapers and probes need no secret.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use crate::error::Error;

pub async fn require_token(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            return Error::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

/// Compare without an early exit, so response time does not reveal how much of a guess matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_match_only_when_equal() {
        assert!(super::same(b"secret", b"secret"));
        for other in [&b"secreT"[..], b"secret!", b"", b"secre"] {
            assert!(!super::same(other, b"secret"), "{other:?}");
        }
    }
}
