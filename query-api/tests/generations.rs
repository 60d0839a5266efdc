//! The query API against a real Redis holding hand-written views (no
//! projector): how reads follow the generation marker, say when a rebuild
//! is in progress, and refuse corrupt values; how a course page is joined
//! from its page and stats and tagged; how pre-warmed pages meet a sale
//! boundary.
//!
//! Needs the local stack's Redis (`deploy/local.sh up`) at `TEST_REDIS_URL`.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use chrono::{DateTime, Utc};
use fred::prelude::*;
use query_api::{Application, Config};
use reqwest::StatusCode;
use serde_json::Value as Json;
use views::{
    CourseCard, CoursePage, CourseStats, EventView, GenerationMarker, Keys, Sale,
    VIEW_SCHEMA_VERSION,
};

/// A query API on its own key prefix, and a Redis client to write views with.
struct Fixture {
    url: String,
    keys: Keys,
    redis: Client,
    http: reqwest::Client,
    /// Every key written, to delete at the end.
    written: std::sync::Mutex<Vec<String>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Fixture {
    async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// A query API whose settings `tweak` changed.
    async fn start_with(tweak: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = format!(
            "qtest_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let redis_url: views::RedisUrl = std::env::var("TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:56379".into())
            .parse()?;
        let redis = Builder::from_config(redis_url.config()).build()?;
        redis.init().await?;
        let mut config = Config::for_tests(redis_url, &prefix);
        tweak(&mut config);
        let app = Application::build(config).await?;
        let url = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            url,
            keys: Keys::new(prefix),
            redis,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            written: Default::default(),
            _stop: stop,
        })
    }

    async fn get(
        &self,
        path: &str,
    ) -> anyhow::Result<(StatusCode, reqwest::header::HeaderMap, Json)> {
        let response = self.http.get(format!("{}{path}", self.url)).send().await?;
        let (status, headers) = (response.status(), response.headers().clone());
        let body = response.json().await.unwrap_or(Json::Null);
        Ok((status, headers, body))
    }

    async fn set(&self, key: String, value: Vec<u8>) -> anyhow::Result<()> {
        if let Ok(mut written) = self.written.lock() {
            written.push(key.clone());
        }
        let _: () = self.redis.set(key, value, None, None, false).await?;
        Ok(())
    }

    async fn get_tagged(
        &self,
        path: &str,
        etag: Option<&str>,
    ) -> anyhow::Result<(StatusCode, Option<String>, Json)> {
        let mut request = self.http.get(format!("{}{path}", self.url));
        if let Some(etag) = etag {
            request = request.header("If-None-Match", etag);
        }
        let response = request.send().await?;
        let status = response.status();
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.json().await.unwrap_or(Json::Null);
        Ok((status, etag, body))
    }

    /// A course's page, stats and card, as the projector writes them.
    async fn course(&self, generation: u64, id: i64, stats: &CourseStats) -> anyhow::Result<()> {
        let page = page_of(id);
        self.set(
            self.keys.course_view(generation, id),
            views::encode(&serde_json::to_vec(&page)?),
        )
        .await?;
        self.set(
            self.keys.course_stats(generation, id),
            views::encode(&serde_json::to_vec(stats)?),
        )
        .await?;
        self.set(
            self.keys.course_card(generation, id),
            views::encode(&serde_json::to_vec(&CourseCard::new(&page, stats))?),
        )
        .await
    }

    /// An event over `courses`, listed among the events to pre-warm.
    async fn event(&self, generation: u64, sale: &Sale, courses: Vec<i64>) -> anyhow::Result<()> {
        let view = EventView {
            id: sale.event_id,
            name: "sale".into(),
            starts_at: sale.starts_at,
            ends_at: sale.ends_at,
            discount_percent: sale.discount_percent,
            course_ids: courses,
            lsn: "0/10".into(),
        };
        self.set(
            self.keys.event_view(generation, sale.event_id),
            views::encode(&serde_json::to_vec(&view)?),
        )
        .await?;
        let by_end = self.keys.events_by_end(generation);
        if let Ok(mut written) = self.written.lock() {
            written.push(by_end.clone());
        }
        let _: () = self
            .redis
            .zadd(
                by_end,
                None,
                None,
                false,
                false,
                (sale.ends_at.timestamp_micros() as f64, sale.event_id),
            )
            .await?;
        Ok(())
    }

