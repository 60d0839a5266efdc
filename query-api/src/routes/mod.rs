//! Every route of the read API, registered with its OpenAPI annotation so
//! the document lists exactly the routes served.
//!
//! Course views and cards are stored with every candidate sale and served by
//! this process's clock (`crate::served`), so a page is right the moment a
//! sale starts or ends without any re-projection.

mod answer;
mod categories;
mod courses;
mod events;
mod ops;
mod orders;
mod reference;
mod users;

use axum::{
    routing::{get, MethodRouter},
    Router,
};
use utoipa::{openapi::OpenApi as Document, OpenApi as _};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;

/// Every route, and the OpenAPI document of the documented ones.
pub(crate) fn router() -> (Router<AppState>, Document) {
    let (router, mut document) = OpenApiRouter::with_openapi(reference::Reference::openapi())
        .routes(routes!(courses::detail))
        .routes(routes!(courses::cards))
        .routes(routes!(events::event))
        .routes(routes!(categories::courses))
        .routes(routes!(users::library))
        .routes(routes!(orders::order))
        .routes(routes!(ops::prewarm))
        .routes(routes!(ops::flags))
        .routes(routes!(ops::readiness))
        .split_for_parts();
    reference::describe_answer_headers(&mut document);
    let router = undocumented()
        .into_iter()
        .fold(router, |router, (path, route)| router.route(path, route));
    (router, document)
}

/// Served but not in the document: probes, metrics and the document itself.
fn undocumented() -> [(&'static str, MethodRouter<AppState>); 4] {
    [
        ("/health", get(service::health)),
        ("/ready", get(ops::ready)),
        ("/metrics", get(ops::metrics)),
        ("/openapi.json", get(reference::openapi)),
    ]
}

/// Every route's path, from `document` (as [`router`] made it) and the
/// undocumented routes: the metrics' table of routes.
pub(crate) fn paths(document: &Document) -> Vec<String> {
    let undocumented = undocumented().map(|(path, _)| path.to_owned());
    document
        .paths
        .paths
        .keys()
        .cloned()
        .chain(undocumented)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_table_lists_every_route_once() {
        let (_, document) = router();
        let mut paths = paths(&document);
        paths.sort();
        assert_eq!(
            paths,
            [
                "/health",
                "/metrics",
                "/openapi.json",
                "/ready",
                "/v1/categories/{category}/courses",
                "/v1/courses",
                "/v1/courses/{id}",
                "/v1/events/{id}",
                "/v1/ops/events/{id}/readiness",
                "/v1/ops/flags",
                "/v1/ops/prewarm",
                "/v1/orders/{id}",
                "/v1/users/{id}/courses",
            ]
        );
    }

    #[test]
    fn the_document_lists_every_read_route() {
        let (_, document) = router();
        let doc: serde_json::Value =
            serde_json::from_str(&document.to_json().expect("renders")).expect("json");
        for path in [
            "/v1/courses",
            "/v1/courses/{id}",
            "/v1/categories/{category}/courses",
            "/v1/events/{id}",
            "/v1/users/{id}/courses",
            "/v1/orders/{id}",
        ] {
            assert!(
                doc["paths"][path]["get"].is_object(),
                "{path} is documented"
            );
        }
        let cards = &doc["components"]["schemas"]["CourseCard"]["properties"];
        assert!(cards["sale"].is_object() && cards.get("description_html").is_none());
    }

    /// The parameter `name` of `GET path` in the document.
    fn parameter<'a>(doc: &'a serde_json::Value, path: &str, name: &str) -> &'a serde_json::Value {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("{path} declares {name}"))
    }

    #[test]
    fn the_document_states_the_rules_the_parameters_are_checked_by() {
        let (_, document) = router();
        let doc: serde_json::Value =
            serde_json::from_str(&document.to_json().expect("renders")).expect("json");
        let ids = parameter(&doc, "/v1/courses", "ids");
        assert_eq!(ids["required"], true);
        let pattern = ids["schema"]["pattern"].as_str().expect("a pattern");
        assert!(pattern.contains("9223372036854775807") && pattern.ends_with("{0,499}$"));
        for path in [
            "/v1/courses/{id}",
            "/v1/orders/{id}",
            "/v1/users/{id}/courses",
        ] {
            assert_eq!(
                parameter(&doc, path, "id")["schema"]["minimum"],
                1,
                "{path}"
            );
            assert_eq!(
                parameter(&doc, path, "X-Min-Lsn")["schema"]["pattern"],
                views::Lsn::PATTERN
            );
            assert_eq!(
                parameter(&doc, path, "min_lsn")["schema"]["pattern"],
                views::Lsn::PATTERN
            );
            let unavailable = &doc["paths"][path]["get"]["responses"]["503"];
            assert!(unavailable["headers"]["Retry-After"].is_object(), "{path}");
        }
        let category = "/v1/categories/{category}/courses";
        let limit = &parameter(&doc, category, "limit")["schema"];
        assert_eq!(
            (&limit["minimum"], &limit["maximum"]),
            (&1.into(), &100.into())
        );
        assert_eq!(
            doc["components"]["schemas"]["SortOrder"]["enum"],
            serde_json::json!(["popular", "newest"])
        );
        let prewarm = &doc["paths"]["/v1/ops/prewarm"]["get"];
        assert!(prewarm["security"].is_array() && prewarm["responses"]["401"].is_object());
    }
}
