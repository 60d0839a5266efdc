//! Views built from the initial snapshot say, as their `lsn`, the slot's
//! consistent point (SPEC: never `0/0`), and a later change moves it on.

use e2e::{cards_path, Stack};
use fred::interfaces::KeysInterface;
use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use views::{GenerationMarker, Keys, Lsn};

/// The `lsn` a view answered, parsed.
fn lsn_of(what: &str, view: &Json) -> anyhow::Result<Lsn> {
    let text = view["lsn"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("{what} has no lsn: {view}"))?;
    Ok(text.parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_built_from_the_snapshot_carry_its_consistent_point_and_a_later_change_moves_it_on(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let (courses, users) = stack.catalogue(3, 6).await?;
    let event = stack
        .post(
            "/v1/events",
            &json!({
                "name": "Spring sale",
                "starts_at": (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339(),
                "ends_at": (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339(),
                "discount_percent": 20,
                "courses": [{"course_id": courses[0], "seat_limit": 50}, {"course_id": courses[1]}],
            }),
        )
        .await?;
    assert_eq!(event.status, StatusCode::CREATED, "{:?}", event.body);
    let event_id = event.body["id"].as_i64().expect("an event id");
    let mut orders = Vec::new();
    for (n, user) in users.iter().enumerate() {
        let answer = stack
            .order(
                &format!("before-{user}"),
                &json!({"user_id": user, "course_ids": [courses[n % courses.len()]]}),
            )
            .await?;
        assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
        orders.push(answer.body["id"].as_i64().expect("an order id"));
    }
    // Every write is before this position, and the slot is created after it.
    let before_build: Lsn = stack.current_lsn().await?.parse()?;

    stack.start_projector().await?;
    let mut seen = Vec::new();
    for course in &courses {
        let page = stack.get(&format!("/v1/courses/{course}")).await?;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        seen.push((format!("course {course}"), lsn_of("a course", &page.body)?));
    }
    let cart = stack.get(&cards_path(&courses)).await?;
    for card in cart.body["courses"].as_array().into_iter().flatten() {
        seen.push((format!("card {}", card["id"]), lsn_of("a card", card)?));
    }
    let event_page = stack.get(&format!("/v1/events/{event_id}")).await?;
    assert_eq!(event_page.status, StatusCode::OK, "{:?}", event_page.body);
    for card in event_page.body["courses"].as_array().into_iter().flatten() {
        seen.push((
            format!("event card {}", card["id"]),
            lsn_of("a card", card)?,
        ));
    }
    for order in &orders {
        let view = stack.get(&format!("/v1/orders/{order}")).await?;
        assert_eq!(view.status, StatusCode::OK, "{:?}", view.body);
        seen.push((format!("order {order}"), lsn_of("an order", &view.body)?));
    }
    // The event view itself, as stored (the served event page lists cards).
    let keys = Keys::new(stack.prefix.clone());
    let stored = stack
        .raw_view(|k, g| k.event_view(g, event_id))
        .await?
        .expect("the event view");
    let stored: Json = serde_json::from_slice(&views::decode(&stored)?)?;
    seen.push(("event".into(), lsn_of("the event", &stored)?));
    assert_eq!(seen.len(), 2 * courses.len() + 2 + orders.len() + 1);

    let marker: Option<String> = stack.redis.get(keys.generation_marker()).await?;
    let marker: GenerationMarker = serde_json::from_str(&marker.expect("a live generation"))?;
    let watermark: Option<String> = stack.redis.get(keys.watermark(marker.generation)).await?;
    let watermark: Lsn = watermark.expect("a watermark").parse()?;

    let (_, point) = seen[0].clone();
    for (what, lsn) in &seen {
        assert_eq!(
            *lsn, point,
            "{what}: every snapshot-built view says one point"
        );
    }
    assert_ne!(point, Lsn(0), "never 0/0");
    assert!(
        before_build <= point,
        "the consistent point {point} is after every write before the build ({before_build})"
    );
    assert!(
        point <= watermark,
        "the point {point} is not past the watermark {watermark}"
    );

    // An enrollment later: that course's views move past the point, the
    // others keep it.
    let answer = stack
        .order(
            "after-build",
            &json!({"user_id": users[0], "course_ids": [courses[2]]}),
        )
        .await?;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    let token = answer.header("x-commit-lsn").to_owned();
    let changed = stack
        .get_fresh(&format!("/v1/courses/{}", courses[2]), &token)
        .await?;
    assert_eq!(changed.status, StatusCode::OK, "{:?}", changed.body);
    let moved = lsn_of("the changed course", &changed.body)?;
    assert!(moved > point, "{moved} is past the point {point}");
    assert!(
        moved <= token.parse()?,
        "{moved} is at most the write's token {token}"
    );
    let card = stack
        .get_fresh(&format!("/v1/courses?ids={}", courses[2]), &token)
        .await?;
    assert_eq!(lsn_of("the changed card", &card.body["courses"][0])?, moved);
    let untouched = stack
        .get_fresh(&format!("/v1/courses/{}", courses[1]), &token)
        .await?;
    assert_eq!(lsn_of("an untouched course", &untouched.body)?, point);
    stack.cleanup().await
}
