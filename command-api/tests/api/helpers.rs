//! Test harness: a fresh PostgreSQL database per test, migrated, and the
//! real app on a free port.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock};

use command_api::{Application, Config};
use serde_json::{json, Value};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool};
use tokio::sync::oneshot;

const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:55432/postgres";

/// The URL of the test server's maintenance database (`TEST_DATABASE_URL`).
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned())
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let server = match base.rsplit_once('/') {
        // `postgres://host/db`: drop the database; `postgres://host`: keep all.
        Some((server, _)) if server.contains("//") => server,
        _ => base,
    };
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

thread_local! {
    /// Where this thread's log lines go while a test captures them.
    static CAPTURED: RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { RefCell::new(None) };
}

/// The writer of the tests' one global subscriber: this thread's capture
/// if a test set one, else the test output when `TEST_LOG` is set, else
/// nowhere.
struct TestLogWriter;

impl std::io::Write for TestLogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let captured = CAPTURED.with(|captured| {
            captured.borrow().as_ref().map(|buffer| {
                buffer
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .extend_from_slice(bytes);
            })
        });
        if captured.is_none() && std::env::var_os("TEST_LOG").is_some() {
            print!("{}", String::from_utf8_lossy(bytes));
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One global subscriber for the whole test binary, set before any test
/// logs. (A per-test `set_default` would race with other test threads over
/// each call site's cached interest, and sometimes lose spans.)
fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(|| TestLogWriter)
            .try_init();
    });
}

/// The log lines written on this thread while the value lives. Under a
/// current-thread runtime that is everything the app logs.
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    pub fn start() -> CapturedLogs {
        init_logs();
        let buffer = Arc::new(Mutex::new(Vec::new()));
        CAPTURED.with(|captured| *captured.borrow_mut() = Some(buffer.clone()));
        CapturedLogs(buffer)
    }

    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().expect("not poisoned");
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn clear(&self) {
        self.0.lock().expect("not poisoned").clear();
    }
}

impl Drop for CapturedLogs {
    fn drop(&mut self) {
        CAPTURED.with(|captured| captured.borrow_mut().take());
    }
}

/// A fresh, migrated database of its own, dropped (with its connections)
/// when the value is dropped, even when the test panicked.
pub struct TestDatabase {
    pub url: String,
    /// A pool on the database, for arranging and asserting.
    pub db: PgPool,
    name: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        init_logs();
        let admin_url = admin_url();
        let name = format!("cmd_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("the test PostgreSQL server is reachable (TEST_DATABASE_URL)");
        admin
            .execute(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .await
            .expect("the test database is created");
        let _ = admin.close().await;

        let url = with_database(&admin_url, &name);
        command_api::migrate(&url)
            .await
            .expect("the migrations apply");
        let db = PgPool::connect(&url)
            .await
            .expect("the test database is reachable");
        TestDatabase { url, db, name }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = admin_url();
        // Dropping needs async I/O, and Drop is sync: use a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = admin
                        .execute(AssertSqlSafe(format!(
                            r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                        )))
                        .await;
                }
            });
        });
        let _ = dropped.join();
    }
}

/// The running app, its database, and an HTTP client.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// A pool on the test's own database, for arranging and asserting.
    pub db: PgPool,
    shutdown: Option<oneshot::Sender<()>>,
    /// Declared last: dropped after the server was told to stop.
    database: TestDatabase,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the app after `configure` has adjusted the test configuration.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let database = TestDatabase::create().await;
    let mut config = Config::for_tests(&database.url);
    configure(&mut config);
    let app = Application::build(config).await.expect("the app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (shutdown, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        client: reqwest::Client::new(),
        db: database.db.clone(),
        shutdown: Some(shutdown),
        database,
    }
}

impl Drop for TestApp {
    /// Tells the server to stop; the database goes after it.
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

impl TestApp {
    /// The URL of the test's own database.
    pub fn database_url(&self) -> &str {
        &self.database.url
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("the request is answered")
    }

    /// POSTs `body` as it is, under the given `Content-Type`.
    pub async fn post_raw(&self, path: &str, content_type: &str, body: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .expect("the request is answered")
    }

    pub async fn patch_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .patch(self.url(path))
            .json(body)
            .send()
            .await
            .expect("the request is answered")
    }

    pub async fn post_order(&self, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/orders"))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("the request is answered")
    }

    /// Creates a user through the API and returns its id.
    pub async fn create_user(&self, email: &str, company: Option<&str>) -> i64 {
        let response = self
            .post_json(
                "/v1/users",
                &json!({ "email": email, "name": "Kim Min-jun", "company": company }),
            )
            .await;
        assert_eq!(response.status(), 201, "user created");
        let body: Value = response.json().await.expect("json");
        body["id"].as_i64().expect("user id")
    }

