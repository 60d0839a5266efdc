//! The read API's reference: an OpenAPI document made from the handlers'
//! annotations and the types below, served at `GET /openapi.json`.
//!
//! Bodies are built as bytes from stored JSON (`crate::served`), so they are
//! described by mirror types; tests check each mirror reads its body exactly.

#![allow(dead_code)] // The mirror types are described, never built outside tests.

use axum::{
    extract::State,
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr, Required};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};

use crate::AppState;

/// `GET /openapi.json`: the document, rendered once at start.
pub(super) async fn openapi(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        state.openapi.clone(),
    )
        .into_response()
}

/// What the document says of the whole API; the router adds the paths as
/// it registers each route.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "query-api",
        description = "The storefront's reads: views precomputed by the projector, served from Redis only. \
Every read answers `X-Projection-Lsn` (the LSN up to which every change was applied when the data was read) \
and `X-View-Generation` (the view generation read, always one of the view schema this release serves), and, \
while a replacement view generation is built or a newer view schema's generation is live, `X-View-Stale: true`. \
Read-your-writes: send the \
`X-Commit-Lsn` of a write as `X-Min-Lsn` (or `?min_lsn=`) and the read waits, at most `X-Max-Wait-Ms` \
(default 1000, at most 5000; a larger number waits 5000), until the projection has reached it; else 503 \
`not_yet_projected`, whose `X-Projection-Lsn` says how far the projection had come. Requests refused before \
any view is read (400, 401, 422) carry no `X-Projection-Lsn`. Errors are `{\"error\": {\"code\", \"message\", \"fields\"?}}`; every 503 carries `Retry-After`."
    ),
    components(schemas(ErrorBody, ErrorDetail, SortOrder)),
    modifiers(&AdminToken)
)]
pub(super) struct Reference;

/// Declares the admin bearer token that guards the ops routes.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`ADMIN_TOKEN`; without one configured the ops routes are off (401).",
                    ))
                    .build(),
            ),
        );
    }
}

/// The headers every view read answers, with their descriptions.
const VIEW_HEADERS: [(&str, &str); 4] = [
    ("X-Projection-Lsn", "Every change up to this LSN was applied when the data was read"),
    (
        "X-View-Stale",
        "`true` while a replacement view generation is being built, or while a newer view schema's \
         generation is live (a rolling upgrade): the generation read is no longer kept current; also a \
         pre-warmed copy served while Redis is unreachable (flag `stale-views-on-redis-outage`)",
    ),
    (
        "X-Min-Lsn-Ignored",
        "`true` when ops switched read-your-writes waits off (flag `read-your-writes-wait`): the token \
         was ignored and the answer is what was there",
    ),
    (
        "X-View-Generation",
        "The view generation read: always one of the view schema this query API serves",
    ),
];

/// The response headers every view read answers, described once: added to
/// the 200, 304 and 404 of each operation that takes `X-Min-Lsn` (with `ETag`
/// and a 304 where it takes `If-None-Match`), and `Retry-After` to every 503. Applied
/// to the whole document once the routes are in it.
pub(super) fn describe_answer_headers(document: &mut Document) {
    let text = |description: &str| {
        HeaderBuilder::new()
            .schema(Some(<String as utoipa::PartialSchema>::schema()))
            .description(Some(description))
            .build()
    };
    let takes = |operation: &Operation, name: &str| {
        operation.parameters.iter().flatten().any(|parameter| {
            matches!(parameter, RefOr::T(p) if p.name == name && p.parameter_in == ParameterIn::Header)
        })
    };
    for item in document.paths.paths.values_mut() {
        let Some(operation) = item.get.as_mut() else {
            continue;
        };
        let (view, conditional) = (
            takes(operation, "X-Min-Lsn"),
            takes(operation, "If-None-Match"),
        );
        let responses = &mut operation.responses.responses;
        if view && conditional {
            responses.entry("304".to_owned()).or_insert_with(|| {
                ResponseBuilder::new()
                    .description("The `ETag` in `If-None-Match` is current")
                    .build()
                    .into()
            });
        }
        // What was read answers how fresh it was: found, current or missing.
        for status in ["200", "304", "404"].into_iter().filter(|_| view) {
            let Some(RefOr::T(answer)) = responses.get_mut(status) else {
                continue;
            };
            for (name, description) in VIEW_HEADERS {
                answer
                    .headers
                    .insert(name.to_owned(), text(description).into());
            }
            if conditional && status != "404" {
                let etag = text("Changes whenever the response body would");
                answer.headers.insert("ETag".to_owned(), etag.into());
            }
        }
        if let Some(RefOr::T(unavailable)) = responses.get_mut("503") {
            let retry = HeaderBuilder::new()
                .schema(Some(<u32 as utoipa::PartialSchema>::schema()))
                .description(Some("Seconds to wait before retrying"))
                .build();
            unavailable
                .headers
                .insert("Retry-After".to_owned(), retry.into());
        }
    }
}

