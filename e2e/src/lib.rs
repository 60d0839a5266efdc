//! The end-to-end harness: one isolated stack per test (its own database,
//! replication slot, publication and Redis key prefix), with the command and
//! query APIs in-process and the projector as a real child process, so tests
//! can stop it gracefully or SIGKILL it.
//!
//! Needs the local stack (`deploy/local.sh up`): PostgreSQL with
//! `wal_level=logical` at `TEST_DATABASE_URL` and Redis at `TEST_REDIS_URL`
//! (any `REDIS_URL` form; a test may bring its own, see
//! [`Stack::start_with_redis`], and [`redis_server`] for servers of its own).

pub mod exact;
pub mod programs;
pub mod redis_server;
pub mod tls;
pub mod tools;

use std::{
    path::PathBuf,
    process::Stdio,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, ensure, Context, Result};
use fred::prelude::*;
use reqwest::{header::HeaderMap, StatusCode};
use serde_json::Value as Json;
use tokio::{process::Child, sync::oneshot};

mod audit;
pub mod fleet;
pub mod local_run;

pub use audit::AuditRun;

/// The administrative database URL (any database of the test server).
pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:55432/postgres".into())
}

/// The Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:56379".into())
}

/// The command API's role (deploy/roles.sql): row rights, no replication.
pub const COMMAND_ROLE: &str = "course_sales_command";
/// The projector's role (deploy/roles.sql): REPLICATION and SELECT on the
/// published tables.
pub const PROJECTOR_ROLE: &str = "course_sales_projector";
/// The publication the migrations create, the projector's default.
pub const MIGRATED_PUBLICATION: &str = "cqrs_projector";

/// Creates the service roles with deploy/roles.sql itself, as the
/// administrative user. Idempotent and safe when parallel tests race; run it
/// before [`Stack::start_as`], since the migrations grant only to roles that
/// exist.
pub async fn ensure_roles() -> Result<()> {
    let (admin, conn) = tokio_postgres::connect(&admin_database_url(), tokio_postgres::NoTls)
        .await
        .context(
            "connecting to the test PostgreSQL: is the local stack up (bash deploy/local.sh up)?",
        )?;
    tokio::spawn(conn);
    admin
        .batch_execute(include_str!("../../deploy/roles.sql"))
        .await
        .context("running deploy/roles.sql")
}

/// `url` with its user (and password) replaced by `user`: the local stack
/// trusts 127.0.0.1, so a role needs no password there.
pub fn with_user(url: &str, user: &str) -> String {
    // The `url` crate keeps whatever else the URL holds (port, database,
    // query) as it was.
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    if parsed.set_username(user).is_err() || parsed.set_password(None).is_err() {
        return url.to_owned();
    }
    parsed.into()
}

/// A name no other test of this run (or a parallel run) uses.
pub fn unique_name(kind: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "e2e_{kind}_{}_{:x}_{}",
        std::process::id(),
        nanos & 0xFFFF_FFFF,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// An HTTP answer, its body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Json,
    pub raw: Vec<u8>,
}

impl Answer {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Itself when its status is `status`; else an error showing the body.
    pub fn ensure_status(self, status: StatusCode) -> Result<Self> {
        if self.status != status {
            bail!(
                "expected {status}, got {} {}",
                self.status,
                String::from_utf8_lossy(&self.raw)
            );
        }
        Ok(self)
    }

    /// The id of the resource a 201 created; else an error showing the body.
    pub fn created_id(self) -> Result<i64> {
        self.ensure_status(StatusCode::CREATED)?.body["id"]
            .as_i64()
            .context("no id in the created resource")
    }
}

/// The query API's path reading the cards of `ids`, in that order.
pub fn cards_path(ids: &[i64]) -> String {
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!("/v1/courses?ids={}", ids.join(","))
}

/// Whom the programs connect to PostgreSQL as; `None` is the administrative
/// user of `TEST_DATABASE_URL` (a superuser, which also owns the tables).
#[derive(Debug, Clone, Default)]
pub struct PgRoles {
    pub command: Option<String>,
    pub projector: Option<String>,
}

/// One isolated stack.
pub struct Stack {
    /// The test database, as the administrative user (migrations, checks).
    pub database_url: String,
    /// The test database as the projector connects to it.
    pub projector_database_url: String,
    pub db_name: String,
    pub redis_url: String,
    pub prefix: String,
    pub slot: String,
    pub publication: String,
    pub command: String,
    pub query: String,
    pub http: reqwest::Client,
    pub redis: Client,
    pub pg: tokio_postgres::Client,
    projector: Option<Child>,
    projector_addr: String,
    stops: Vec<oneshot::Sender<()>>,
}

