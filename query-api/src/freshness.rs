//! Read-your-writes: a read with a token (`X-Min-Lsn` or `?min_lsn=`) is
//! answered only from views at least that fresh, waiting at most
//! `X-Max-Wait-Ms` for the projection to get there.

use std::time::Duration;

use axum::http::HeaderMap;
use views::Lsn;

use crate::{
    error::ApiError,
    headers::{X_MAX_WAIT_MS, X_MIN_LSN},
    params::QueryParams,
    store::{Projection, Store, StoreError},
    switches, AppState,
};

/// The longest a read waits for its token, whatever it asks.
const MAX_WAIT_MS: u64 = 5_000;

/// A caller's token and until when it may wait for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MinLsn {
    lsn: Lsn,
    deadline: tokio::time::Instant,
}

/// The token a read honours: the caller's, checked whatever the switches
/// say, and none while ops switched read-your-writes waits off (the answer
/// is then what is there, marked by [`switches::mark_ignored_tokens`]).
pub(crate) fn token(
    state: &AppState,
    headers: &HeaderMap,
    params: &QueryParams,
) -> Result<Option<MinLsn>, ApiError> {
    let min = min_lsn(headers, params.min_lsn()?, state.config.default_max_wait_ms)?;
    // The flag is looked at only for a read that has a token.
    Ok(min.filter(|_| switches::on(&state.flags, switches::READ_YOUR_WRITES)))
}

/// The caller's token, if it sent one (the header wins over `query`), with
/// `default_wait_ms` unless it says how long to wait.
fn min_lsn(
    headers: &HeaderMap,
    query: Option<&str>,
    default_wait_ms: u64,
) -> Result<Option<MinLsn>, ApiError> {
    let header = headers
        .get(X_MIN_LSN)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest("X-Min-Lsn is not text".into()))
        })
        .transpose()?;
    // Checked with or without a token, so a malformed wait is never ignored.
    let wait_ms =
        match headers.get(X_MAX_WAIT_MS) {
            None => default_wait_ms,
            Some(v) => v.to_str().ok().and_then(max_wait_ms).ok_or_else(|| {
                ApiError::BadRequest("X-Max-Wait-Ms is not a whole number".into())
            })?,
        }
        .min(MAX_WAIT_MS);
    // A header's surrounding whitespace is HTTP's, never part of the value;
    // the query's is the caller's, refused as the reference says (`Lsn::PATTERN`).
    // Both are checked, so a malformed one is refused even when the other wins.
    let parse = |raw: &str| {
        raw.parse::<Lsn>()
            .map_err(|_| ApiError::BadRequest(format!("{raw:?} is not an LSN like 0/16B3748")))
    };
    let header = header.map(|raw| parse(raw.trim())).transpose()?;
    let query = query.map(parse).transpose()?;
    let Some(lsn) = header.or(query) else {
        return Ok(None);
    };
    Ok(Some(MinLsn {
        lsn,
        deadline: tokio::time::Instant::now() + Duration::from_millis(wait_ms),
    }))
}