/// The read-your-writes parameters every read endpoint takes.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub(super) struct FreshnessHeaders {
    /// Read-your-writes token. While ops switch waits off (flag
    /// `read-your-writes-wait`) a well-formed one is ignored and the answer
    /// carries `X-Min-Lsn-Ignored: true`.
    #[param(rename = "X-Min-Lsn", schema_with = lsn_schema)]
    min_lsn: Option<String>,
    #[param(rename = "X-Max-Wait-Ms", schema_with = max_wait_schema)]
    max_wait_ms: Option<String>,
}

/// The query twin of `X-Min-Lsn`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct FreshnessQuery {
    #[param(schema_with = lsn_schema)]
    min_lsn: Option<String>,
}

/// `GET /v1/courses?ids=`, required. Written out: the derive drops
/// `required` from a parameter whose schema is built by a function.
pub(super) struct CardIds;

impl IntoParams for CardIds {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![ParameterBuilder::new()
            .name("ids")
            .parameter_in(ParameterIn::Query)
            .required(Required::True)
            .schema(Some(ids_schema()))
            .build()]
    }
}

/// The order of a category's list.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub(super) enum SortOrder {
    /// `student_count` descending, then id ascending (the default).
    Popular,
    /// `created_at` descending, then id descending.
    Newest,
}

fn lsn_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(views::Lsn::PATTERN))
        .examples(["0/16B3748"])
        .description(Some(
            "Answer only from data at least this fresh: an `X-Commit-Lsn` of the command API, \
             e.g. `0/16B3748` (the header wins when both it and `?min_lsn=` are given).",
        ))
        .build()
}

fn max_wait_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[0-9]+$"))
        .examples(["250"])
        .description(Some(
            "How long to wait for `X-Min-Lsn`, in whole milliseconds (default 1000; \
             any larger number waits 5000).",
        ))
        .build()
}

fn ids_schema() -> Object {
    let id = positive_up_to(i64::MAX.unsigned_abs());
    let more = crate::params::MAX_IDS - 1;
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!("^{id}(?:,{id}){{0,{more}}}$")))
        .description(Some(
            "1 to 500 comma-separated positive decimal ids of at most 64 bits, no spaces; \
             duplicates allowed.",
        ))
        .build()
}

/// A regular expression for the decimal numbers 1 to `max`, leading zeros
/// allowed, as `parse_id` reads them: shorter numbers, then for each digit
/// of `max` the numbers that share its prefix and are lower at that digit.
fn positive_up_to(max: u64) -> String {
    let digits = max.to_string();
    let n = digits.len();
    let mut branches = Vec::new();
    if n > 1 {
        branches.push(format!("[1-9][0-9]{{0,{}}}", n - 2));
    }
    for (i, digit) in digits.bytes().enumerate() {
        let low = if i == 0 { b'1' } else { b'0' };
        if digit > low {
            branches.push(format!(
                "{}[{}-{}][0-9]{{{}}}",
                &digits[..i],
                char::from(low),
                char::from(digit - 1),
                n - i - 1
            ));
        }
    }
    branches.push(digits.clone());
    format!("0*(?:{})", branches.join("|"))
}

/// Unparseable path, query or header
#[derive(IntoResponses)]
#[response(status = 400)]
pub(super) struct Unparseable(ErrorBody);

/// `rebuilding` (no view generation is live), `not_yet_projected` (the projection did not reach `X-Min-Lsn` in time) or `unavailable`
#[derive(IntoResponses)]
#[response(status = 503)]
pub(super) struct ViewUnavailable(ErrorBody);

/// Every error body.
#[derive(ToSchema)]
pub(super) struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(ToSchema)]
pub(super) struct ErrorDetail {
    /// `bad_request`, `not_found`, `method_not_allowed`, `validation_failed`,
    /// `unavailable`, `not_yet_projected` or `rebuilding`.
    code: String,
    /// A human sentence.
    message: String,
    /// Only for `validation_failed`: the problem of each field, by name.
    fields: Option<std::collections::BTreeMap<String, String>>,
}