impl Stack {
    /// A fresh database (migrated), the command and query APIs running on
    /// the test Redis, no projector yet.
    pub async fn start() -> Result<Self> {
        Self::start_as(&PgRoles::default()).await
    }

    /// Like [`Stack::start`], with the views in the Redis `redis_url` names
    /// (any `REDIS_URL` form: one Redis, or a cluster's nodes).
    pub async fn start_with_redis(redis_url: &str) -> Result<Self> {
        Self::start_with(&PgRoles::default(), redis_url).await
    }

    /// As [`Stack::start`], with the programs connecting as `roles`. The
    /// migrations still run as the administrative user, which owns the
    /// tables. A projector role that owns nothing cannot create a
    /// publication, so it streams the one the migrations made.
    pub async fn start_as(roles: &PgRoles) -> Result<Self> {
        Self::start_with(roles, &redis_url()).await
    }

    async fn start_with(roles: &PgRoles, redis_url: &str) -> Result<Self> {
        let target: views::RedisUrl = redis_url.parse()?;
        let admin_url = admin_database_url();
        let db_name = unique_name("db");
        let (admin, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .context("connecting to the test PostgreSQL: is the local stack up (bash deploy/local.sh up)?")?;
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE {db_name}"))
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&admin_url);
        let database_url = format!("{base}/{db_name}");
        command_api::migrate(&database_url).await?;
        let (pg, conn) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);

        let prefix = unique_name("k");
        // Reconnects: some tests restart their Redis under the stack.
        let redis = Builder::from_config(target.config())
            .set_policy(ReconnectPolicy::new_constant(100, 100))
            .build()?;
        redis.init().await.context("connecting to the test Redis")?;

        let mut stops = Vec::new();
        let command_url = match &roles.command {
            Some(role) => with_user(&database_url, role),
            None => database_url.clone(),
        };
        let command_app =
            command_api::Application::build(command_api::Config::for_tests(&command_url)).await?;
        let command = format!("http://127.0.0.1:{}", command_app.port());
        let (tx, rx) = oneshot::channel();
        stops.push(tx);
        tokio::spawn(command_app.run_until_stopped(async move {
            let _ = rx.await;
        }));

        let query_app =
            query_api::Application::build(query_api::Config::for_tests(target, &prefix)).await?;
        let query = format!("http://127.0.0.1:{}", query_app.port());
        let (tx, rx) = oneshot::channel();
        stops.push(tx);
        tokio::spawn(query_app.run_until_stopped(async move {
            let _ = rx.await;
        }));