    /// `query_api_prewarm_hits_total`.
    async fn warm_hits(&self) -> anyhow::Result<u64> {
        self.counter("query_api_prewarm_hits_total").await
    }

    /// A counter of `/metrics` (0 when absent).
    async fn counter(&self, name: &str) -> anyhow::Result<u64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0))
    }

    async fn marker(&self, generation: u64, building: Option<u64>) -> anyhow::Result<()> {
        let marker = GenerationMarker {
            building,
            ..GenerationMarker::switched(None, generation, VIEW_SCHEMA_VERSION, 0)
        };
        self.set(self.keys.generation_marker(), serde_json::to_vec(&marker)?)
            .await
    }

    /// Writes `marker` as the generation marker.
    async fn set_marker(&self, marker: &GenerationMarker) -> anyhow::Result<()> {
        self.set(self.keys.generation_marker(), serde_json::to_vec(marker)?)
            .await
    }

    /// Another query API on this fixture's keys, of view schema `schema` (a
    /// release beside this one); returns its URL and what stops it.
    async fn release(
        &self,
        schema: u32,
    ) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
        let redis_url: views::RedisUrl = std::env::var("TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:56379".into())
            .parse()?;
        let mut config = Config::for_tests(redis_url, self.keys.prefix());
        config.view_schema_version = schema;
        let app = Application::build(config).await?;
        let url = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Ok((url, stop))
    }

    /// A live generation with a watermark and one course card.
    async fn generation(&self, generation: u64, lsn: &str, title: &str) -> anyhow::Result<()> {
        self.set(self.keys.watermark(generation), lsn.as_bytes().to_vec())
            .await?;
        self.set(
            self.keys.course_card(generation, 1),
            views::encode(&card(1, title, lsn)),
        )
        .await
    }

    async fn cleanup(self) -> anyhow::Result<()> {
        let written = self.written.lock().map(|w| w.clone()).unwrap_or_default();
        if !written.is_empty() {
            let _: i64 = self.redis.del(written).await?;
        }
        Ok(())
    }
}

/// A stored course page, as the projector writes it.
fn page_of(id: i64) -> CoursePage {
    CoursePage {
        id,
        title: format!("course {id}"),
        summary: "s".into(),
        description_html: "<p>a \"quoted\" page,\"sales\":[]}</p>".repeat(60),
        category: "c".into(),
        instructor: "i".into(),
        price_krw: 1000,
        created_at: Utc::now(),
    }
}

fn page(id: i64, title: &str) -> Vec<u8> {
    let mut page = page_of(id);
    page.title = title.into();
    serde_json::to_vec(&page).expect("json")
}

fn stats(students: i64, lsn: &str, sales: Vec<Sale>) -> CourseStats {
    CourseStats {
        student_count: students,
        top_companies: Vec::new(),
        lsn: lsn.into(),
        sales,
    }
}

fn sale(event_id: i64, starts_at: DateTime<Utc>, ends_at: DateTime<Utc>) -> Sale {
    Sale {
        event_id,
        price_krw: 0,
        discount_percent: 100,
        starts_at,
        ends_at,
        seats_left: None,
    }
}

/// A stored course card, as the projector writes it.
fn card(id: i64, title: &str, lsn: &str) -> Vec<u8> {
    serde_json::to_vec(&CourseCard {
        id,
        title: title.into(),
        summary: "s".into(),
        category: "c".into(),
        instructor: "i".into(),
        price_krw: 1000,
        student_count: 0,
        created_at: chrono::Utc::now(),
        lsn: lsn.into(),
        sales: Vec::new(),
    })
    .expect("json")
}

