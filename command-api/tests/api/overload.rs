//! Staying up: a bounded pool that refuses instead of queueing, PostgreSQL
//! going away and coming back, and a graceful stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::helpers::{admin_url, assert_error, spawn_app_with, wait_for_a_lock_wait, TestDatabase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_pooled_connection_is_busy_a_request_is_503_after_the_acquire_timeout() {
    let app = Arc::new(
        spawn_app_with(|config| {
            config.db_pool_size = 1;
            config.db_acquire_timeout = Duration::from_millis(200);
        })
        .await,
    );
    let user = app.create_user("buyer@example.com", None).await;
    let course = app.create_course("Rust from scratch", 10_000).await;
    let holder = app.hold_key(user, "held").await;
    // This order takes the only connection and waits on the held key.
    let waiting = app.order_waiting_on_held_key(user, course).await;

    let refused = app
        .post_json(
            "/v1/users",
            &json!({ "email": "second@example.com", "name": "Second" }),
        )
        .await;

    assert!(refused.headers().contains_key("retry-after"));
    assert_error(refused, 503, "unavailable").await;
    holder.rollback().await.expect("rollback");
    assert_eq!(waiting.await.expect("task"), 201);
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 1);
}

/// A TCP relay in front of PostgreSQL that the test can cut and restore, as
/// if the server went down and came back at the same address.
struct Relay {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<JoinSet<()>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let addr = listener.local_addr().expect("address");
        let up = Arc::new(AtomicBool::new(true));
        let links = Arc::new(Mutex::new(JoinSet::new()));
        let accept = tokio::spawn({
            let up = up.clone();
            let links = links.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        // Down: the connection is closed at once.
                        drop(client);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let mut links = links.lock().expect("not poisoned");
                    while links.try_join_next().is_some() {}
                    links.spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            }
        });
        Relay {
            addr,
            up,
            links,
            accept,
        }
    }

    /// PostgreSQL "goes down": open connections break, new ones are closed.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.links.lock().expect("not poisoned").abort_all();
    }

    /// PostgreSQL is back.
    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.links.lock().expect("not poisoned").abort_all();
    }
}

/// `url` cut around its `host:port`.
fn around_server(url: &str) -> (&str, &str, &str) {
    let start = url.find("://").map_or(0, |at| at + 3);
    let start = url[start..].find('@').map_or(start, |at| start + at + 1);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |at| start + at);
    (&url[..start], &url[start..end], &url[end..])
}

/// The `host:port` of `url`.
fn server_of(url: &str) -> String {
    around_server(url).1.to_owned()
}

/// `url` with its `host:port` replaced by `server`.
fn with_server(url: &str, server: &str) -> String {
    let (before, _, after) = around_server(url);
    format!("{before}{server}{after}")
}

