//! Served bodies: stored views turned into a response's bytes by this
//! process's clock, with an exact `ETag` and the span in which they hold.
//!
//! Nothing here parses a whole view: a course page is its stored page and
//! stats joined as bytes, a list its cards spliced between a head and a
//! tail. An `ETag` hashes the body, so it changes exactly when the body does
//! (a sale starting or ending included) and is the same in every process.

use std::{fmt::Display, sync::Arc};

use arc_swap::ArcSwapOption;
use axum::http::HeaderValue;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use views::{EventView, Sale};

/// A stored value that cannot be read: logged once where it is found, and
/// the client gets a 503 rather than wrong data or a panic.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("corrupt {0} in redis")]
pub struct Corrupt(&'static str);

impl Corrupt {
    /// `what` could not be read, for the reason `err`.
    pub fn new(what: &'static str, err: impl Display) -> Self {
        tracing::error!(error = %err, what, "corrupt value in redis");
        Corrupt(what)
    }
}

/// A body ready to send, and its `ETag`.
#[derive(Debug, Clone)]
pub struct Served {
    pub body: Bytes,
    pub etag: Option<HeaderValue>,
}

/// A course page as read: served already (pre-warmed and right at this
/// moment), or its page as Redis holds it (the view value, still encoded:
/// it is decoded straight into the body) and its stats' JSON.
pub enum Course {
    Served(Served),
    Stored { page: Bytes, stats: Bytes },
}

/// A served body and the span of the clock it is right for.
#[derive(Clone)]
pub struct Ready<T> {
    pub value: T,
    pub valid: Validity,
}

/// The course pages last served from Redis, each with the stored bytes it
/// was made from: the same bytes in the same span between sale boundaries
/// make the same body, so it is handed out again rather than decompressed,
/// joined and hashed anew (every read still reads Redis and compares).
///
/// Bounded: one slot per id modulo the size, a later course replacing the
/// one before; a course is kept only when read twice in a row in its slot,
/// so reads spread over many courses cost a comparison and no copy.
pub struct Pages {
    slots: Box<[ArcSwapOption<Slot>]>,
}

/// What a slot holds.
enum Slot {
    /// The course was read once (and not kept).
    Seen(i64),
    /// A course's page, as last served.
    Made(Made),
}

struct Made {
    id: i64,
    /// The page as Redis holds it, and its stats (owned copies, so that a
    /// kept page never holds a larger reply buffer alive).
    page: Bytes,
    stats: Bytes,
    served: Ready<Served>,
}

/// Slots of [`Pages`]: every course of a 125-course sale fits, at about
/// 20 KB each (a page stored and served, and its stats).
const PAGE_SLOTS: usize = 512;

impl Default for Pages {
    fn default() -> Self {
        Pages {
            slots: (0..PAGE_SLOTS).map(|_| ArcSwapOption::empty()).collect(),
        }
    }
}

impl Pages {
    /// The served course detail of course `id` from its stored page (its
    /// view value) and stats, as [`stored_course_page`] makes it: the one
    /// made last when both are the same bytes and `now` is in its span.
    pub fn serve(
        &self,
        id: i64,
        page: &Bytes,
        stats: &Bytes,
        now: DateTime<Utc>,
    ) -> Result<Served, Corrupt> {
        let slot = &self.slots[id.rem_euclid(PAGE_SLOTS as i64) as usize];
        let held = slot.load();
        let seen = match held.as_deref() {
            Some(Slot::Made(made)) if made.id == id => {
                if made.page == page && made.stats == stats && made.served.valid.contains(now) {
                    return Ok(made.served.value.clone());
                }
                true
            }
            Some(Slot::Seen(seen)) => *seen == id,
            _ => false,
        };
        let served = stored_course_page(id, page, stats, now)?;
        let next = if seen {
            Slot::Made(Made {
                id,
                page: Bytes::copy_from_slice(page),
                stats: Bytes::copy_from_slice(stats),
                served: Ready {
                    value: served.clone(),
                    valid: Validity::of_stored(stats, now)?,
                },
            })
        } else {
            Slot::Seen(id)
        };
        // Whichever of two concurrent reads stores last wins: both made
        // the page from what Redis held then.
        slot.store(Some(Arc::new(next)));
        Ok(served)
    }
}

/// A course card as read: served already (right at this moment), or as
/// stored; borrowed from where it is held.
#[derive(Debug, Clone, Copy)]
pub enum Card<'a> {
    Served(&'a [u8]),
    Stored(&'a [u8]),
}

/// An event page as read: served already, or the stored event view and
/// the stored cards of its courses (those without a card skipped).
pub enum Event {
    Served(Served),
    Stored(EventPage),
}

/// A stored event view and its courses' stored cards, in the event's order.
pub struct EventPage {
    pub event: EventView,
    pub cards: Vec<Bytes>,
}

/// `"<prefix>-<hex xxh3 of body>"`. xxh3 because it is stable across
/// builds and machines (every instance behind a CDN hands out the same tag)
/// and hashes a 20 KB page in about a microsecond.
pub fn etag(prefix: impl Display, body: &[u8]) -> Option<HeaderValue> {
    let hash = xxhash_rust::xxh3::xxh3_64(body);
    HeaderValue::try_from(format!("\"{prefix}-{hash:016x}\"")).ok()
}

/// The span `[from, until)` of the clock in which no candidate sale of a
/// stored view starts or ends: whatever is served from the same stored
/// views at any moment of it is the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    from: DateTime<Utc>,
    until: DateTime<Utc>,
}

impl Validity {
    /// No boundary at all.
    pub const ALWAYS: Validity = Validity {
        from: DateTime::<Utc>::MIN_UTC,
        until: DateTime::<Utc>::MAX_UTC,
    };

    /// The span around `now` between the sale boundaries of `sales`.
    pub fn around(sales: &[Sale], now: DateTime<Utc>) -> Self {
        let mut span = Self::ALWAYS;
        for boundary in sales.iter().flat_map(|s| [s.starts_at, s.ends_at]) {
            if boundary <= now {
                span.from = span.from.max(boundary);
            } else {
                span.until = span.until.min(boundary);
            }
        }
        span
    }

    /// The span around `now` of a stored course stats or card (its trailing
    /// `sales`): parsed whole, so only at refresh time, never per request.
    pub fn of_stored(stored: &[u8], now: DateTime<Utc>) -> Result<Self, Corrupt> {
        #[derive(Deserialize)]
        struct Candidates {
            sales: Vec<Sale>,
        }
        let candidates: Candidates =
            serde_json::from_slice(stored).map_err(|err| Corrupt::new("course sales", err))?;
        Ok(Self::around(&candidates.sales, now))
    }

    /// Both spans at once.
    pub fn meet(self, other: Validity) -> Self {
        Validity {
            from: self.from.max(other.from),
            until: self.until.min(other.until),
        }
    }

    /// `now` is inside the span.
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        self.from <= now && now < self.until
    }
}