#[tokio::test]
async fn without_a_live_generation_every_read_is_503_rebuilding() -> anyhow::Result<()> {
    let f = Fixture::start().await?;
    for path in [
        "/v1/courses/1",
        "/v1/courses?ids=1,2",
        "/v1/categories/c/courses",
        "/v1/events/1",
        "/v1/users/1/courses",
        "/v1/orders/1",
    ] {
        let (status, headers, body) = f.get(path).await?;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(body["error"]["code"], "rebuilding", "{path}");
        assert_eq!(headers["retry-after"], "1", "{path}");
    }
    // Counted, for the alert on a lasting 503 rebuilding.
    assert_eq!(f.counter("query_api_rebuilding_answers_total").await?, 6);
    assert_eq!(f.counter("query_api_stale_answers_total").await?, 0);
    f.cleanup().await
}

#[tokio::test]
async fn reads_follow_the_marker_to_a_new_generation_and_say_when_one_is_being_built(
) -> anyhow::Result<()> {
    let f = Fixture::start().await?;
    f.generation(1, "0/10", "old").await?;
    f.marker(1, None).await?;
    let (status, headers, body) = f.get("/v1/courses?ids=1").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["courses"][0]["title"], "old");
    assert_eq!(body["courses"][0]["sale"], Json::Null);
    assert_eq!(headers["x-projection-lsn"], "0/10");
    assert!(headers.get("x-view-stale").is_none());

    // A rebuild into generation 2 is under way: still generation 1, marked stale.
    f.generation(2, "0/20", "new").await?;
    f.marker(1, Some(2)).await?;
    let (_, headers, body) = f.get("/v1/courses?ids=1").await?;
    assert_eq!(body["courses"][0]["title"], "old");
    assert_eq!(headers["x-view-stale"], "true");
    // Counted, for the alert on X-View-Stale lasting.
    assert_eq!(f.counter("query_api_stale_answers_total").await?, 1);

    // The switch: the next read finds generation 2 (after one more round trip).
    f.marker(2, None).await?;
    let (_, headers, body) = f.get("/v1/courses?ids=1").await?;
    assert_eq!(body["courses"][0]["title"], "new");
    assert_eq!(headers["x-projection-lsn"], "0/20");
    assert!(headers.get("x-view-stale").is_none());
    assert_eq!(f.counter("query_api_stale_answers_total").await?, 1);
    assert_eq!(f.counter("query_api_rebuilding_answers_total").await?, 0);
    f.cleanup().await
}

#[tokio::test]
async fn a_corrupt_value_is_a_503_and_the_service_keeps_serving() -> anyhow::Result<()> {
    let f = Fixture::start().await?;
    f.generation(1, "0/10", "fine").await?;
    f.marker(1, None).await?;
    f.set(f.keys.course_card(1, 2), vec![0x07, b'{']).await?;
    f.set(
        f.keys.course_card(1, 3),
        vec![views::FORMAT_LZ4, 0xff, 0xff, 0xff, 0x7f, 0],
    )
    .await?;
    let missing_sales = br#"{"id":4,"lsn":"0/1"}"#;
    f.set(f.keys.course_card(1, 4), views::encode(missing_sales))
        .await?;
    f.set(f.keys.course_view(1, 4), views::encode(&page(4, "p")))
        .await?;
    f.set(f.keys.course_stats(1, 4), views::encode(missing_sales))
        .await?;

    for path in [
        "/v1/courses?ids=1,2",
        "/v1/courses?ids=3",
        "/v1/courses?ids=4",
        "/v1/courses/4",
    ] {
        let (status, _, body) = f.get(path).await?;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert_eq!(body["error"]["code"], "unavailable", "{path}");
    }
    let (status, _, body) = f.get("/v1/courses?ids=1").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    f.cleanup().await
}

