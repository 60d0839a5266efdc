//! The Redis key layout, in one place for both sides.
//!
//! ```text
//! {P}:meta:generation            string  JSON GenerationMarker: the live generation, and per view schema the one its readers read
//! {P}:meta:g{N}:watermark        string  LSN text: every change up to it is applied in g{N}
//! {P}:meta:generation-counter    string  the last generation number handed out
//! {P}:meta:rebuild-requested     string  time a rebuild was asked for (`projector rebuild`)
//! {P}:meta:nodes                 string  JSON (cluster only): the generation streamed, each primary's run_id then
//! {P}:g{N}:{c{ID}}:view          string  course page: the row's fields (format byte + payload)
//! {P}:g{N}:{c{ID}}:stats         string  course stats: students, top companies, sales, lsn
//! {P}:g{N}:{c{ID}}:agg           hash    course row fields, student count, stamp
//! {P}:g{N}:{c{ID}}:text          hash    description_html: the heavy column, kept apart
//! {P}:g{N}:{c{ID}}:companies     zset    company -> minus its active students
//! {P}:g{N}:{c{ID}}:card          string  course card view
//! {P}:g{N}:{e{ID}}:view          string  event view (meta and course ids)
//! {P}:g{N}:{e{ID}}:agg           hash    event row fields, `course:<id>` -> seat limit
//! {P}:g{N}:{events}:by-end       zset    event id -> ends_at (µs): events to pre-warm
//! {P}:g{N}:{o{ID}}:view          string  order view
//! {P}:g{N}:{o{ID}}:agg           hash    order row fields, `item:<course id>` -> price
//! {P}:g{N}:{u{ID}}:library       zset    course id (20 digits) -> enrollment time (µs); newest first
//! {P}:g{N}:{k{HEX}}:popular      zset    course id (20 digits) -> minus students
//! {P}:g{N}:{k{HEX}}:newest       zset    course id (20 digits) -> created_at (µs)
//! ```
//!
//! `{HEX}` is the category name in lowercase hex, so any name makes a safe key.
//! Ranking and library members are ids zero-padded to 20 digits so that
//! Redis's tie order (member, lexicographic) is id order: `ZRANGE popular` is students
//! descending then id ascending; `ZREVRANGE newest` is newest then id
//! descending (SPEC's two sorts).
//!
//! `{P}` is `KEY_PREFIX`. Keys of one entity share the hash tag `{c<id>}` so a
//! Lua script may touch them together in Redis Cluster. A generation `g{N}` is
//! one complete set of views; readers follow the marker to the live one.
//!
//! The fields of the hashes, named once in [`crate::aggregate`] (the
//! projector's Lua script uses the first five):
//!
//! ```text
//! stamp             every agg      stamp of the last change applied
//! vstamp            every agg      stamp of the views last written
//! n                 course agg     active students
//! cl:<event id>     course agg     seats claimed through that event
//! description_html  course text    the page's HTML
//! ev:<event id>     course agg     seat limit in that event; `-`: unlimited
//! rankcat           course agg     the category the course is ranked in
//! course:<id>       event agg      that course's seat limit; `-`: unlimited
//! item:<course id>  order agg      the price paid for that course
//! ```

/// Default `KEY_PREFIX`.
pub const DEFAULT_KEY_PREFIX: &str = "cqrs";

