//! Request ids for responses and logs: the caller's `X-Request-Id` when it
//! sends one, else one made here.

use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Arc,
};

use axum::http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

/// Ids `<process>-<n>`: a random tag drawn once per process and a counter.
/// Unique within the process (and, by the tag, across its restarts) at the
/// cost of an atomic add, where a v4 UUID per request cost a random-number
/// syscall on every read.
#[derive(Debug, Clone)]
pub struct Counter {
    tag: Arc<str>,
    next: Arc<AtomicU64>,
}

impl Counter {
    /// A counter with a fresh random tag.
    pub fn new() -> Self {
        let random = uuid::Uuid::new_v4().as_u128();
        Self {
            tag: format!("{:012x}", random & 0xffff_ffff_ffff).into(),
            next: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

impl MakeRequestId for Counter {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Relaxed);
        // Written by hand: `format!` was a tenth of what the request id
        // layer cost per request.
        let mut id = Vec::with_capacity(self.tag.len() + 17);
        id.extend_from_slice(self.tag.as_bytes());
        id.push(b'-');
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
        for shift in (0..digits).rev() {
            id.push(b"0123456789abcdef"[(n >> (shift * 4)) as usize & 0xf]);
        }
        HeaderValue::from_maybe_shared(bytes::Bytes::from(id))
            .ok()
            .map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_share_the_process_tag() {
        let mut ids = Counter::new();
        let request = Request::new(());
        let made: Vec<String> = (0..300)
            .map(|_| {
                let id = ids.make_request_id(&request).expect("an id");
                id.header_value().to_str().expect("text").to_owned()
            })
            .collect();
        let distinct: std::collections::HashSet<&String> = made.iter().collect();
        assert_eq!(distinct.len(), made.len());
        assert!(made[0].ends_with("-0") && made[255].ends_with("-ff"));
        assert!(made[16].ends_with("-10") && made[299].ends_with("-12b"));
        let tag = made[0].split('-').next().expect("tag");
        assert!(made.iter().all(|id| id.starts_with(tag)));

        ids.next.store(u64::MAX, Relaxed);
        let last = ids.make_request_id(&request).expect("an id");
        assert_eq!(
            last.header_value().to_str().expect("text"),
            format!("{tag}-ffffffffffffffff")
        );
    }
}
