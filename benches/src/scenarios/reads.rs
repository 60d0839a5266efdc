//! Reads: the same course page from the bare HTTP ceiling, from the query
//! API (Redis), and from the monolith (PostgreSQL); the 125-course cart
//! against a single page at the same rate.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{at_rate, measure_all, mix, Ctx, Subject, Target};
use crate::load::{get_request, MakeRequest, Phase};

/// Where the read paths listen.
pub struct ReadTargets {
    pub query: SocketAddr,
    pub bare: SocketAddr,
    pub monolith: SocketAddr,
}

/// The cart and a single page, at the same fixed rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CartComparison {
    pub rate: f64,
    pub cart: Phase,
    pub single: Phase,
}

fn gets(paths: impl Fn(u64) -> String + Send + Sync + 'static) -> MakeRequest {
    Arc::new(move |n| get_request(&paths(n)))
}

/// Every read subject, then the cart comparison.
pub async fn run(ctx: &Ctx, at: &ReadTargets) -> Result<(Vec<Subject>, CartComparison)> {
    let scale = &ctx.scale;
    let courses = scale.courses as u64;
    let random = move |n: u64| 1 + mix(n) % courses;
    let cart_ids = scale.cart_ids();
    let cart_path = format!(
        "/v1/courses?ids={}",
        cart_ids
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let target = |key: &str, label: &str, addr, make, rates| Target {
        key: key.to_owned(),
        label: label.to_owned(),
        addr,
        make,
        connections: scale.read_connections,
        rates,
    };
    let targets = vec![
        target(
            "bare",
            "bare axum, same bytes (HTTP ceiling)",
            at.bare,
            gets(|_| "/page".to_owned()),
            true,
        ),
        target(
            "hot",
            "query API, hot course (warmed read)",
            at.query,
            gets(|_| "/v1/courses/1".to_owned()),
            true,
        ),
        target(
            "random",
            "query API, random course of all (Redis path)",
            at.query,
            gets(move |n| format!("/v1/courses/{}", random(n))),
            true,
        ),
        target(
            "pg_count",
            "monolith, random course, page with student count (PostgreSQL path)",
            at.monolith,
            gets(move |n| format!("/v1/courses/{}", random(n))),
            true,
        ),
        target(
            "pg_companies",
            "monolith, random course, page with top companies",
            at.monolith,
            gets(move |n| format!("/v1/courses/{}/with-companies", random(n))),
            true,
        ),
        target(
            "pg_companies_hot",
            "monolith, hot course, page with top companies",
            at.monolith,
            gets(|_| "/v1/courses/1/with-companies".to_owned()),
            false,
        ),
        target(
            "cart",
            "query API, 125-id cart (GET /v1/courses?ids=...)",
            at.query,
            gets(move |_| cart_path.clone()),
            true,
        ),
    ];
    let subjects = measure_all(ctx, &targets).await?;

    // The cart against one page of a cart course, at half the cart's maximum.
    let cart = subjects
        .iter()
        .find(|s| s.key == "cart")
        .context("the cart was not measured")?;
    let rate = (cart.max_rps() * 0.5).max(1.0);
    let cart = cart
        .at_50
        .clone()
        .context("the cart subject has no fixed-rate phase")?;
    let ids = cart_ids.clone();
    let single = target(
        "single",
        "query API, one course of the cart, at the cart's rate",
        at.query,
        gets(move |n| format!("/v1/courses/{}", ids[(mix(n) % ids.len() as u64) as usize])),
        true,
    );
    let single = at_rate(ctx, &single, rate, "the cart's rate").await?;
    Ok((subjects, CartComparison { rate, cart, single }))
}