/// The served course detail of course `id`: its stored page and stats
/// joined, `sale` picked by the clock `now`.
pub fn course_page(
    id: i64,
    page: &[u8],
    stats: &[u8],
    now: DateTime<Utc>,
) -> Result<Served, Corrupt> {
    tagged_page(id, views::serve_course_page(page, stats, now))
}

/// [`course_page`] of a page still as Redis holds it (its view value).
pub fn stored_course_page(
    id: i64,
    value: &[u8],
    stats: &[u8],
    now: DateTime<Utc>,
) -> Result<Served, Corrupt> {
    tagged_page(id, views::serve_stored_course_page(value, stats, now))
}

fn tagged_page(id: i64, body: Result<Vec<u8>, impl Display>) -> Result<Served, Corrupt> {
    let body = body.map_err(|err| Corrupt::new("course page", err))?;
    Ok(Served {
        etag: etag(id, &body),
        body: Bytes::from(body),
    })
}

/// A stored card served by the clock `now`: `sale` is the pick among its
/// candidates (with `only_event`, that event's sale while it runs).
pub fn card(stored: &[u8], now: DateTime<Utc>, only_event: Option<i64>) -> Result<Bytes, Corrupt> {
    views::serve_course(stored, now, only_event)
        .map(Bytes::from)
        .map_err(|err| Corrupt::new("course card", err))
}

