//! The baselines the figures are read against, each served by a child
//! process of the `bench` binary, never in the load generator's runtime.
//!
//! - The HTTP ceiling: a bare axum endpoint answering the hot course page's
//!   very bytes.
//! - The one-round-trip ceiling: the same endpoint doing one Redis `GET` of
//!   the hot course's stored view per request, with the query API's client
//!   and settings, and answering the bytes read.
//! - The monolith: the course page built from PostgreSQL on every read, and
//!   the command API's order transaction plus `UPDATE courses SET
//!   student_count = student_count + 1`, the hot row our schema bans, on a
//!   database of its own.

use std::{collections::HashMap, net::SocketAddr, path::Path, str::FromStr, time::Duration};

use anyhow::{Context, Result};
use axum::{
    body::Bytes,
    extract::{Path as UrlPath, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    Connection, PgPool,
};

/// Where the one-round-trip ceiling reads: the Redis and the key of a
/// stored view.
pub struct StoredView {
    pub redis_url: views::RedisUrl,
    pub key: String,
}

/// Serves `GET /page` (the bytes of `body_file`, as JSON), `GET /health`
/// and, given `stored`, `GET /stored`: one `GET` of that key per request,
/// answered with the bytes read.
pub async fn serve_bare(
    addr: SocketAddr,
    body_file: &Path,
    stored: Option<StoredView>,
) -> Result<()> {
    let body = Bytes::from(
        std::fs::read(body_file).with_context(|| format!("reading {}", body_file.display()))?,
    );
    let mut app = Router::new()
        .route(
            "/page",
            get(move || {
                let body = body.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], body) }
            }),
        )
        .route("/health", get(|| async { "ok" }));
    if let Some(stored) = stored {
        let timeout = Duration::from_millis(views::DEFAULT_READ_TIMEOUT_MS);
        let client = views::read_client(&stored.redis_url, timeout)?;
        fred::prelude::ClientLike::init(&client)
            .await
            .context("connecting to Redis")?;
        // Built once: a clone is a reference count, as the query API's keys.
        let key = fred::types::Key::from(stored.key);
        app = app.route(
            "/stored",
            get(move || {
                let (client, key) = (client.clone(), key.clone());
                async move { one_get(&client, key).await }
            }),
        );
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

/// One `GET`, its value answered as it is.
async fn one_get(client: &fred::prelude::Client, key: fred::types::Key) -> Response {
    use fred::prelude::KeysInterface;
    match client.get::<Option<Bytes>, _>(key).await {
        Ok(Some(value)) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response()
        }
        Ok(None) => (StatusCode::NOT_FOUND, "no such key").into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "redis read failed");
            (StatusCode::SERVICE_UNAVAILABLE, "redis error").into_response()
        }
    }
}

/// The monolith's pool: as large as the command API's, with the same
/// statement timeout.
const POOL_SIZE: u32 = 16;

