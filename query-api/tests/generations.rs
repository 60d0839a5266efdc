//! The query API against a real Redis holding hand-written views (no
//! projector): how reads follow the generation marker, say when a rebuild
//! is in progress, and refuse corrupt values.
//!
//! Needs the local stack's Redis (`deploy/local.sh up`) at `TEST_REDIS_URL`.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use fred::prelude::*;
use query_api::{Application, Config};
use reqwest::StatusCode;
use serde_json::Value as Json;
use views::{CourseCard, GenerationMarker, Keys, VIEW_SCHEMA_VERSION};

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
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = format!(
            "qtest_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let redis_url =
            std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:56379".into());
        let redis = Builder::from_config(fred::prelude::Config::from_url(&redis_url)?).build()?;
        redis.init().await?;
        let app = Application::build(Config::for_tests(&redis_url, &prefix)).await?;
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

    async fn marker(&self, generation: u64, building: Option<u64>) -> anyhow::Result<()> {
        let marker = GenerationMarker {
            generation,
            schema: VIEW_SCHEMA_VERSION,
            building,
        };
        self.set(self.keys.generation_marker(), serde_json::to_vec(&marker)?)
            .await
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

    // The switch: the next read finds generation 2 (after one more round trip).
    f.marker(2, None).await?;
    let (_, headers, body) = f.get("/v1/courses?ids=1").await?;
    assert_eq!(body["courses"][0]["title"], "new");
    assert_eq!(headers["x-projection-lsn"], "0/20");
    assert!(headers.get("x-view-stale").is_none());
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
    f.set(f.keys.course_view(1, 4), views::encode(missing_sales))
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