/// `GET /v1/courses?ids=`: `{"courses":[card...],"missing":[id...]}`.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Cards {
    /// In the order asked; a duplicated id appears as often as asked.
    courses: Vec<CourseCard>,
    /// Ids without a card, in order of first appearance.
    missing: Vec<i64>,
}

/// A page of a category: `{"courses":[card...],"total"}`.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CategoryPage {
    courses: Vec<CourseCard>,
    /// Courses in the category, all pages together.
    total: u64,
}

/// A page of a user's library: `{"user_id","courses":[card...],"total"}`.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Library {
    user_id: i64,
    courses: Vec<CourseCard>,
    /// Active enrollments, all pages together.
    total: u64,
}

/// A sale event and its courses' cards.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventPage {
    id: i64,
    name: String,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    discount_percent: i32,
    /// In the event's order; `sale` is this event's while it runs, else null.
    courses: Vec<CourseCard>,
}

/// A course card: the course page without `description_html` and `top_companies`.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CourseCard {
    id: i64,
    title: String,
    summary: String,
    category: String,
    instructor: String,
    /// The list price, in KRW.
    price_krw: i64,
    /// The running sale for this course (on an event page: that event's,
    /// while it runs), by the query API's clock; null if none.
    sale: Option<Sale>,
    /// Active (not revoked) enrollments.
    student_count: i64,
    created_at: DateTime<Utc>,
    /// The LSN of the last change reflected in this card.
    lsn: String,
}

/// A course page.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CourseDetail {
    id: i64,
    title: String,
    summary: String,
    description_html: String,
    category: String,
    instructor: String,
    /// The list price, in KRW.
    price_krw: i64,
    /// The running event with the lowest price for this course and a seat
    /// left (ties to the lowest event id), by the query API's clock; null if none.
    sale: Option<Sale>,
    /// Active (not revoked) enrollments.
    student_count: i64,
    /// The five companies with the most actively enrolled students, ties by name.
    top_companies: Vec<TopCompany>,
    created_at: DateTime<Utc>,
    /// The LSN of the last change reflected in this view.
    lsn: String,
}

/// A course's price in a running sale event.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Sale {
    event_id: i64,
    /// `price_krw * (100 - discount_percent) / 100`, rounded down.
    price_krw: i64,
    discount_percent: i32,
    starts_at: DateTime<Utc>,
    /// The sale runs in `[starts_at, ends_at)`.
    ends_at: DateTime<Utc>,
    /// Seats left for this course in the event; null when unlimited.
    seats_left: Option<i64>,
}

/// One company among a course's top five.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TopCompany {
    company: String,
    students: i64,
}

/// An order.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Order {
    id: i64,
    user_id: i64,
    /// `completed` or `cancelled`.
    status: String,
    total_krw: i64,
    items: Vec<OrderItem>,
    /// The sale event the order was placed through, if any.
    #[serde(default)]
    event_id: Option<i64>,
    created_at: DateTime<Utc>,
    /// The LSN of the last change reflected in this view.
    lsn: String,
}

