//! The lists a read pages through: sorted sets of course ids, a page at a
//! time, and the cards found for that page.

use bytes::Bytes;

/// A list of course ids kept as a sorted set.
#[derive(Debug, Clone, Copy)]
pub enum List<'a> {
    /// A category's courses in the given order.
    Category(&'a str, Sort),
    /// A user's library, newest enrollment first.
    Library(i64),
}

/// A page of a list: the stored cards of its ids, in list order (ids whose
/// card is missing are skipped), and the length of the whole list.
pub struct ListPage {
    pub cards: Vec<Bytes>,
    pub total: u64,
}

/// A window of a list: `?limit=&offset=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1 to the largest page (`crate::params::MAX_LIMIT`).
    pub limit: i64,
    /// 0 or more.
    pub offset: i64,
}

impl Page {
    /// The inclusive rank range of the page, as `ZRANGE` takes it.
    pub fn ranks(&self) -> (i64, i64) {
        (
            self.offset,
            self.offset.saturating_add(self.limit.saturating_sub(1)),
        )
    }
}

/// The order of a category's courses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Most active students first, then id ascending.
    Popular,
    /// Newest first, then id descending.
    Newest,
}
