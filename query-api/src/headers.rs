//! The read API's own header names, and the `X-Projection-Lsn` value made
//! once per watermark rather than once per response.

use axum::http::{HeaderName, HeaderValue};
use views::Lsn;

// Made at compile time: a name given as a string is parsed and checked on
// every use, a measurable cost per read.
pub(crate) const X_MIN_LSN: HeaderName = HeaderName::from_static("x-min-lsn");
pub(crate) const X_MAX_WAIT_MS: HeaderName = HeaderName::from_static("x-max-wait-ms");
pub(crate) const X_PROJECTION_LSN: HeaderName = HeaderName::from_static("x-projection-lsn");
pub(crate) const X_VIEW_STALE: HeaderName = HeaderName::from_static("x-view-stale");
pub(crate) const X_VIEW_GENERATION: HeaderName = HeaderName::from_static("x-view-generation");

/// A watermark and its `X-Projection-Lsn` value, formatted where the
/// watermark is first parsed and cloned (a reference count) per response.
#[derive(Debug, Clone, Default)]
pub(crate) struct Watermark {
    /// Every change up to this LSN is applied in what was read with it.
    pub lsn: Lsn,
    /// `None` only when not formatted yet (the default, `0/0`).
    header: Option<HeaderValue>,
}

impl Watermark {
    /// `lsn` with its header value.
    pub fn new(lsn: Lsn) -> Self {
        Self {
            lsn,
            header: HeaderValue::try_from(lsn.to_string()).ok(),
        }
    }

    /// The `X-Projection-Lsn` value.
    pub fn header(&self) -> Option<HeaderValue> {
        match &self.header {
            Some(header) => Some(header.clone()),
            None => HeaderValue::try_from(self.lsn.to_string()).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watermark_header_is_its_lsn_as_text_made_ahead_or_not() {
        let lsn: Lsn = "0/16B3748".parse().expect("an lsn");
        assert_eq!(
            Watermark::new(lsn).header(),
            Some(HeaderValue::from_static("0/16B3748"))
        );
        assert_eq!(
            Watermark::default().header(),
            Some(HeaderValue::from_static("0/0"))
        );
    }
}
