//! Accounting of one request to an app from arrival to the last byte of its answer: in-flight
//! counts (app, endpoint, gauge), last activity, status class and latency. The tracker rides
//! inside the response body (`TrackedBody`), so a streamed answer counts until it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;

use crate::metrics::UpstreamErrorKind;
use crate::routes::{AppShared, EndpointLoad};

/// One request's accounting; the totals are recorded when it drops.
pub struct RequestTracker {
    shared: Arc<AppShared>,
    started: Instant,
    counts_activity: bool,
    endpoint: Option<EndpointLoad>,
}

impl RequestTracker {
    /// Start counting. Health and model lookups pass `counts_activity = false` so that polling
    /// them never keeps an app from scaling to zero.
    pub fn start(shared: Arc<AppShared>, counts_activity: bool) -> Self {
        let started = Instant::now();
        if counts_activity {
            shared.activity.begin(started);
        }
        shared.metrics.in_flight.inc();
        Self {
            shared,
            started,
            counts_activity,
            endpoint: None,
        }
    }

    /// The app this request is for.
    pub fn shared(&self) -> &Arc<AppShared> {
        &self.shared
    }

    /// The request now occupies an endpoint (for least-in-flight).
    pub fn set_endpoint(&mut self, load: EndpointLoad) {
        self.endpoint = Some(load);
    }

    /// The answer's status is known.
    pub fn respond(&self, status: StatusCode) {
        self.shared.metrics.count_status(status);
    }
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        let now = Instant::now();
        if self.counts_activity {
            self.shared.activity.end(now);
        }
        self.shared.metrics.in_flight.dec();
        self.shared
            .metrics
            .duration
            .observe(now.saturating_duration_since(self.started).as_secs_f64());
    }
}

/// A replica's response body, streamed through untouched, carrying the request's tracker until
/// the last frame (or until the client goes away and the body is dropped).
pub struct TrackedBody {
    inner: Incoming,
    tracker: Option<RequestTracker>,
}

impl TrackedBody {
    /// Wrap `inner`; `tracker` drops when the body ends.
    pub fn new(inner: Incoming, tracker: RequestTracker) -> Self {
        Self {
            inner,
            tracker: Some(tracker),
        }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.tracker = None,
            Poll::Ready(Some(Err(e))) => {
                if let Some(t) = self.tracker.take() {
                    t.shared.metrics.count_upstream_error(UpstreamErrorKind::Body);
                    // Headers are already out, so the client sees a cut-off body; say why here.
                    tracing::warn!(app = %t.shared.name, error = %e, "replica response body broke off");
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
