//! The read endpoints' parameters, parsed into values valid by construction:
//! a value of the wrong type is 400 `bad_request`; a well-typed value out of
//! range is 422 `validation_failed` naming its field (SPEC "Errors").

use std::collections::BTreeMap;

use axum::{
    extract::{FromRequestParts, Path, Query},
    http::{header, request::Parts, HeaderMap},
};

use crate::{
    error::ApiError,
    headers::{X_MAX_WAIT_MS, X_MIN_LSN},
    store::{Page, Sort},
};

/// Most ids one `GET /v1/courses?ids=` may ask for.
pub(crate) const MAX_IDS: usize = 500;
/// Largest page of a list.
pub(crate) const MAX_LIMIT: i64 = 100;

/// The request headers a read looks at (`X-Min-Lsn`, `X-Max-Wait-Ms`,
/// `If-None-Match`), taken alone: copying the whole map, as the `HeaderMap`
/// extractor does, was a cost of every read.
pub(crate) struct ReadHeaders(pub HeaderMap);

impl<S: Send + Sync> FromRequestParts<S> for ReadHeaders {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // An empty map does not allocate; most reads send none of these.
        let mut taken = HeaderMap::new();
        for name in [X_MIN_LSN, X_MAX_WAIT_MS, header::IF_NONE_MATCH] {
            for value in parts.headers.get_all(&name) {
                taken.append(name.clone(), value.clone());
            }
        }
        Ok(ReadHeaders(taken))
    }
}

/// The query string as name/value pairs; a malformed one is the app's own 400
/// (axum's rejection would be plain text).
#[derive(Debug, Default)]
pub(crate) struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map(|Query(pairs)| QueryParams(pairs))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}

impl QueryParams {
    /// The value of `name`, if given; given twice is ambiguous, so 400.
    pub(crate) fn get(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self.0.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::BadRequest(format!(
                "query parameter `{name}` is given more than once"
            )));
        }
        Ok(first.map(String::as_str))
    }

    /// The read-your-writes token `?min_lsn=`, the twin of `X-Min-Lsn`.
    pub(crate) fn min_lsn(&self) -> Result<Option<&str>, ApiError> {
        self.get("min_lsn")
    }

    /// An integer parameter: 400 if it is not written as one; read as 128
    /// bits (a longer value saturates), so that a value beyond 64 bits fails
    /// the range check as out of range rather than being cut to fit.
    fn integer(&self, name: &str) -> Result<Option<i128>, ApiError> {
        let Some(raw) = self.get(name)? else {
            return Ok(None);
        };
        let digits = raw.strip_prefix('-').unwrap_or(raw);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::BadRequest(format!(
                "query parameter `{name}` is not an integer: {:?}",
                truncated(raw)
            )));
        }
        Ok(Some(raw.parse().unwrap_or(if digits.len() == raw.len() {
            i128::MAX
        } else {
            i128::MIN
        })))
    }
}

/// An id in the path: a positive decimal 64-bit integer.
pub(crate) struct PathId(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let PathText(raw) = PathText::from_request_parts(parts, state).await?;
        parse_id(&raw).map(PathId)
    }
}

/// A text segment of the path (percent-decoded).
pub(crate) struct PathText(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathText {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(text)| PathText(text))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}

/// Ids are positive decimal 64-bit integers (no sign, no spaces).
pub(crate) fn parse_id(raw: &str) -> Result<i64, ApiError> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 && raw.bytes().all(|b| b.is_ascii_digit()) => Ok(id),
        _ => Err(ApiError::BadRequest(format!(
            "{:?} is not a positive integer id",
            truncated(raw)
        ))),
    }
}

