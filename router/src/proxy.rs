//! Forwarding one request to one replica with a pooled hyper client: re-targets the URI, strips
//! hop-by-hop headers both ways, streams bodies without copying them, and classifies failures
//! by cause (as linkerd2-proxy's outbound "rescue" does): no connection → 502, connection lost
//! before an answer → 502, no answer in time → 504.

use std::net::IpAddr;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::error::Error;
use crate::metrics::UpstreamErrorKind;
use crate::routes::Endpoint;

/// A replica on the same host or cluster accepts in milliseconds; a connect that takes longer
/// is to a dead address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections are closed after this (hyper-util's default is 90 s).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Largest small JSON answer (replica health) read whole.
const SMALL_BODY_LIMIT: usize = 64 * 1024;

/// Headers that belong to one connection, not to the message (RFC 9110 §7.6.1), plus the
/// non-standard ones proxies traditionally drop too.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// The pooled upstream client and its deadline.
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
    timeout: Duration,
}

impl Proxy {
    /// A client whose requests wait at most `timeout` for response headers.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Self { client, timeout }
    }

    /// Send `req` to `endpoint` at `path_and_query` (which starts with `/v1`). The answer's
    /// body is the replica's, unread.
    pub async fn send(
        &self,
        app: &str,
        endpoint: &Endpoint,
        mut req: Request<Body>,
        path_and_query: &str,
        peer: Option<IpAddr>,
    ) -> Result<Response<Incoming>, Error> {
        *req.uri_mut() = endpoint.uri(path_and_query).map_err(|e| Error::UpstreamConnect {
            app: app.to_string(),
            message: format!("bad upstream URI: {e}"),
        })?;
        // The replica link is HTTP/1.1 whatever the client spoke.
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        // hyper sets Host from the URI when it is absent.
        headers.remove(header::HOST);
        if let Some(ip) = peer {
            append_forwarded_for(headers, ip);
        }
        let response = match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err(classify(app, &e)),
            Err(_) => {
                return Err(Error::UpstreamTimeout {
                    app: app.to_string(),
                    after: self.timeout,
                });
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body))
    }

    /// GET a small answer (at most 64 KiB) from `endpoint`, within `timeout`.
    pub async fn get_small(
        &self,
        app: &str,
        endpoint: &Endpoint,
        path: &str,
        timeout: Duration,
    ) -> Result<(http::StatusCode, Bytes), Error> {
        let req = Request::get("/")
            .body(Body::empty())
            .map_err(|e| Error::UpstreamConnect {
                app: app.to_string(),
                message: e.to_string(),
            })?;
        let exchange = async {
            let response = self.send(app, endpoint, req, path, None).await?;
            let status = response.status();
            let body = Limited::new(response.into_body(), SMALL_BODY_LIMIT)
                .collect()
                .await
                .map_err(|e| Error::UpstreamReset {
                    app: app.to_string(),
                    message: e.to_string(),
                })?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(timeout, exchange).await.unwrap_or_else(|_| {
            Err(Error::UpstreamTimeout {
                app: app.to_string(),
                after: timeout,
            })
        })
    }
}

/// The metric kind of an upstream failure, `None` for errors that are not the replica's.
pub fn upstream_kind(e: &Error) -> Option<UpstreamErrorKind> {
    match e {
        Error::UpstreamConnect { .. } => Some(UpstreamErrorKind::Connect),
        Error::UpstreamReset { .. } => Some(UpstreamErrorKind::Reset),
        Error::UpstreamTimeout { .. } => Some(UpstreamErrorKind::Timeout),
        _ => None,
    }
}

/// Sort a client failure by cause.
fn classify(app: &str, e: &hyper_util::client::legacy::Error) -> Error {
    let message = crate::error::error_chain(e);
    if e.is_connect() {
        return Error::UpstreamConnect {
            app: app.to_string(),
            message,
        };
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        // A user error while sending is the client's request body failing (it hung up mid-upload).
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && h.is_user()
        {
            return Error::ClientBody(message);
        }
        source = s.source();
    }
    Error::UpstreamReset {
        app: app.to_string(),
        message,
    }
}

/// Remove hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Add the client address to `X-Forwarded-For` (appending to what earlier proxies wrote).
fn append_forwarded_for(headers: &mut HeaderMap, ip: IpAddr) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    let value = match headers.get(&XFF).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(XFF, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "x-request-id"]);
    }

    #[test]
    fn forwarded_for_appends_to_an_existing_chain() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "10.0.0.1".parse().expect("ip"));
        append_forwarded_for(&mut h, "::1".parse().expect("ip"));
        assert_eq!(
            h.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
            Some("10.0.0.1, ::1")
        );
    }
}