        let projector_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let (projector_database_url, publication) = match &roles.projector {
            Some(role) => (
                with_user(&database_url, role),
                MIGRATED_PUBLICATION.to_owned(),
            ),
            None => (database_url.clone(), unique_name("pub")),
        };
        Ok(Self {
            database_url,
            projector_database_url,
            db_name,
            redis_url: redis_url.to_owned(),
            slot: unique_name("slot"),
            publication,
            prefix,
            command,
            query,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            redis,
            pg,
            projector: None,
            projector_addr: format!("127.0.0.1:{projector_port}"),
            stops,
        })
    }

    /// Starts the projector binary and waits until it is ready.
    pub async fn start_projector(&mut self) -> Result<()> {
        self.spawn_projector()?;
        self.wait_projector_ready(Duration::from_secs(60)).await
    }

    /// Starts the projector binary without waiting.
    pub fn spawn_projector(&mut self) -> Result<()> {
        self.spawn_projector_with(&[])
    }

    /// Starts the projector binary with these environment variables
    /// (settings) added or overriding, without waiting.
    pub fn spawn_projector_with(&mut self, env: &[(&str, &str)]) -> Result<()> {
        if self.projector.is_some() {
            bail!("projector already running");
        }
        let child = self
            .projector_command()?
            .env("PROJECTOR_ADDR", &self.projector_addr)
            .env(
                "RUST_LOG",
                std::env::var("PROJECTOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting the projector binary")?;
        self.projector = Some(child);
        Ok(())
    }

    /// The projector binary with this stack's database, Redis, key prefix,
    /// slot and publication (a daemon still needs `PROJECTOR_ADDR`).
    pub fn projector_command(&self) -> Result<tokio::process::Command> {
        let mut command = tokio::process::Command::new(projector_binary()?);
        command
            .env("DATABASE_URL", &self.projector_database_url)
            .env("REDIS_URL", &self.redis_url)
            .env("KEY_PREFIX", &self.prefix)
            .env("PROJECTOR_SLOT", &self.slot)
            .env("PROJECTOR_PUBLICATION", &self.publication)
            .env("PROJECTOR_HEARTBEAT_SECS", "1");
        Ok(command)
    }

    /// Waits for the projector's `/ready`.
    pub async fn wait_projector_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.projector.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("projector exited early: {status}");
                }
            }
            let url = format!("http://{}/ready", self.projector_addr);
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status() == StatusCode::OK {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("projector not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The projector's process id, while it runs.
    pub fn projector_pid(&self) -> Option<u32> {
        self.projector.as_ref().and_then(|c| c.id())
    }

    /// The slot's `confirmed_flush_lsn`.
    pub async fn slot_confirmed(&self) -> Result<views::Lsn> {
        let row = self
            .pg
            .query_one(
                "SELECT coalesce(confirmed_flush_lsn, '0/0')::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await?;
        Ok(row.get::<_, String>(0).parse()?)
    }

    /// Deletes every Redis key of this stack at once, as a Redis restart
    /// without persistence (or FLUSHALL) would, without touching other
    /// tests: one script, so no writer can slip in between (hence one
    /// Redis only: a cluster has no such single step).
    pub async fn lose_redis_data(&self) -> Result<()> {
        if self.redis.is_clustered() {
            bail!("losing all data at once needs one Redis, not a cluster");
        }
        const DELETE_ALL: &str = "local keys = redis.call('KEYS', ARGV[1]) \
            for i = 1, #keys, 1000 do \
              redis.call('DEL', unpack(keys, i, math.min(i + 999, #keys))) \
            end \
            return #keys";
        let _: i64 = self
            .redis
            .eval(
                DELETE_ALL,
                Vec::<String>::new(),
                vec![format!("{}:*", self.prefix)],
            )
            .await?;
        Ok(())
    }

    /// GET from the projector's ops endpoints.
    pub async fn projector_get(&self, path: &str) -> Result<Answer> {
        self.send(
            self.http
                .get(format!("http://{}{path}", self.projector_addr)),
        )
        .await
    }

    /// A value of the projector's `/metrics` (`None` when absent).
    pub async fn projector_metric(&self, name: &str) -> Result<Option<f64>> {
        let text = String::from_utf8(self.projector_get("/metrics").await?.raw)?;
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()))
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop_projector(&mut self) -> Result<()> {
        let Some(mut child) = self.projector.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
        }
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .context("projector did not exit within 20 s of SIGTERM")??;
        if !status.success() {
            bail!("projector exited with {status} after SIGTERM");
        }
        Ok(())
    }

    /// SIGKILL: no flush, no goodbye.
    pub async fn kill_projector(&mut self) -> Result<()> {
        if let Some(mut child) = self.projector.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// POST JSON to the command API.
    pub async fn post(&self, path: &str, body: &Json) -> Result<Answer> {
        self.send(self.http.post(format!("{}{path}", self.command)).json(body))
            .await
    }

    /// POST an order with an idempotency key.
    pub async fn order(&self, key: &str, body: &Json) -> Result<Answer> {
        self.send(
            self.http
                .post(format!("{}/v1/orders", self.command))
                .header("Idempotency-Key", key)
                .json(body),
        )
        .await
    }

    /// `user` buys `course` (a key of its own); the order's `X-Commit-Lsn`.
    pub async fn buy(&self, user: i64, course: i64) -> Result<String> {
        let order = self
            .order(
                &unique_name("key"),
                &serde_json::json!({"user_id": user, "course_ids": [course]}),
            )
            .await?
            .ensure_status(StatusCode::CREATED)?;
        let lsn = order.header("x-commit-lsn");
        ensure!(!lsn.is_empty(), "the order carries no X-Commit-Lsn");
        Ok(lsn.to_owned())
    }

    /// GET from the query API.
    pub async fn get(&self, path: &str) -> Result<Answer> {
        self.send(self.http.get(format!("{}{path}", self.query)))
            .await
    }

    /// GET from the query API, fresh at least up to `lsn`.
    pub async fn get_fresh(&self, path: &str, lsn: &str) -> Result<Answer> {
        self.send(
            self.http
                .get(format!("{}{path}", self.query))
                .header("X-Min-Lsn", lsn)
                .header("X-Max-Wait-Ms", "5000"),
        )
        .await
    }

    /// Sends any request and collects the answer.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer> {
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let raw = response.bytes().await?.to_vec();
        let body = serde_json::from_slice(&raw).unwrap_or(Json::Null);
        Ok(Answer {
            status,
            headers,
            body,
            raw,
        })
    }

    /// Creates a user; returns its id.
    pub async fn user(&self, email: &str, company: Option<&str>) -> Result<i64> {
        let a = self
            .post(
                "/v1/users",
                &serde_json::json!({"email": email, "name": "Test User", "company": company}),
            )
            .await?;
        a.created_id()
    }

    /// Creates a course; returns its id.
    pub async fn course(&self, title: &str, description_html: &str, price_krw: i64) -> Result<i64> {
        let a = self
            .post(
                "/v1/courses",
                &serde_json::json!({
                    "title": title, "summary": format!("about {title}"), "description_html": description_html,
                    "category": "programming", "instructor": "Kim", "price_krw": price_krw,
                }),
            )
            .await?;
        a.created_id()
    }

    /// `courses` small courses and `users` users, most of them naming one of
    /// a few companies; returns their ids.
    pub async fn catalogue(&self, courses: usize, users: usize) -> Result<(Vec<i64>, Vec<i64>)> {
        let mut c = Vec::new();
        for i in 0..courses {
            c.push(
                self.course(&format!("Course {i}"), &format!("<p>course {i}</p>"), 1000)
                    .await?,
            );
        }
        let mut u = Vec::new();
        for i in 0..users {
            let company = ["Acme", "Globex", "Initech", "Umbrella", "Hooli"]
                .get(i % 7)
                .copied();
            u.push(self.user(&format!("user{i}@example.com"), company).await?);
        }
        Ok((c, u))
    }

    /// The raw Redis value of the key `key` names in the live generation
    /// (for example `|k, g| k.course_view(g, id)`).
    pub async fn raw_view(
        &self,
        key: impl Fn(&views::Keys, u64) -> String,
    ) -> Result<Option<Vec<u8>>> {
        let keys = views::Keys::new(self.prefix.clone());
        let marker: Option<String> = self.redis.get(keys.generation_marker()).await?;
        let marker: views::GenerationMarker =
            serde_json::from_str(&marker.context("no live generation")?)?;
        Ok(self.redis.get(key(&keys, marker.generation)).await?)
    }

    /// Active enrollments per course, as the tables say.
    pub async fn student_counts(&self) -> Result<Vec<(i64, i64)>> {
        let rows = self
            .pg
            .query(
                "SELECT c.id, count(e.id) FROM courses c \
                   LEFT JOIN enrollments e ON e.course_id = c.id AND e.revoked_at IS NULL \
                  GROUP BY c.id ORDER BY c.id",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The current WAL insert position (a token every earlier commit is before).
    pub async fn current_lsn(&self) -> Result<String> {
        Ok(self
            .pg
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await?
            .get(0))
    }

    /// Stops everything and removes the database, slot and keys.
    pub async fn cleanup(mut self) -> Result<()> {
        self.stop_projector().await.ok();
        self.kill_projector().await.ok();
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        cleanup_resources(&self.db_name, &self.slot, &self.prefix, &self.redis).await
    }
}

impl Drop for Stack {
    /// A failed test still leaves no slot behind (a leaked slot makes
    /// PostgreSQL keep WAL forever).
    fn drop(&mut self) {
        if let Some(child) = self.projector.as_mut() {
            let _ = child.start_kill();
        }
        if self.stops.is_empty() {
            return;
        }
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        cleanup_resources_from_drop(
            self.db_name.clone(),
            self.slot.clone(),
            self.prefix.clone(),
            self.redis_url.clone(),
        );
    }
}

/// [`cleanup_resources`] for a `Drop`, which cannot await: on a thread with
/// a runtime of its own, waited for; errors are ignored (best effort).
pub(crate) fn cleanup_resources_from_drop(
    db: String,
    slot: String,
    prefix: String,
    redis_url: String,
) {
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let _ = rt.block_on(async move {
            let target: views::RedisUrl = redis_url.parse()?;
            let redis = Builder::from_config(target.config()).build()?;
            redis.init().await?;
            cleanup_resources(&db, &slot, &prefix, &redis).await
        });
    })
    .join();
}

