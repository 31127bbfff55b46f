//! Request ids for requests that arrive without `x-request-id`: a random per-process prefix and
//! a counter, so making one costs an atomic add and no random-number syscall on the hot path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

/// `<16 hex digits of process prefix>-<counter in hex>`, unique within a process and, through
/// the prefix, across router processes.
#[derive(Clone)]
pub struct CountingRequestIds {
    prefix: u64,
    next: Arc<AtomicU64>,
}

impl CountingRequestIds {
    /// A generator with a fresh random prefix.
    pub fn new() -> Self {
        // The std hasher is seeded from the OS's randomness per process: a cheap random word.
        let prefix = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.finish()
        };
        Self {
            prefix,
            next: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl Default for CountingRequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl MakeRequestId for CountingRequestIds {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:016x}-{n:x}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_within_and_across_generators() {
        let req = Request::new(());
        let mut a = CountingRequestIds::new();
        let mut b = CountingRequestIds::new();
        let id = |g: &mut CountingRequestIds| {
            g.make_request_id(&req)
                .map(|r| r.header_value().to_str().map(str::to_string))
                .and_then(Result::ok)
        };
        let ids = [id(&mut a), id(&mut a), id(&mut b)];
        assert!(ids.iter().all(Option::is_some));
        assert_ne!(ids[0], ids[1]);
        assert_ne!(ids[0], ids[2], "separate routers use separate prefixes");
    }
}