#[tokio::test]
async fn a_course_page_joins_its_page_and_stats_and_its_etag_follows_the_body() -> anyhow::Result<()>
{
    let f = Fixture::start().await?;
    f.generation(1, "0/10", "card").await?;
    f.marker(1, None).await?;
    let now = Utc::now();
    let running = sale(
        3,
        now - chrono::Duration::hours(1),
        now + chrono::Duration::hours(1),
    );
    let later = sale(
        4,
        now + chrono::Duration::hours(2),
        now + chrono::Duration::hours(3),
    );
    f.course(1, 2, &stats(5, "0/F", vec![running, later]))
        .await?;

    let (status, etag, body) = f.get_tagged("/v1/courses/2", None).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["description_html"], page_of(2).description_html);
    assert_eq!(body["student_count"], 5);
    assert_eq!(body["lsn"], "0/F");
    assert_eq!(body["sale"]["event_id"], 3);
    assert!(body.get("sales").is_none());
    let etag = etag.expect("an etag");
    assert!(etag.starts_with("\"2-"), "{etag}");
    let (status, again, _) = f.get_tagged("/v1/courses/2", Some(&etag)).await?;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(again.as_deref(), Some(etag.as_str()));

    // An enrollment rewrites only the stats: a new body, a new tag.
    f.course(1, 2, &stats(6, "0/1F", Vec::new())).await?;
    let (status, changed, body) = f.get_tagged("/v1/courses/2", Some(&etag)).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["student_count"], 6);
    assert_eq!(body["sale"], Json::Null);
    assert_ne!(changed.as_deref(), Some(etag.as_str()));

    // A page without its stats is no view.
    f.set(f.keys.course_view(1, 9), views::encode(&page(9, "alone")))
        .await?;
    let (status, _, body) = f.get_tagged("/v1/courses/9", None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    f.cleanup().await
}