/// `X-Max-Wait-Ms` as milliseconds: a whole number, however many digits
/// (it is clamped after, so one past `u64` is as good as the longest wait).
fn max_wait_ms(raw: &str) -> Option<u64> {
    let digits = raw.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

/// `read(cached)` answered at once without a token. With one, it reads
/// Redis itself (`cached` false: an in-process copy may lag) and its answer
/// counts once the watermark read with it reaches the token: one round trip
/// when it already has (the common case). A token past the last watermark
/// seen (a write just made) is waited for on the process's one watermark
/// poll, shared by every waiting read, then read; `NotYetProjected` when the
/// wait is over.
pub(crate) async fn at_least<T, F, Fut>(
    store: &Store,
    min: Option<MinLsn>,
    mut read: F,
) -> Result<(Projection, T), StoreError>
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = Result<(Projection, T), StoreError>>,
{
    let Some(min) = min else {
        return read(true).await;
    };
    let mut wait = store.last_seen_lsn().is_some_and(|seen| seen < min.lsn);
    loop {
        if wait {
            // Boxed: a rare wait, kept out of every read's future.
            Box::pin(reached(store, min)).await?;
        }
        let (projection, value) = read(false).await?;
        if projection.watermark.lsn >= min.lsn {
            return Ok((projection, value));
        }
        if tokio::time::Instant::now() >= min.deadline {
            return Err(StoreError::NotYetProjected(projection.watermark.lsn));
        }
        wait = true;
    }
}

/// Returns once the shared poll reads a watermark at the token, or
/// `NotYetProjected` at the deadline. A poll made before the call counts
/// only if it reaches the token; else one made after is awaited, deadline
/// or not, so even a wait of 0 looks at Redis once.
async fn reached(store: &Store, min: MinLsn) -> Result<(), StoreError> {
    let mut polls = store.watch_watermark()?;
    let earlier = *polls.borrow_and_update();
    if matches!(earlier, Some(Ok(lsn)) if lsn >= min.lsn) {
        return Ok(());
    }
    let mut projected = None;
    loop {
        let changed = match projected {
            None => polls.changed().await,
            Some(lsn) => tokio::time::timeout_at(min.deadline, polls.changed())
                .await
                .map_err(|_| StoreError::NotYetProjected(lsn))?,
        };
        // The poller runs while a receiver is held: gone, it was torn down.
        changed.map_err(|_| StoreError::Unavailable)?;
        let polled = *polls.borrow_and_update();
        match polled {
            Some(Ok(lsn)) if lsn >= min.lsn => return Ok(()),
            Some(Ok(lsn)) => projected = Some(lsn),
            Some(Err(err)) => return Err(err),
            None => {}
        }
        if let Some(lsn) = projected {
            if tokio::time::Instant::now() >= min.deadline {
                return Err(StoreError::NotYetProjected(lsn));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn max_wait_is_any_whole_number_and_nothing_else() {
        assert_eq!(max_wait_ms("250"), Some(250));
        assert_eq!(max_wait_ms(" 0 "), Some(0));
        assert_eq!(max_wait_ms("99999999999999999999"), Some(u64::MAX));
        for bad in ["", " ", "-1", "+5", "1.5", "1e3", "abc", "5 0"] {
            assert_eq!(max_wait_ms(bad), None, "{bad:?}");
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_token_comes_from_the_header_before_the_query_and_is_optional() {
        let none = min_lsn(&HeaderMap::new(), None, 1_000).expect("parses");
        assert!(none.is_none());
        let from_query = min_lsn(&HeaderMap::new(), Some("0/10"), 1_000).expect("parses");
        assert_eq!(from_query.map(|m| m.lsn), "0/10".parse().ok());
        let both =
            min_lsn(&headers(&[("x-min-lsn", " 0/20 ")]), Some("0/10"), 1_000).expect("parses");
        assert_eq!(both.map(|m| m.lsn), "0/20".parse().ok());
    }

    #[test]
    fn a_bad_token_or_wait_is_a_bad_request() {
        for (pairs, query) in [
            (&[][..], Some("16B3748")),
            (&[("x-min-lsn", "nope")][..], None),
            (&[("x-min-lsn", "0/1"), ("x-max-wait-ms", "-1")][..], None),
            // A wait without a token is still checked.
            (&[("x-max-wait-ms", "soon")][..], None),
            (&[][..], Some(" 0/1")),
            (&[][..], Some("")),
            // The header wins, but a malformed query twin is still refused.
            (&[("x-min-lsn", "0/1")][..], Some("nope")),
        ] {
            let err = min_lsn(&headers(pairs), query, 1_000).expect_err("refused");
            assert!(
                matches!(err, ApiError::BadRequest(_)),
                "{pairs:?} {query:?}"
            );
        }
    }

    #[test]
    fn the_wait_is_clamped_to_the_longest_allowed() {
        let start = tokio::time::Instant::now();
        let min = min_lsn(
            &headers(&[("x-min-lsn", "0/1"), ("x-max-wait-ms", "60000")]),
            None,
            1_000,
        )
        .expect("parses")
        .expect("a token");
        assert!(
            min.deadline <= start + Duration::from_millis(MAX_WAIT_MS) + Duration::from_secs(1)
        );
        assert!(min.deadline >= start + Duration::from_millis(MAX_WAIT_MS));
    }
}