/// `?ids=1,2,3`: 1 to [`MAX_IDS`] ids in the order asked, duplicates kept.
/// A malformed id is 400 (SPEC); a list of the wrong length is 422.
pub(crate) fn parse_ids(params: &QueryParams) -> Result<Vec<i64>, ApiError> {
    let raw = params.get("ids")?.ok_or_else(|| {
        ApiError::BadRequest(format!(
            "query parameter `ids` is required: 1 to {MAX_IDS} comma-separated course ids"
        ))
    })?;
    if raw.is_empty() {
        return Err(invalid("ids", format!("must list 1 to {MAX_IDS} ids")));
    }
    let ids = raw
        .split(',')
        .map(parse_id)
        .collect::<Result<Vec<_>, _>>()?;
    if ids.len() > MAX_IDS {
        return Err(invalid(
            "ids",
            format!("must list at most {MAX_IDS} ids, got {}", ids.len()),
        ));
    }
    Ok(ids)
}

/// `?limit=&offset=` with `default_limit`; every field out of range is named
/// in one 422.
pub(crate) fn parse_page(params: &QueryParams, default_limit: i64) -> Result<Page, ApiError> {
    let (page, fields) = page_fields(params, default_limit)?;
    reject(fields)?;
    Ok(page)
}

/// `?sort=&limit=&offset=` of a category list (sort defaults to popular).
pub(crate) fn parse_sorted_page(
    params: &QueryParams,
    default_limit: i64,
) -> Result<(Sort, Page), ApiError> {
    let (page, mut fields) = page_fields(params, default_limit)?;
    let sort = match params.get("sort")? {
        None | Some("popular") => Sort::Popular,
        Some("newest") => Sort::Newest,
        Some(_) => {
            fields.insert("sort", "must be `popular` or `newest`".into());
            Sort::Popular
        }
    };
    reject(fields)?;
    Ok((sort, page))
}

type Fields = BTreeMap<&'static str, String>;

fn page_fields(params: &QueryParams, default_limit: i64) -> Result<(Page, Fields), ApiError> {
    let limit = params
        .integer("limit")?
        .unwrap_or(i128::from(default_limit));
    let offset = params.integer("offset")?.unwrap_or(0);
    let mut fields = Fields::new();
    let limit = i64::try_from(limit)
        .ok()
        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
        .unwrap_or_else(|| {
            fields.insert("limit", format!("must be between 1 and {MAX_LIMIT}"));
            default_limit
        });
    let offset = i64::try_from(offset)
        .ok()
        .filter(|offset| *offset >= 0)
        .unwrap_or_else(|| {
            fields.insert("offset", format!("must be between 0 and {}", i64::MAX));
            0
        });
    Ok((Page { limit, offset }, fields))
}

fn reject(fields: Fields) -> Result<(), ApiError> {
    if fields.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(fields))
    }
}

fn invalid(field: &'static str, problem: String) -> ApiError {
    ApiError::Validation(Fields::from([(field, problem)]))
}