impl Card<'_> {
    /// Appends the served card to `list` (by the clock `now` when stored).
    pub fn serve_into(self, list: &mut CardList, now: DateTime<Utc>) -> Result<(), Corrupt> {
        match self {
            Card::Served(body) => list.push(body),
            Card::Stored(stored) => list.push(&card(stored, now, None)?),
        }
        Ok(())
    }
}

/// A JSON body made of a head (a JSON object's opening fields, ending in
/// `"field":`), an array of served cards spliced in as they are, and a
/// tail. Cards come from the projector's serializer through
/// `views::serve_course`, so they are not validated again.
pub struct CardList {
    out: Vec<u8>,
    first: bool,
}

impl CardList {
    /// Starts `{<head>[`; `head` is written by `serde_json` when it has text.
    pub fn new(head: &[u8], cards: usize) -> Self {
        let mut out = Vec::with_capacity(head.len() + 64 + cards * 512);
        out.extend_from_slice(head);
        out.push(b'[');
        CardList { out, first: true }
    }

    /// Appends one served card.
    pub fn push(&mut self, card: &[u8]) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.extend_from_slice(card);
    }

    /// Closes the array, appends `tail` (the rest of the object, from its
    /// comma to its closing brace) and returns the body.
    pub fn finish(mut self, tail: &[u8]) -> Vec<u8> {
        self.out.push(b']');
        self.out.extend_from_slice(tail);
        self.out
    }
}

/// The event page `{"id","name","starts_at","ends_at","discount_percent","courses":[card...]}`:
/// each card's `sale` is this event's while it runs (by the clock `now`).
pub fn event_page(page: &EventPage, now: DateTime<Utc>) -> Result<Served, Corrupt> {
    #[derive(Serialize)]
    struct Head<'a> {
        id: i64,
        name: &'a str,
        starts_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
        discount_percent: i32,
    }
    let event = &page.event;
    let mut head = serde_json::to_vec(&Head {
        id: event.id,
        name: &event.name,
        starts_at: event.starts_at,
        ends_at: event.ends_at,
        discount_percent: event.discount_percent,
    })
    .map_err(|err| Corrupt::new("event view", err))?;
    // `{...}` becomes `{...,"courses":`.
    head.pop();
    head.extend_from_slice(b",\"courses\":");
    let mut list = CardList::new(&head, page.cards.len());
    for stored in &page.cards {
        list.push(&card(stored, now, Some(event.id))?);
    }
    let body = list.finish(b"}");
    Ok(Served {
        etag: etag(format_args!("e{}", event.id), &body),
        body: Bytes::from(body),
    })
}