#[tokio::test]
async fn a_cart_keeps_the_order_asked_and_lists_the_missing_once() -> anyhow::Result<()> {
    let f = Fixture::start().await?;
    f.generation(1, "0/10", "one").await?;
    f.marker(1, None).await?;
    f.course(1, 2, &stats(0, "0/2", Vec::new())).await?;
    let (status, _, body) = f.get("/v1/courses?ids=2,7,1,2,8,7").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids: Vec<i64> = body["courses"]
        .as_array()
        .map(|cards| cards.iter().filter_map(|c| c["id"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(ids, [2, 1, 2]);
    assert_eq!(body["missing"], serde_json::json!([7, 8]));
    let (_, _, body) = f.get("/v1/courses?ids=7").await?;
    assert_eq!(body, serde_json::json!({"courses": [], "missing": [7]}));
    f.cleanup().await
}

#[tokio::test]
async fn prewarmed_pages_cards_and_events_change_at_the_moment_a_sale_starts() -> anyhow::Result<()>
{
    // The longest refresh interval, so the start falls between refreshes.
    let f = Fixture::start_with(|c| c.prewarm_refresh_ms = 900).await?;
    f.generation(1, "0/10", "one").await?;
    f.marker(1, None).await?;
    let starts_at = Utc::now() + chrono::Duration::milliseconds(2500);
    let sale = sale(5, starts_at, starts_at + chrono::Duration::hours(1));
    f.course(1, 2, &stats(1, "0/2", vec![sale.clone()])).await?;
    f.event(1, &sale, vec![2]).await?;

    let hits = f.warm_hits().await?;
    let mut before_tag = None;
    let mut seen_on_sale = false;
    let deadline = starts_at + chrono::Duration::milliseconds(1500);
    while Utc::now() < deadline {
        let asked = Utc::now();
        let (status, etag, body) = f.get_tagged("/v1/courses/2", None).await?;
        let (_, _, cart) = f.get_tagged("/v1/courses?ids=2", None).await?;
        let (_, _, event) = f.get_tagged("/v1/events/5", None).await?;
        let answered = Utc::now();
        assert_eq!(status, StatusCode::OK, "{body}");
        let on_sale = !body["sale"].is_null();
        let (card_on_sale, event_on_sale) = (
            !cart["courses"][0]["sale"].is_null(),
            event["courses"][0]["sale"]["event_id"] == 5,
        );
        if answered < starts_at || asked >= starts_at {
            assert_eq!((card_on_sale, event_on_sale), (on_sale, on_sale));
        }
        if answered < starts_at {
            assert!(!on_sale, "on sale before it starts");
            before_tag = etag;
        } else if asked >= starts_at {
            assert!(on_sale, "not on sale after it started");
            assert_ne!(etag, before_tag, "the tag follows the sale");
            seen_on_sale = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen_on_sale && before_tag.is_some());
    assert!(
        f.warm_hits().await? > hits,
        "the pages came from the pre-warmed set"
    );
    f.cleanup().await
}

/// What one query API answered for a read: status, the generation read,
/// whether it was marked stale, and the body.
async fn read_at(
    http: &reqwest::Client,
    url: &str,
    path: &str,
) -> anyhow::Result<(StatusCode, Option<String>, bool, Json)> {
    let response = http.get(format!("{url}{path}")).send().await?;
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (generation, stale) = (
        header("x-view-generation"),
        header("x-view-stale").as_deref() == Some("true"),
    );
    Ok((
        status,
        generation,
        stale,
        response.json().await.unwrap_or(Json::Null),
    ))
}

#[tokio::test]
async fn a_query_api_reads_only_the_generation_of_its_own_view_schema_through_an_upgrade(
) -> anyhow::Result<()> {
    let f = Fixture::start().await?;
    let (new, _stop_new) = f.release(VIEW_SCHEMA_VERSION + 1).await?;
    let old = f.url.clone();
    let now = Utc::now();
    let running = sale(
        5,
        now - chrono::Duration::hours(1),
        now + chrono::Duration::hours(1),
    );
    // Generation 1 is of this release's schema, 2 of the next one's; their
    // course 2 differs in its student count, so a body says which it is.
    for (generation, students) in [(1, 1), (2, 2)] {
        f.generation(generation, "0/10", "card").await?;
        f.course(
            generation,
            2,
            &stats(students, "0/10", vec![running.clone()]),
        )
        .await?;
        f.event(generation, &running, vec![2]).await?;
    }
    let paths = ["/v1/courses/2", "/v1/courses?ids=2", "/v1/events/5"];
    let students = |path: &str, body: &Json| match path {
        "/v1/courses/2" => body["student_count"].as_i64(),
        "/v1/courses?ids=2" | "/v1/events/5" => body["courses"][0]["student_count"].as_i64(),
        _ => None,
    };
    let http = &f.http;

    // Before the upgrade: the old release serves 1; the new one has nothing.
    let before = GenerationMarker::switched(None, 1, VIEW_SCHEMA_VERSION, 0);
    f.set_marker(&before).await?;
    for path in paths {
        let (status, generation, stale, body) = read_at(http, &old, path).await?;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!((generation.as_deref(), stale), (Some("1"), false), "{path}");
        assert_eq!(students(path, &body), Some(1), "{path}: {body}");
        let (status, _, _, body) = read_at(http, &new, path).await?;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(body["error"]["code"], "rebuilding", "{path}");
    }
    let (status, _, _, _) = read_at(http, &new, "/ready").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // The new schema's generation is built: the old release serves 1, stale.
    f.set_marker(&GenerationMarker {
        building: Some(2),
        ..before.clone()
    })
    .await?;
    for path in paths {
        let (status, generation, stale, _) = read_at(http, &old, path).await?;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!((generation.as_deref(), stale), (Some("1"), true), "{path}");
        let (status, _, _, _) = read_at(http, &new, path).await?;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
    }

    // Switched: each release reads its own schema's generation, the old one
    // stale, from Redis and from its pre-warmed set alike.
    let after = GenerationMarker::switched(Some(&before), 2, VIEW_SCHEMA_VERSION + 1, 1);
    f.set_marker(&after).await?;
    let hits = f.warm_hits().await?;
    for _ in 0..8 {
        for path in paths {
            let (status, generation, stale, body) = read_at(http, &old, path).await?;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            assert_eq!((generation.as_deref(), stale), (Some("1"), true), "{path}");
            assert_eq!(students(path, &body), Some(1), "{path}: {body}");
            let (status, generation, stale, body) = read_at(http, &new, path).await?;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            assert_eq!((generation.as_deref(), stale), (Some("2"), false), "{path}");
            assert_eq!(students(path, &body), Some(2), "{path}: {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        f.warm_hits().await? > hits,
        "the old release's warm set was read too"
    );

    // The previous schema retired: the old release answers rebuilding.
    f.set_marker(&after.retired(u64::MAX, 0).expect("retires"))
        .await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    for path in paths.into_iter().chain(["/ready"]) {
        let (status, _, _, body) = read_at(http, &old, path).await?;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert_eq!(body["error"]["code"], "rebuilding", "{path}");
        let (status, _, _, _) = read_at(http, &new, path).await?;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    f.cleanup().await
}