    /// Creates a course through the API and returns its id.
    pub async fn create_course(&self, title: &str, price_krw: i64) -> i64 {
        let response = self
            .post_json("/v1/courses", &course_body(title, price_krw))
            .await;
        assert_eq!(response.status(), 201, "course created");
        let body: Value = response.json().await.expect("json");
        body["id"].as_i64().expect("course id")
    }

    /// Inserts a sale event running now (or not), with seat rows for every
    /// course that has a seat limit, and returns its id.
    pub async fn create_event(
        &self,
        discount_percent: i32,
        running: bool,
        courses: &[(i64, Option<i32>)],
    ) -> i64 {
        let (starts, ends) = if running {
            ("now() - interval '1 hour'", "now() + interval '1 hour'")
        } else {
            ("now() + interval '1 hour'", "now() + interval '2 hours'")
        };
        let event_id: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "INSERT INTO sale_events (name, starts_at, ends_at, discount_percent) \
             VALUES ('spring sale', {starts}, {ends}, $1) RETURNING id"
        )))
        .bind(discount_percent)
        .fetch_one(&self.db)
        .await
        .expect("event inserted");
        for (course_id, seat_limit) in courses {
            sqlx::query(
                "INSERT INTO sale_event_courses (event_id, course_id, seat_limit) VALUES ($1, $2, $3)",
            )
            .bind(event_id)
            .bind(course_id)
            .bind(seat_limit)
            .execute(&self.db)
            .await
            .expect("event course inserted");
            if let Some(limit) = seat_limit {
                sqlx::query(
                    "INSERT INTO event_seats (event_id, course_id, seat_no) \
                     SELECT $1, $2, n FROM generate_series(1, $3) AS n",
                )
                .bind(event_id)
                .bind(course_id)
                .bind(limit)
                .execute(&self.db)
                .await
                .expect("seats inserted");
            }
        }
        event_id
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("the request is answered")
    }

    pub async fn cancel_order(&self, order_id: i64) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/orders/{order_id}/cancel")))
            .send()
            .await
            .expect("the request is answered")
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), 200);
        response.text().await.expect("text")
    }

    /// Starts a transaction that holds `key` of `user` uncommitted, as an
    /// attempt in flight would: an order with that key waits on it.
    pub async fn hold_key(
        &self,
        user: i64,
        key: &str,
    ) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut holder = self.db.begin().await.expect("begin");
        sqlx::query("INSERT INTO idempotency_keys (user_id, key, request) VALUES ($1, $2, '{}')")
            .bind(user)
            .bind(key)
            .execute(&mut *holder)
            .await
            .expect("key held");
        holder
    }

    /// Returns once a backend of the test database waits on a lock.
    pub async fn wait_for_a_lock_wait(&self) {
        wait_for_a_lock_wait(&self.db).await;
    }

    /// Sends an order of `course` for `user` with the key `held` (which
    /// `hold_key` holds) and returns once it waits on that key: it then holds
    /// its connection and its place in the concurrency budget. The task
    /// yields the order's status once the holder lets go.
    pub async fn order_waiting_on_held_key(
        self: &Arc<Self>,
        user: i64,
        course: i64,
    ) -> tokio::task::JoinHandle<u16> {
        let app = self.clone();
        let waiting = tokio::spawn(async move {
            app.post_order("held", &json!({ "user_id": user, "course_ids": [course] }))
                .await
                .status()
                .as_u16()
        });
        self.wait_for_a_lock_wait().await;
        waiting
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db)
            .await
            .expect("count query")
    }
}

/// Returns once a backend of the database behind `db` waits on a lock.
pub async fn wait_for_a_lock_wait(db: &PgPool) {
    for _ in 0..500 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(db)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no request ever waited on the held lock");
}

pub fn course_body(title: &str, price_krw: i64) -> Value {
    json!({
        "title": title,
        "summary": "Ownership, borrowing and lifetimes, step by step.",
        "description_html": "<h1>Rust</h1><p>From the ground up.</p>",
        "category": "programming",
        "instructor": "Lee Ji-eun",
        "price_krw": price_krw,
    })
}

/// Asserts a SPEC error: the status, a JSON body, and its `error.code`.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "JSON content type, got {content_type:?}"
    );
    let body: Value = response.json().await.expect("the error body is JSON");
    assert_eq!(body["error"]["code"], code, "error code in {body}");
    assert!(
        body["error"]["message"].is_string(),
        "error message in {body}"
    );
    body
}

#[test]
fn database_names_are_swapped_in_urls() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:55432/postgres", "cmd_1"),
        "postgres://postgres@127.0.0.1:55432/cmd_1"
    );
    assert_eq!(
        with_database("postgres://u@h:1/postgres?sslmode=disable", "cmd_1"),
        "postgres://u@h:1/cmd_1?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://u@h:1", "cmd_1"),
        "postgres://u@h:1/cmd_1"
    );
}