/// Builds every key name from the configured prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// A key layout under `prefix` (without the trailing colon).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The configured prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The marker naming the live generation; absent while none is live.
    pub fn generation_marker(&self) -> String {
        format!("{}:meta:generation", self.prefix)
    }

    /// The applied-LSN watermark of generation `generation`.
    pub fn watermark(&self, generation: u64) -> String {
        format!("{}:meta:g{generation}:watermark", self.prefix)
    }

    /// Set by `projector rebuild`: the daemon builds a fresh generation.
    pub fn rebuild_request(&self) -> String {
        format!("{}:meta:rebuild-requested", self.prefix)
    }

    /// The Redis nodes (each primary's `run_id`) the projector last
    /// streamed the live generation into: a node restarted since may have
    /// lost views.
    pub fn nodes(&self) -> String {
        format!("{}:meta:nodes", self.prefix)
    }

    /// The counter handing out generation numbers.
    pub fn generation_counter(&self) -> String {
        format!("{}:meta:generation-counter", self.prefix)
    }

    /// A SCAN pattern matching the keys of every generation.
    pub fn all_generations_pattern(&self) -> String {
        format!("{}:g*", self.prefix)
    }

    /// A SCAN pattern matching the watermark of every generation.
    pub fn all_watermarks_pattern(&self) -> String {
        format!("{}:meta:g*:watermark", self.prefix)
    }

    /// The generation a view key or watermark belongs to (`None` for any
    /// other key), so a clean-up can tell older generations from newer ones.
    pub fn generation_of(&self, key: &str) -> Option<u64> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(':')?;
        let rest = rest.strip_prefix("meta:").unwrap_or(rest);
        let (number, _) = rest.strip_prefix('g')?.split_once(':')?;
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        number.parse().ok()
    }

    /// The course page of course `id`: the fields of its row, rewritten only
    /// when the row changes (the served detail is this plus the stats).
    pub fn course_view(&self, generation: u64, id: i64) -> String {
        self.entity_key(generation, 'c', id, "view")
    }

    /// The course stats of course `id`: what enrollments and seats change
    /// (small, so an enrollment never rewrites the page's HTML).
    pub fn course_stats(&self, generation: u64, id: i64) -> String {
        self.entity_key(generation, 'c', id, "stats")
    }

    /// The course aggregate hash (row fields, active student count, stamp).
    pub fn course_agg(&self, generation: u64, id: i64) -> String {
        self.entity_key(generation, 'c', id, "agg")
    }

    /// The course's heavy text (hash: `description_html`), kept out of the
    /// aggregate so the script that counts an enrollment never copies it.
    pub fn course_text(&self, generation: u64, id: i64) -> String {
        self.entity_key(generation, 'c', id, "text")
    }

    /// The course's company tallies (sorted set, score = minus students).
    pub fn course_companies(&self, generation: u64, id: i64) -> String {
        self.entity_key(generation, 'c', id, "companies")
    }

    /// The course card view of course `id`.
    pub fn course_card(&self, generation: u64, id: i64) -> String {
        self.entity_key(generation, 'c', id, "card")
    }

    /// The event view of event `id`.
    pub fn event_view(&self, generation: u64, id: i64) -> String {
        self.entity_key(generation, 'e', id, "view")
    }

    /// The event aggregate hash.
    pub fn event_agg(&self, generation: u64, id: i64) -> String {
        self.entity_key(generation, 'e', id, "agg")
    }

    /// Every event by its end time (µs), so readers find the events that
    /// have not ended (pre-warming).
    pub fn events_by_end(&self, generation: u64) -> String {
        format!("{}:g{generation}:{{events}}:by-end", self.prefix)
    }

    /// The order view of order `id`.
    pub fn order_view(&self, generation: u64, id: i64) -> String {
        self.entity_key(generation, 'o', id, "view")
    }

    /// The order aggregate hash.
    pub fn order_agg(&self, generation: u64, id: i64) -> String {
        self.entity_key(generation, 'o', id, "agg")
    }

    /// A user's library: course ids scored by enrollment time.
    pub fn user_library(&self, generation: u64, user_id: i64) -> String {
        self.entity_key(generation, 'u', user_id, "library")
    }

    /// A category's courses by popularity.
    pub fn category_popular(&self, generation: u64, category: &str) -> String {
        self.category_key(generation, category, "popular")
    }

    /// A category's courses by creation time.
    pub fn category_newest(&self, generation: u64, category: &str) -> String {
        self.category_key(generation, category, "newest")
    }

    /// `{P}:g{N}:{` with room for the rest of a key: the projector names
    /// several keys for every change, so keys are built by hand rather than
    /// through `format!`.
    fn generation_part(&self, generation: u64, rest: usize) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 24 + rest);
        key.push_str(&self.prefix);
        key.push_str(":g");
        key.push_str(itoa::Buffer::new().format(generation));
        key.push_str(":{");
        key
    }

    /// `{P}:g{N}:{<tag><id>}:<suffix>`: a key of one entity.
    fn entity_key(&self, generation: u64, tag: char, id: i64, suffix: &str) -> String {
        let mut key = self.generation_part(generation, 24 + suffix.len());
        key.push(tag);
        key.push_str(itoa::Buffer::new().format(id));
        key.push_str("}:");
        key.push_str(suffix);
        key
    }

    /// `{P}:g{N}:{k<hex of category>}:<suffix>`: a ranking of one category.
    fn category_key(&self, generation: u64, category: &str, suffix: &str) -> String {
        let mut key = self.generation_part(generation, 4 + 2 * category.len() + suffix.len());
        key.push('k');
        for byte in category.bytes() {
            key.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
            key.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
        }
        key.push_str("}:");
        key.push_str(suffix);
        key
    }
}

/// A ranking member for a course id: zero-padded so lexicographic is numeric.
pub fn ranking_member(id: i64) -> String {
    if id < 0 {
        return format!("{id:020}");
    }
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(id);
    let mut member = "0".repeat(20usize.saturating_sub(digits.len()));
    member.push_str(digits);
    member
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_keys_share_one_hash_tag_and_the_prefix() {
        let k = Keys::new("shop");
        let (v, s, a, t, c) = (
            k.course_view(3, 42),
            k.course_stats(3, 42),
            k.course_agg(3, 42),
            k.course_text(3, 42),
            k.course_companies(3, 42),
        );
        for key in [&v, &s, &a, &t, &c] {
            assert!(key.starts_with("shop:"), "{key}");
            assert!(key.contains("{c42}"), "{key}");
        }
        assert_eq!(v, "shop:g3:{c42}:view");
        assert!(k.generation_marker().starts_with("shop:meta:"));
        assert!(k.watermark(3).starts_with("shop:meta:"));
        assert_eq!(k.category_popular(1, "a{b}"), "shop:g1:{k617b627d}:popular");
        assert!(ranking_member(9) < ranking_member(10));
        for id in [0, 7, 12_345, i64::MAX, -3] {
            assert_eq!(ranking_member(id), format!("{id:020}"));
        }
        assert_eq!(k.course_card(0, 7), "shop:g0:{c7}:card");
        assert_eq!(k.user_library(12, 99), "shop:g12:{u99}:library");
        assert_eq!(k.category_newest(2, "Wé"), "shop:g2:{k57c3a9}:newest");
    }

    #[test]
    fn the_generation_of_a_key_is_read_back_from_its_name() {
        let k = Keys::new("shop");
        assert_eq!(k.generation_of(&k.course_card(17, 3)), Some(17));
        assert_eq!(k.generation_of(&k.category_popular(5, "x")), Some(5));
        assert_eq!(k.generation_of(&k.watermark(42)), Some(42));
        assert_eq!(k.generation_of(&k.generation_marker()), None);
        assert_eq!(k.generation_of(&k.generation_counter()), None);
        assert_eq!(k.generation_of(&k.nodes()), None);
        assert_eq!(k.generation_of("shop:g+1:x"), None);
        assert_eq!(k.generation_of("shop:garbage"), None);
        assert_eq!(k.generation_of("other:g1:{c1}:view"), None);
    }
}