/// The span in which [`event_page`] serves the same bytes.
pub fn event_validity(page: &EventPage, now: DateTime<Utc>) -> Result<Validity, Corrupt> {
    page.cards.iter().try_fold(Validity::ALWAYS, |span, card| {
        Ok(span.meet(Validity::of_stored(card, now)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, hour, 0, 0)
            .single()
            .expect("valid time")
    }

    fn sale(event_id: i64, from: u32, to: u32) -> Sale {
        Sale {
            event_id,
            price_krw: 0,
            discount_percent: 100,
            starts_at: at(from),
            ends_at: at(to),
            seats_left: None,
        }
    }

    #[test]
    fn a_span_ends_at_the_next_boundary_and_starts_at_the_last() {
        let sales = [sale(1, 2, 6), sale(2, 4, 8)];
        let span = Validity::around(&sales, at(3));
        assert!(span.contains(at(2)) && span.contains(at(3)));
        assert!(!span.contains(at(4)), "a sale starts at 4");
        assert!(!span.contains(at(1)), "a sale had not started at 1");
        let after = Validity::around(&sales, at(9));
        assert!(after.contains(at(8)) && after.contains(at(23)));
        assert_eq!(Validity::around(&[], at(3)), Validity::ALWAYS);
    }

    #[test]
    fn a_tag_names_the_id_and_changes_with_the_body() {
        let a = etag(7, b"{\"sale\":null}").expect("tag");
        let b = etag(7, b"{\"sale\":{}}").expect("tag");
        assert_ne!(a, b);
        assert_eq!(a, etag(7, b"{\"sale\":null}").expect("tag"));
        let text = a.to_str().expect("ascii");
        assert!(text.starts_with("\"7-") && text.ends_with('"') && text.len() == 20);
    }

    /// A stored page (LZ4, as the projector writes a large one) and stats
    /// with one sale from 2 to 6 o'clock.
    fn stored(price: i64) -> (Bytes, Bytes) {
        let html = (0..400).map(|i| format!("<p>{i}</p>")).collect::<String>();
        let page = serde_json::to_vec(&serde_json::json!({"id": 7, "description_html": html}))
            .expect("json");
        let stats = format!(
            r#"{{"student_count":3,"lsn":"0/1","sales":[{{"event_id":1,"price_krw":{price},"discount_percent":50,"starts_at":"2026-11-21T02:00:00Z","ends_at":"2026-11-21T06:00:00Z","seats_left":null}}]}}"#
        );
        (Bytes::from(views::encode(&page)), Bytes::from(stats))
    }

    #[test]
    fn a_page_read_again_with_the_same_bytes_is_the_body_made_before() {
        let pages = Pages::default();
        let (page, stats) = stored(500);
        let first = pages.serve(7, &page, &stats, at(3)).expect("served");
        let expected = stored_course_page(7, &page, &stats, at(3)).expect("served");
        assert_eq!(first.body, expected.body);
        assert_eq!(first.etag, expected.etag);
        // Read once: seen, not kept. Read again: kept; then handed out.
        let second = pages.serve(7, &page, &stats, at(3)).expect("served");
        let copy = (page.to_vec().into(), stats.to_vec().into());
        let third = pages.serve(7, &copy.0, &copy.1, at(4)).expect("served");
        assert_eq!(
            second.body.as_ptr(),
            third.body.as_ptr(),
            "the same body, not made again"
        );
        assert_ne!(first.body.as_ptr(), second.body.as_ptr());
    }

    #[test]
    fn a_kept_page_is_made_anew_for_other_bytes_another_sale_span_or_course() {
        let pages = Pages::default();
        let (page, stats) = stored(500);
        pages.serve(7, &page, &stats, at(3)).expect("served");
        let kept = pages.serve(7, &page, &stats, at(3)).expect("served");
        let at_price = |body: &Bytes| {
            let json: serde_json::Value = serde_json::from_slice(body).expect("json");
            json["sale"]["price_krw"].as_i64()
        };
        let (_, cheaper) = stored(400);
        let changed = pages.serve(7, &page, &cheaper, at(3)).expect("served");
        assert_eq!(at_price(&changed.body), Some(400));
        assert_ne!(changed.etag, kept.etag);
        let ended = pages.serve(7, &page, &cheaper, at(6)).expect("served");
        assert_eq!(at_price(&ended.body), None, "the sale ended at 6");
        // Another course in the same slot is another page.
        let other = 7 + PAGE_SLOTS as i64;
        let (other_page, other_stats) = stored(500);
        let served = pages
            .serve(other, &other_page, &other_stats, at(3))
            .expect("served");
        assert!(served
            .etag
            .expect("tag")
            .to_str()
            .expect("ascii")
            .starts_with(&format!("\"{other}-")));
        let again = pages.serve(7, &page, &cheaper, at(6)).expect("served");
        assert_eq!(again.body, ended.body);
    }

    #[test]
    fn a_list_splices_its_cards_between_head_and_tail() {
        let mut list = CardList::new(b"{\"courses\":", 2);
        list.push(b"{\"id\":1}");
        list.push(b"{\"id\":2}");
        let body = list.finish(b",\"total\":2}");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"courses":[{"id":1},{"id":2}],"total":2})
        );
        let empty = CardList::new(b"{\"courses\":", 0).finish(b"}");
        assert_eq!(empty, b"{\"courses\":[]}");
    }
}