/// One line of an order.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OrderItem {
    course_id: i64,
    price_krw: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn every_view_read_documents_its_answer_headers_and_every_503_its_retry_after() {
        let (_, document) = crate::routes::router();
        let json = serde_json::to_value(&document).expect("the document serializes");
        let responses = |path: &str| &json["paths"][path]["get"]["responses"];
        for path in [
            "/v1/courses/{id}",
            "/v1/courses",
            "/v1/events/{id}",
            "/v1/categories/{category}/courses",
            "/v1/users/{id}/courses",
            "/v1/orders/{id}",
        ] {
            let ok = &responses(path)["200"]["headers"];
            // A path id may have no view (404); with an ETag, a 304.
            let conditional =
                ["/v1/courses/{id}", "/v1/events/{id}", "/v1/orders/{id}"].contains(&path);
            for status in ["200", "304", "404"] {
                let answer = &responses(path)[status];
                assert_eq!(
                    answer.is_object(),
                    status == "200" || conditional,
                    "{path}: {status}"
                );
                for (name, _) in VIEW_HEADERS.iter().filter(|_| answer.is_object()) {
                    let header = &answer["headers"][name];
                    assert!(header["description"].is_string(), "{path} {status}: {name}");
                }
            }
            assert_eq!(ok["ETag"].is_object(), conditional, "{path}: ETag");
            assert_eq!(
                responses(path)["304"]["headers"]["ETag"].is_object(),
                conditional,
                "{path}: 304's ETag"
            );
        }
        for (path, item) in json["paths"].as_object().expect("paths") {
            let unavailable = &item["get"]["responses"]["503"];
            if unavailable.is_object() {
                let retry = &unavailable["headers"]["Retry-After"]["schema"];
                assert_eq!(retry["type"], "integer", "{path}");
                assert_eq!(retry["minimum"], 0, "{path}");
            }
        }
        assert!(responses("/v1/ops/prewarm")["200"]["headers"]
            .get("X-Projection-Lsn")
            .is_none());
    }

    #[test]
    fn the_id_pattern_admits_exactly_one_to_the_maximum() {
        assert_eq!(
            positive_up_to(205),
            "0*(?:[1-9][0-9]{0,1}|[1-1][0-9]{2}|20[0-4][0-9]{0}|205)"
        );
        assert_eq!(positive_up_to(7), "0*(?:[1-6][0-9]{0}|7)");
        assert!(positive_up_to(i64::MAX.unsigned_abs()).ends_with("|9223372036854775807)"));
    }

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, hour, 0, 0)
            .single()
            .expect("valid time")
    }

    fn stored_page() -> views::CoursePage {
        views::CoursePage {
            id: 7,
            title: "t".into(),
            summary: "s".into(),
            description_html: "<p>d</p>".into(),
            category: "c".into(),
            instructor: "i".into(),
            price_krw: 1000,
            created_at: at(1),
        }
    }

    fn stored_stats() -> views::CourseStats {
        views::CourseStats {
            student_count: 2,
            top_companies: vec![views::TopCompany {
                company: "Acme".into(),
                students: 2,
            }],
            lsn: "0/1".into(),
            sales: vec![views::Sale {
                event_id: 3,
                price_krw: 500,
                discount_percent: 50,
                starts_at: at(1),
                ends_at: at(3),
                seats_left: Some(4),
            }],
        }
    }

    #[test]
    fn the_documented_course_shapes_are_exactly_what_is_served() {
        let (page, stats) = (stored_page(), stored_stats());
        let card = serde_json::to_vec(&views::CourseCard::new(&page, &stats)).expect("json");
        let (page, stats) = (
            serde_json::to_vec(&page).expect("json"),
            serde_json::to_vec(&stats).expect("json"),
        );
        for now in [at(2), at(4)] {
            let served = crate::served::course_page(7, &page, &stats, now).expect("serves");
            serde_json::from_slice::<CourseDetail>(&served.body).expect("the detail as documented");
            let served = crate::served::card(&card, now, None).expect("serves");
            serde_json::from_slice::<CourseCard>(&served).expect("the card as documented");
        }
    }

    #[test]
    fn the_documented_list_shapes_are_exactly_what_is_spliced() {
        let card = serde_json::to_vec(&views::CourseCard::new(&stored_page(), &stored_stats()))
            .expect("json");
        let served = crate::served::card(&card, at(2), None).expect("serves");
        let list = |head: &[u8], tail: &[u8]| {
            let mut list = crate::served::CardList::new(head, 2);
            list.push(&served);
            list.push(&served);
            list.finish(tail)
        };
        serde_json::from_slice::<Cards>(&list(b"{\"courses\":", b",\"missing\":[4,5]}"))
            .expect("cards as documented");
        serde_json::from_slice::<CategoryPage>(&list(b"{\"courses\":", b",\"total\":9}"))
            .expect("a category page as documented");
        serde_json::from_slice::<Library>(&list(b"{\"user_id\":3,\"courses\":", b",\"total\":9}"))
            .expect("a library page as documented");
        let event = crate::served::EventPage {
            event: views::EventView {
                id: 3,
                name: "a \"quoted\" sale".into(),
                starts_at: at(1),
                ends_at: at(3),
                discount_percent: 50,
                course_ids: vec![7],
                lsn: "0/1".into(),
            },
            cards: vec![card.into()],
        };
        let served = crate::served::event_page(&event, at(2)).expect("serves");
        let page: EventPage = serde_json::from_slice(&served.body).expect("an event as documented");
        assert_eq!(page.name, event.event.name);
        assert_eq!(page.courses[0].sale.as_ref().map(|s| s.event_id), Some(3));
    }

    #[test]
    fn the_documented_order_shape_is_exactly_what_is_stored() {
        let order = views::OrderView {
            id: 1,
            user_id: 2,
            status: "completed".into(),
            total_krw: 500,
            items: vec![views::OrderItem {
                course_id: 7,
                price_krw: 500,
            }],
            event_id: Some(3),
            created_at: at(2),
            lsn: "0/2".into(),
        };
        let stored = serde_json::to_vec(&order).expect("json");
        serde_json::from_slice::<Order>(&stored).expect("the order as documented");
    }
}
