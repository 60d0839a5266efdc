//! Carts of up to 500 courses: one statement per table, looked up through
//! the primary key, however many ids they hold.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};

/// Inserts `count` courses of a few hundred bytes each and returns their ids.
async fn courses(app: &TestApp, count: i64) -> Vec<i64> {
    sqlx::query_scalar(
        "INSERT INTO courses (title, summary, description_html, category, instructor, price_krw) \
         SELECT 'Course ' || n, 'What course ' || n || ' teaches', \
                '<p>' || repeat(md5(n::text), 8) || '</p>', 'category ' || (n % 20), \
                'Instructor ' || (n % 300), 1000 + (n % 90) * 1000 \
         FROM generate_series(1, $1) AS n RETURNING id",
    )
    .bind(count)
    .fetch_all(&app.db)
    .await
    .expect("courses inserted")
}

/// Counts the statements run on the order's tables, one row per statement.
const STATEMENT_LOG: &str = "\
    CREATE TABLE statement_log (table_name text NOT NULL, operation text NOT NULL); \
    CREATE FUNCTION log_statement() RETURNS trigger LANGUAGE plpgsql AS $$ \
    BEGIN \
        INSERT INTO statement_log VALUES (TG_TABLE_NAME, TG_OP); \
        RETURN NULL; \
    END $$; \
    CREATE TRIGGER log_statement AFTER INSERT OR UPDATE OR DELETE ON orders \
        FOR EACH STATEMENT EXECUTE FUNCTION log_statement(); \
    CREATE TRIGGER log_statement AFTER INSERT OR UPDATE OR DELETE ON order_items \
        FOR EACH STATEMENT EXECUTE FUNCTION log_statement(); \
    CREATE TRIGGER log_statement AFTER INSERT OR UPDATE OR DELETE ON enrollments \
        FOR EACH STATEMENT EXECUTE FUNCTION log_statement(); \
    CREATE TRIGGER log_statement AFTER INSERT OR UPDATE OR DELETE ON event_seats \
        FOR EACH STATEMENT EXECUTE FUNCTION log_statement(); \
    CREATE TRIGGER log_statement AFTER INSERT OR UPDATE OR DELETE ON idempotency_keys \
        FOR EACH STATEMENT EXECUTE FUNCTION log_statement();";

#[tokio::test]
async fn an_order_of_500_courses_is_one_statement_per_table() {
    let app = spawn_app().await;
    let user = app.create_user("collector@example.com", Some("Acme")).await;
    let course_ids = courses(&app, 500).await;
    let event = app.create_event(100, true, &[]).await;
    // Every course is in the event, with one seat each: the order claims 500.
    sqlx::query(
        "WITH listed AS ( \
             INSERT INTO sale_event_courses (event_id, course_id, seat_limit) \
             SELECT $1, id, 1 FROM unnest($2::bigint[]) AS id RETURNING course_id) \
         INSERT INTO event_seats (event_id, course_id, seat_no) SELECT $1, course_id, 1 FROM listed",
    )
    .bind(event)
    .bind(&course_ids)
    .execute(&app.db)
    .await
    .expect("event courses inserted");
    sqlx::raw_sql(STATEMENT_LOG)
        .execute(&app.db)
        .await
        .expect("statement log installed");

    let response = app
        .post_order(
            "all-of-them",
            &json!({ "user_id": user, "course_ids": course_ids, "event_id": event }),
        )
        .await;

    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["items"].as_array().map(Vec::len), Some(500));
    assert_eq!(body["total_krw"], 0);
    let statements: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT table_name, operation, count(*) FROM statement_log \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&app.db)
    .await
    .expect("statement log");
    let expected = [
        ("enrollments", "INSERT", 1),
        ("event_seats", "UPDATE", 1),
        ("idempotency_keys", "INSERT", 1),
        ("idempotency_keys", "UPDATE", 1),
        ("order_items", "INSERT", 1),
        ("orders", "INSERT", 1),
    ];
    let statements: Vec<(&str, &str, i64)> = statements
        .iter()
        .map(|(table, operation, count)| (table.as_str(), operation.as_str(), *count))
        .collect();
    assert_eq!(statements, expected);
    assert_eq!(app.count("SELECT count(*) FROM order_items").await, 500);
    assert_eq!(app.count("SELECT count(*) FROM enrollments").await, 500);
    assert_eq!(
        app.count("SELECT count(*) FROM event_seats WHERE order_id IS NOT NULL")
            .await,
        500
    );
}

/// Every node of a JSON plan, depth first.
fn plan_nodes(plan: &Value) -> Vec<&Value> {
    let mut nodes = vec![plan];
    if let Some(children) = plan["Plans"].as_array() {
        for child in children {
            nodes.extend(plan_nodes(child));
        }
    }
    nodes
}

#[tokio::test]
async fn the_course_lookup_uses_the_primary_key_index_at_500_ids() {
    let app = spawn_app().await;
    let all = courses(&app, 5_000).await;
    sqlx::raw_sql("ANALYZE courses")
        .execute(&app.db)
        .await
        .expect("analyzed");
    // 500 ids spread over the whole table, as a real cart would be.
    let cart: Vec<i64> = all.iter().step_by(10).copied().collect();
    assert_eq!(cart.len(), 500);
    let explain = format!(
        "EXPLAIN (FORMAT JSON) {}",
        command_api::statements::COURSE_PRICES
    );
    let mut conn = app.db.acquire().await.expect("connection");

    // The plan for these values, then the generic plan a prepared statement
    // falls back to after a few runs.
    for plan_cache_mode in ["force_custom_plan", "force_generic_plan"] {
        sqlx::query("SELECT set_config('plan_cache_mode', $1, false)")
            .bind(plan_cache_mode)
            .execute(&mut *conn)
            .await
            .expect("plan_cache_mode set");
        let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain.clone()))
            .bind(&cart)
            .fetch_one(&mut *conn)
            .await
            .expect("explained");
        let root = &plan[0]["Plan"];
        let nodes = plan_nodes(root);
        let on_courses: Vec<(&str, &str)> = nodes
            .iter()
            .filter(|node| {
                node["Relation Name"] == "courses" || node["Index Name"] == "courses_pkey"
            })
            .map(|node| {
                (
                    node["Node Type"].as_str().unwrap_or_default(),
                    node["Index Name"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert!(
            on_courses.iter().any(|(node_type, index)| {
                *index == "courses_pkey"
                    && ["Index Scan", "Index Only Scan", "Bitmap Index Scan"].contains(node_type)
            }),
            "{plan_cache_mode}: courses are found through courses_pkey, plan: {plan}"
        );
        assert!(
            !on_courses
                .iter()
                .any(|(node_type, _)| *node_type == "Seq Scan"),
            "{plan_cache_mode}: no sequential scan of courses, plan: {plan}"
        );
    }
}