#[test]
fn servers_are_swapped_in_urls() {
    let url = "postgres://postgres@127.0.0.1:55432/cmd_1?sslmode=disable";
    assert_eq!(server_of(url), "127.0.0.1:55432");
    assert_eq!(
        with_server(url, "127.0.0.1:7"),
        "postgres://postgres@127.0.0.1:7/cmd_1?sslmode=disable"
    );
    assert_eq!(with_server("postgres://h:1/db", "x:2"), "postgres://x:2/db");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgresql_down_writes_are_503_with_retry_after_and_the_api_recovers_by_itself() {
    let relay = Relay::start(server_of(&admin_url())).await;
    let relayed = relay.addr.to_string();
    let app = spawn_app_with(|config| {
        config.database.url = with_server(&config.database.url, &relayed);
    })
    .await;
    let user = |n: u32| json!({ "email": format!("user{n}@example.com"), "name": "A" });
    assert_eq!(app.post_json("/v1/users", &user(1)).await.status(), 201);

    relay.cut();

    let write = app.post_json("/v1/users", &user(2)).await;
    assert!(
        write.headers().contains_key("retry-after"),
        "{} {:?}",
        write.status(),
        write.headers()
    );
    let body = assert_error(write, 503, "unavailable").await;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for leak in ["connection", "os error", "reset", "refused", "eof", "io"] {
        assert!(
            !message
                .to_lowercase()
                .split_whitespace()
                .any(|word| word == leak),
            "no driver text in {message:?}"
        );
    }
    let ready = app.get("/ready").await;
    assert!(ready.headers().contains_key("retry-after"));
    assert_error(ready, 503, "unavailable").await;
    assert_eq!(app.get("/health").await.status(), 200);

    relay.restore();

    // No restart, no operator: the next requests find PostgreSQL again.
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let status = app.get("/ready").await.status().as_u16();
        statuses.push(status);
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
    assert!(statuses.iter().all(|status| [200, 503].contains(status)));
    assert_eq!(app.post_json("/v1/users", &user(3)).await.status(), 201);
    assert_eq!(app.count("SELECT count(*) FROM users").await, 2);
}

/// The `command-api` binary, run as a process with its own logs.
struct Server {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(database_url: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_command-api"))
            .env("DATABASE_URL", database_url)
            .env("COMMAND_API_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        std::thread::spawn({
            let lines = lines.clone();
            move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines.lock().expect("not poisoned").push(strip_ansi(&line));
                }
            }
        });
        Server { child, lines }
    }

    /// The first log line containing `needle`, waiting for it to be written.
    async fn line_with(&self, needle: &str) -> String {
        for _ in 0..500 {
            let found = self
                .lines
                .lock()
                .expect("not poisoned")
                .iter()
                .find(|line| line.contains(needle))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the server never logged {needle:?}");
    }

    /// The exit status, waiting for the process to end.
    async fn exit_status(&mut self) -> std::process::ExitStatus {
        for _ in 0..500 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the server did not stop");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `line` without terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_the_server_stops_accepting_and_finishes_the_order_in_flight() {
    let database = TestDatabase::create().await;
    let user: i64 = sqlx::query_scalar(
        "INSERT INTO users (email, name) VALUES ('buyer@example.com', 'Buyer') RETURNING id",
    )
    .fetch_one(&database.db)
    .await
    .expect("user");
    let course: i64 = sqlx::query_scalar(
        "INSERT INTO courses (title, summary, description_html, category, instructor, price_krw) \
         VALUES ('Rust', '', '<p></p>', 'programming', 'Lee', 10000) RETURNING id",
    )
    .fetch_one(&database.db)
    .await
    .expect("course");
    let mut server = Server::start(&database.url);
    let listening = server.line_with("command api listening").await;
    let addr = listening
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the listen address is logged")
        .to_owned();
    let base = format!("http://{addr}");
    // The order will wait on this key until the test lets it go.
    let mut holder = database.db.begin().await.expect("begin");
    sqlx::query("INSERT INTO idempotency_keys (user_id, key, request) VALUES ($1, 'slow', '{}')")
        .bind(user)
        .execute(&mut *holder)
        .await
        .expect("key held");
    let in_flight = tokio::spawn({
        let url = format!("{base}/v1/orders");
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .header("Idempotency-Key", "slow")
                .json(&json!({ "user_id": user, "course_ids": [course] }))
                .send()
                .await
                .expect("the in-flight order is answered");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("json");
            (status, body)
        }
    });
    wait_for_a_lock_wait(&database.db).await;

    let sent = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    server.line_with("shutdown signal received").await;

    // New connections are refused while the order is still in flight.
    let mut refused = false;
    for _ in 0..100 {
        if reqwest::Client::new()
            .get(format!("{base}/health"))
            .send()
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener is closed after SIGTERM");
    assert!(!in_flight.is_finished());

    holder.rollback().await.expect("rollback");
    let (status, body) = in_flight.await.expect("task");

    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "completed");
    assert!(server.exit_status().await.success());
    server.line_with("command api stopped").await;
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&database.db)
        .await
        .expect("count");
    assert_eq!(orders, 1);
}