pub(crate) async fn cleanup_resources(
    db: &str,
    slot: &str,
    prefix: &str,
    redis: &Client,
) -> Result<()> {
    let (admin, conn) =
        tokio_postgres::connect(&admin_database_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    // The walsender of a killed projector may take a moment to go away.
    for _ in 0..50 {
        let gone = admin
            .query_opt(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                &[&slot],
            )
            .await
            .is_ok()
            && admin
                .query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                .await?
                .is_none();
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await?;
    delete_prefix(redis, prefix).await
}

async fn delete_prefix(redis: &Client, prefix: &str) -> Result<()> {
    views::delete_matching(redis, &format!("{prefix}:*"), |_| false).await?;
    Ok(())
}

/// The projector binary: `PROJECTOR_BIN` if set (used as is, nothing is
/// built), else the one [`programs::binary`] builds.
pub fn projector_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("PROJECTOR_BIN") {
        return Ok(PathBuf::from(p));
    }
    programs::binary("projector")
}

/// HTML of a realistic size and entropy: words drawn from a varied
/// vocabulary by a small deterministic generator, in paragraphs and lists.
pub fn realistic_html(bytes: usize, seed: u64) -> String {
    const WORDS: &[&str] = &[
        "ownership",
        "borrow",
        "lifetime",
        "trait",
        "generic",
        "closure",
        "iterator",
        "async",
        "await",
        "future",
        "pinning",
        "executor",
        "channel",
        "mutex",
        "atomic",
        "ordering",
        "compile",
        "macro",
        "pattern",
        "match",
        "enum",
        "struct",
        "module",
        "crate",
        "workspace",
        "dependency",
        "feature",
        "release",
        "benchmark",
        "profile",
        "allocation",
        "vector",
        "slice",
        "string",
        "unicode",
        "parse",
        "serialize",
        "network",
        "socket",
        "protocol",
        "database",
        "index",
        "transaction",
        "isolation",
        "snapshot",
        "replication",
        "cache",
        "latency",
        "throughput",
        "students",
        "exercise",
        "chapter",
        "project",
        "deploy",
        "monitor",
        "tracing",
        "logging",
        "error",
        "result",
        "option",
        "testing",
        "property",
        "fuzzing",
        "unsafe",
        "pointer",
        "reference",
        "smart",
        "box",
        "rc",
        "arc",
        "refcell",
        "interior",
        "mutability",
        "thread",
        "spawn",
        "join",
        "select",
        "timeout",
        "retry",
        "backoff",
        "graceful",
        "shutdown",
        "signal",
        "config",
        "environment",
        "cli",
        "argument",
        "flag",
        "default",
        "value",
        "강의",
        "수강생",
        "실습",
        "프로젝트",
        "예제",
        "설명",
        "코드",
        "배포",
        "운영",
        "성능",
    ];
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut html = String::from("<article>");
    while html.len() < bytes {
        let r = next();
        match r % 7 {
            0 => html.push_str(&format!("<h2>Chapter {}: ", r % 97)),
            1 => html.push_str("<ul><li>"),
            _ => html.push_str("<p>"),
        }
        let words = 12 + (next() % 40) as usize;
        for i in 0..words {
            if i > 0 {
                html.push(' ');
            }
            html.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
            if next() % 11 == 0 {
                html.push_str(&format!(" {}", next() % 10_000));
            }
        }
        match r % 7 {
            0 => html.push_str("</h2>\n"),
            1 => html.push_str("</li></ul>\n"),
            _ => html.push_str(".</p>\n"),
        }
    }
    html.push_str("</article>");
    html
}

#[cfg(test)]
mod tests {
    use super::with_user;

    #[test]
    fn with_user_replaces_the_user_and_drops_the_password() {
        assert_eq!(
            with_user(
                "postgres://postgres@127.0.0.1:55432/db_1",
                "course_sales_command"
            ),
            "postgres://course_sales_command@127.0.0.1:55432/db_1"
        );
        assert_eq!(
            with_user("postgres://a:secret@host/db?sslmode=disable", "b"),
            "postgres://b@host/db?sslmode=disable"
        );
        assert_eq!(
            with_user("postgresql://host:5/db", "b"),
            "postgresql://b@host:5/db"
        );
    }
}
