//! The API's PostgreSQL sessions: the checkout's statements planned once,
//! not at every order; connections checked before use only after idling.

use command_api::statements::{CHECKOUT_FACTS, CHECKOUT_WRITE};
use command_api::Config;
use serde_json::json;
use sqlx::types::Json;
use sqlx::Connection;

use crate::helpers::spawn_app;

#[derive(sqlx::FromRow, Debug)]
struct Plans {
    generic_plans: i64,
    custom_plans: i64,
}

#[tokio::test]
async fn the_checkout_statements_are_planned_once_per_session_not_at_every_order() {
    let app = spawn_app().await;
    let user = app.create_user("buyer@example.com", Some("Acme")).await;
    let course = app.create_course("Rust from scratch", 10_000).await;
    let event = app.create_event(30, true, &[(course, Some(100))]).await;
    let mut config = Config::for_tests(app.database_url());
    config.db_pool_size = 1;
    let pool = command_api::pool(&config).expect("the pool");
    let mut conn = pool.acquire().await.expect("a connection");

    // More orders than the five custom plans PostgreSQL tries before it
    // may settle on the generic one; each rolled back, as a refusal would be.
    for n in 0..8 {
        let key = format!("key-{n}");
        let mut tx = conn.begin().await.expect("begin");
        sqlx::query(CHECKOUT_FACTS)
            .bind(user)
            .bind(&key)
            .bind(Json(json!({ "n": n })))
            .bind(vec![course])
            .bind(Some(event))
            .fetch_one(&mut *tx)
            .await
            .expect("the facts");
        sqlx::query(CHECKOUT_WRITE)
            .bind(user)
            .bind(Some(event))
            .bind(7_000_i64)
            .bind(vec![course])
            .bind(vec![course])
            .bind(vec![7_000_i64])
            .bind(Some("Acme"))
            .bind(vec![Some(event)])
            .bind(Json(json!({ "id": 0 })))
            .bind(&key)
            .fetch_one(&mut *tx)
            .await
            .expect("the write");
        tx.rollback().await.expect("rollback");
    }

    for statement in [CHECKOUT_FACTS, CHECKOUT_WRITE] {
        let plans: Plans = sqlx::query_as(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
        )
        .bind(statement)
        .fetch_one(&mut *conn)
        .await
        .expect("the statement is prepared on this session");
        assert_eq!(plans.custom_plans, 0, "{plans:?} for {statement}");
        assert_eq!(plans.generic_plans, 8, "{plans:?} for {statement}");
    }
}

#[tokio::test]
async fn a_connection_that_idled_is_checked_before_use_so_a_dead_one_costs_no_request() {
    let app = spawn_app().await;
    let mut config = Config::for_tests(app.database_url());
    config.db_pool_size = 1;
    let pool = command_api::pool(&config).expect("the pool");
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("a first statement");

    // The server ends the session while it idles in the pool (a restart,
    // an idle timeout, a failover all look so to the pool).
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(backend)
        .execute(&app.db)
        .await
        .expect("the session terminated");
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;

    let again: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("the next statement runs on a new session");
    assert_ne!(again, backend);
}