/// Echoes at most a short prefix of client text in messages.
fn truncated(raw: &str) -> String {
    raw.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> QueryParams {
        QueryParams(
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn status(err: &ApiError) -> &'static str {
        match err {
            ApiError::BadRequest(_) => "400",
            ApiError::Validation(_) => "422",
            _ => "other",
        }
    }

    fn fields(err: ApiError) -> Vec<&'static str> {
        match err {
            ApiError::Validation(fields) => fields.into_keys().collect(),
            other => panic!("expected 422, got {other:?}"),
        }
    }

    #[test]
    fn ids_must_be_positive_plain_decimals() {
        assert_eq!(parse_id("42").ok(), Some(42));
        assert_eq!(parse_id("007").ok(), Some(7));
        for bad in [
            "0",
            "-1",
            "+1",
            "abc",
            "1.0",
            "99999999999999999999",
            "",
            " 1",
        ] {
            assert!(parse_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_ids_list_keeps_its_order_and_its_duplicates() {
        let ids = parse_ids(&params(&[("ids", "3,1,3,9223372036854775807")])).expect("parses");
        assert_eq!(ids, vec![3, 1, 3, i64::MAX]);
    }

    #[test]
    fn a_malformed_zero_negative_or_overflowing_id_in_the_list_is_400() {
        for bad in [
            "1,,2",
            "1,2,",
            ",1",
            "1, 2",
            "1,0",
            "1,-2",
            "1,x",
            "9223372036854775808",
            "1;2",
        ] {
            let err = parse_ids(&params(&[("ids", bad)])).expect_err(bad);
            assert_eq!(status(&err), "400", "{bad:?}");
        }
        let missing = parse_ids(&params(&[])).expect_err("ids is required");
        assert_eq!(status(&missing), "400");
        let twice = parse_ids(&params(&[("ids", "1"), ("ids", "2")])).expect_err("ambiguous");
        assert_eq!(status(&twice), "400");
    }

    #[test]
    fn an_ids_list_of_the_wrong_length_is_422_on_ids() {
        let most = (1..=MAX_IDS)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            parse_ids(&params(&[("ids", &most)]))
                .map(|ids| ids.len())
                .ok(),
            Some(MAX_IDS)
        );
        let too_many = format!("{most},1");
        assert_eq!(
            fields(parse_ids(&params(&[("ids", &too_many)])).expect_err("501 ids")),
            ["ids"]
        );
        assert_eq!(
            fields(parse_ids(&params(&[("ids", "")])).expect_err("no ids")),
            ["ids"]
        );
    }

    #[test]
    fn a_page_defaults_and_accepts_its_bounds() {
        assert_eq!(
            parse_page(&params(&[]), 50).ok(),
            Some(Page {
                limit: 50,
                offset: 0
            })
        );
        let page = parse_page(&params(&[("limit", "100"), ("offset", "7")]), 20).expect("valid");
        assert_eq!(
            page,
            Page {
                limit: 100,
                offset: 7
            }
        );
        assert_eq!(page.ranks(), (7, 106));
        let one = parse_page(&params(&[("limit", "1")]), 20).expect("valid");
        assert_eq!(one.ranks(), (0, 0));
        let far = Page {
            limit: 100,
            offset: i64::MAX,
        };
        assert_eq!(far.ranks(), (i64::MAX, i64::MAX), "no overflow");
    }

    #[test]
    fn limit_and_offset_out_of_range_are_422_naming_each_field() {
        for limit in ["0", "101", "-5", "99999999999999999999999"] {
            let err = parse_page(&params(&[("limit", limit)]), 20).expect_err(limit);
            assert_eq!(fields(err), ["limit"], "{limit}");
        }
        let both = parse_page(&params(&[("limit", "500"), ("offset", "-1")]), 20)
            .expect_err("both out of range");
        assert_eq!(fields(both), ["limit", "offset"]);
        for offset in [
            "9223372036854775808",
            "99999999999999999999999999999999999999999",
        ] {
            let err = parse_page(&params(&[("offset", offset)]), 20).expect_err(offset);
            assert_eq!(fields(err), ["offset"], "{offset}");
        }
        let last = parse_page(&params(&[("offset", "9223372036854775807")]), 20);
        assert_eq!(last.map(|page| page.offset).ok(), Some(i64::MAX));
    }

    #[test]
    fn limit_and_offset_that_are_not_integers_are_400() {
        for (name, value) in [
            ("limit", "ten"),
            ("limit", ""),
            ("limit", "1.5"),
            ("limit", "+3"),
            ("offset", "-"),
            ("offset", "0x10"),
        ] {
            let err = parse_page(&params(&[(name, value)]), 20).expect_err(value);
            assert_eq!(status(&err), "400", "{name}={value:?}");
        }
    }

    #[test]
    fn sort_defaults_to_popular_and_an_unknown_sort_is_422() {
        assert_eq!(
            parse_sorted_page(&params(&[]), 20).ok(),
            Some((
                Sort::Popular,
                Page {
                    limit: 20,
                    offset: 0
                }
            ))
        );
        assert_eq!(
            parse_sorted_page(&params(&[("sort", "newest")]), 20)
                .ok()
                .map(|(s, _)| s),
            Some(Sort::Newest)
        );
        let err = parse_sorted_page(&params(&[("sort", "cheapest"), ("limit", "101")]), 20)
            .expect_err("unknown sort");
        assert_eq!(fields(err), ["limit", "sort"]);
    }
}