/// Serves the monolith's read and write paths on `addr` against `database_url`.
pub async fn serve_monolith(addr: SocketAddr, database_url: &str) -> Result<()> {
    let options = PgConnectOptions::from_str(database_url)?.application_name("monolith");
    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(Duration::from_secs(2))
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SELECT set_config('statement_timeout', '5000ms', false)")
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    let app = Router::new()
        .route("/v1/courses/{id}", get(page_with_count))
        .route("/v1/courses/{id}/with-companies", get(page_with_companies))
        .route("/v1/orders", post(order))
        .route("/health", get(|| async { "ok" }))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// The course row, the running sales of the course with their seats left,
/// and (optionally) the top five companies: one statement, one round trip.
const PAGE_SQL: &str = "\
SELECT c.id, c.title, c.summary, c.description_html, c.category, c.instructor, c.price_krw, \
       c.student_count, c.created_at, \
       (SELECT coalesce(json_agg(json_build_object( \
                 'event_id', e.id, 'discount_percent', e.discount_percent, \
                 'starts_at', e.starts_at, 'ends_at', e.ends_at, \
                 'seats_left', sec.seat_limit - (SELECT count(*) FROM event_seats s \
                      WHERE s.event_id = e.id AND s.course_id = c.id AND s.order_id IS NOT NULL))), '[]') \
          FROM sale_event_courses sec JOIN sale_events e ON e.id = sec.event_id \
         WHERE sec.course_id = c.id AND e.starts_at <= now() AND now() < e.ends_at) AS sales, \
       CASE WHEN $2 THEN \
       (SELECT coalesce(json_agg(json_build_object('company', t.company, 'students', t.students)), '[]') \
          FROM (SELECT company, count(*) AS students FROM enrollments \
                 WHERE course_id = c.id AND revoked_at IS NULL AND company IS NOT NULL \
                 GROUP BY company ORDER BY count(*) DESC, company ASC LIMIT 5) t) \
       END AS top_companies \
  FROM courses c WHERE c.id = $1";

#[derive(sqlx::FromRow)]
struct PageRow {
    id: i64,
    title: String,
    summary: String,
    description_html: String,
    category: String,
    instructor: String,
    price_krw: i64,
    student_count: i64,
    created_at: DateTime<Utc>,
    sales: Value,
    top_companies: Option<Value>,
}

async fn page_with_count(State(pool): State<PgPool>, UrlPath(id): UrlPath<i64>) -> Response {
    page(&pool, id, false).await
}

async fn page_with_companies(State(pool): State<PgPool>, UrlPath(id): UrlPath<i64>) -> Response {
    page(&pool, id, true).await
}

async fn page(pool: &PgPool, id: i64, companies: bool) -> Response {
    let row: Option<PageRow> = match sqlx::query_as(PAGE_SQL)
        .bind(id)
        .bind(companies)
        .fetch_optional(pool)
        .await
    {
        Ok(row) => row,
        Err(err) => return failure(err),
    };
    let Some(row) = row else {
        return (StatusCode::NOT_FOUND, "no such course").into_response();
    };
    // The running sale with the lowest price and a seat left, ties to the
    // lowest event id (the SPEC's pick).
    let sale = row
        .sales
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["seats_left"].as_i64().is_none_or(|left| left > 0))
        .map(|s| {
            let discount = s["discount_percent"].as_i64().unwrap_or(0);
            let price = row.price_krw * (100 - discount) / 100;
            (price, s["event_id"].as_i64().unwrap_or(0), s)
        })
        .min_by_key(|(price, event, _)| (*price, *event))
        .map(|(price, _, s)| {
            json!({
                "event_id": s["event_id"], "price_krw": price,
                "discount_percent": s["discount_percent"], "starts_at": s["starts_at"],
                "ends_at": s["ends_at"], "seats_left": s["seats_left"],
            })
        });
    let mut body = json!({
        "id": row.id, "title": row.title, "summary": row.summary,
        "description_html": row.description_html, "category": row.category,
        "instructor": row.instructor, "price_krw": row.price_krw, "sale": sale,
        "student_count": row.student_count, "created_at": row.created_at,
    });
    if let Some(top) = row.top_companies {
        body["top_companies"] = top;
    }
    Json(body).into_response()
}

fn failure(err: sqlx::Error) -> Response {
    let status = match err {
        sqlx::Error::PoolTimedOut => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::warn!(error = %err, "monolith request failed");
    (status, "database error").into_response()
}

#[derive(Deserialize)]
struct OrderRequest {
    user_id: i64,
    course_ids: Vec<i64>,
}

/// The command API's order transaction, statement for statement, plus the
/// hot-row counter update a monolith keeps on `courses`.
async fn order(
    State(pool): State<PgPool>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return (
            StatusCode::PRECONDITION_REQUIRED,
            "idempotency key required",
        )
            .into_response();
    };
    let Ok(request) = OrderRequest::deserialize(&body) else {
        return (StatusCode::BAD_REQUEST, "not an order").into_response();
    };
    match place(&pool, &key, &body, &request).await {
        Ok(Some((receipt, lsn))) => {
            let mut response = (StatusCode::CREATED, Json(receipt)).into_response();
            if let Ok(lsn) = HeaderValue::from_str(&lsn) {
                response.headers_mut().insert("x-commit-lsn", lsn);
            }
            response
        }
        Ok(None) => (StatusCode::CONFLICT, "conflict").into_response(),
        Err(err) => failure(err),
    }
}

async fn place(
    pool: &PgPool,
    key: &str,
    body: &Value,
    request: &OrderRequest,
) -> Result<Option<(Value, String)>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let claimed: Option<i32> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (user_id, key, request) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING RETURNING 1",
    )
    .bind(request.user_id)
    .bind(key)
    .bind(sqlx::types::Json(body))
    .fetch_optional(&mut *tx)
    .await?;
    if claimed.is_none() {
        return Ok(None);
    }
    let company: Option<Option<String>> =
        sqlx::query_scalar("SELECT company FROM users WHERE id = $1")
            .bind(request.user_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(company) = company else {
        return Ok(None);
    };
    let prices: HashMap<i64, i64> =
        sqlx::query_as::<_, (i64, i64)>("SELECT id, price_krw FROM courses WHERE id = ANY($1)")
            .bind(&request.course_ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    if prices.len() != request.course_ids.len() {
        return Ok(None);
    }
    let enrolled: Vec<i64> = sqlx::query_scalar(
        "SELECT course_id FROM enrollments \
         WHERE user_id = $1 AND course_id = ANY($2) AND revoked_at IS NULL",
    )
    .bind(request.user_id)
    .bind(&request.course_ids)
    .fetch_all(&mut *tx)
    .await?;
    if !enrolled.is_empty() {
        return Ok(None);
    }
    let mut course_ids = request.course_ids.clone();
    course_ids.sort_unstable();
    let item_prices: Vec<i64> = course_ids
        .iter()
        .map(|id| prices.get(id).copied().unwrap_or(0))
        .collect();
    let total: i64 = item_prices.iter().sum();
    let (order_id, created_at): (i64, DateTime<Utc>) = sqlx::query_as(
        "INSERT INTO orders (user_id, event_id, status, total_krw) \
         VALUES ($1, $2, 'completed', $3) RETURNING id, created_at",
    )
    .bind(request.user_id)
    .bind(None::<i64>)
    .bind(total)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO order_items (order_id, course_id, price_krw) \
         SELECT $1, item.course_id, item.price_krw \
         FROM UNNEST($2::bigint[], $3::bigint[]) AS item(course_id, price_krw)",
    )
    .bind(order_id)
    .bind(&course_ids)
    .bind(&item_prices)
    .execute(&mut *tx)
    .await?;
    let events: Vec<Option<i64>> = vec![None; course_ids.len()];
    sqlx::query(
        "INSERT INTO enrollments (user_id, course_id, order_id, event_id, company) \
         SELECT $1, e.course_id, $2, e.event_id, $3 \
         FROM UNNEST($4::bigint[], $5::bigint[]) AS e(course_id, event_id)",
    )
    .bind(request.user_id)
    .bind(order_id)
    .bind(&company)
    .bind(&course_ids)
    .bind(&events)
    .execute(&mut *tx)
    .await?;
    // The monolith's counter: every order of a course updates its one row.
    sqlx::query("UPDATE courses SET student_count = student_count + 1 WHERE id = ANY($1)")
        .bind(&course_ids)
        .execute(&mut *tx)
        .await?;
    let items: Vec<Value> = course_ids
        .iter()
        .zip(&item_prices)
        .map(|(c, p)| json!({"course_id": c, "price_krw": p}))
        .collect();
    let receipt = json!({
        "id": order_id, "user_id": request.user_id, "event_id": null, "status": "completed",
        "total_krw": total, "items": items, "created_at": created_at,
    });
    sqlx::query(
        "UPDATE idempotency_keys SET response = $3, status_code = 201 \
         WHERE user_id = $1 AND key = $2",
    )
    .bind(request.user_id)
    .bind(key)
    .bind(sqlx::types::Json(&receipt))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&mut *conn)
        .await?;
    Ok(Some((receipt, lsn)))
}
