//! Benchmark data, written straight into a migrated write model with SQL,
//! far faster than through the API; the projector's initial build follows.
//!
//! The shape is production's: a fifth of users name a company (a few
//! thousand, a handful very common), 10 KB descriptions of real HTML, tens of
//! thousands of enrollments on the hot course, a long tail of quiet courses,
//! and one running sale event over the cart's courses.

use anyhow::{Context, Result};
use chrono::{Duration as Days, Utc};
use sqlx::{Connection, PgConnection};

use crate::{
    corpus::{Corpus, SplitMix},
    scale::Scale,
};

const FIRST_NAMES: &[&str] = &[
    "Minjun",
    "Seoyeon",
    "Jiho",
    "Haeun",
    "Doyun",
    "Jiwoo",
    "Eunwoo",
    "Sua",
    "Siwoo",
    "Jian",
    "Hajun",
    "Yuna",
    "Juwon",
    "Chaewon",
    "Yejun",
    "Dahyun",
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Leslie",
    "Margaret",
    "Niklaus",
    "Radia",
    "Tony",
    "Ken",
    "Dennis",
    "Bjarne",
    "Guido",
    "Yukihiro",
    "Rob",
    "Katherine",
    "Hedy",
    "Sophie",
    "Mateo",
    "Lucas",
    "Amara",
    "Priya",
    "Arjun",
    "Mei",
    "Wei",
    "Sakura",
    "Haruto",
    "Olga",
    "Ivan",
];

const LAST_NAMES: &[&str] = &[
    "Kim",
    "Lee",
    "Park",
    "Choi",
    "Jung",
    "Kang",
    "Cho",
    "Yoon",
    "Jang",
    "Lim",
    "Han",
    "Oh",
    "Seo",
    "Shin",
    "Kwon",
    "Hwang",
    "Ahn",
    "Song",
    "Ryu",
    "Hong",
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Lamport",
    "Hamilton",
    "Wirth",
    "Perlman",
    "Hoare",
    "Thompson",
    "Ritchie",
    "Stroustrup",
    "van Rossum",
    "Matsumoto",
    "Pike",
    "Johnson",
    "Lamarr",
    "Wilson",
    "Garcia",
    "Okafor",
    "Sharma",
    "Patel",
    "Chen",
    "Wang",
    "Tanaka",
    "Ivanova",
];

const COMPANY_WORDS: &[&str] = &[
    "Hangang", "Namsan", "Blue", "North", "Bright", "Quantum", "Iron", "Cedar", "Maple", "Harbor",
    "Summit", "Pixel", "Vector", "Orbit", "Silver", "Golden", "Crimson", "Polar", "Delta",
    "Nimbus", "Apex", "Lumen", "Coral", "Granite", "Willow", "Falcon", "Tiger", "Lotus", "Jade",
    "Pine", "River", "Stone", "Cloud", "Signal", "Kernel", "Beacon", "Canyon", "Meadow", "Aurora",
    "Comet",
];

const COMPANY_KINDS: &[&str] = &[
    "Labs",
    "Systems",
    "Software",
    "Robotics",
    "Logistics",
    "Bank",
    "Securities",
    "Telecom",
    "Games",
    "Health",
    "Mobility",
    "Commerce",
    "Foods",
    "Energy",
    "Media",
    "Analytics",
    "Cloud",
    "Networks",
    "Insurance",
    "Electronics",
];

/// The catalogue's categories.
pub const CATEGORIES: &[&str] = &[
    "backend",
    "frontend",
    "mobile",
    "data",
    "machine-learning",
    "devops",
    "security",
    "cloud",
    "databases",
    "embedded",
    "game-dev",
    "systems",
    "testing",
    "design",
    "product",
    "career",
    "algorithms",
    "networking",
    "blockchain",
    "languages",
];

/// Company names: word pairs with a kind, about 3,000 distinct.
pub fn companies() -> Vec<String> {
    let mut out = Vec::new();
    for (i, a) in COMPANY_WORDS.iter().enumerate() {
        for (j, b) in COMPANY_WORDS.iter().enumerate() {
            if i == j {
                continue;
            }
            let kind = COMPANY_KINDS[(i * 7 + j * 3) % COMPANY_KINDS.len()];
            out.push(format!("{a} {b} {kind}"));
        }
    }
    // A stable shuffle so the common companies are not alphabetical.
    let mut rng = SplitMix(42);
    for i in (1..out.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        out.swap(i, j);
    }
    out
}

/// Migrates `database_url` with the command API's own migrations.
pub async fn migrate(database_url: &str, bin_dir: &std::path::Path) -> Result<()> {
    // The command API binary applies them, so the schema is exactly the
    // one it runs on.
    let exe = bin_dir.join("command-api");
    let status = tokio::process::Command::new(&exe)
        .arg("migrate")
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .status()
        .await
        .with_context(|| format!("running {} migrate", exe.display()))?;
    anyhow::ensure!(status.success(), "command-api migrate failed: {status}");
    Ok(())
}

/// Users (a fifth with a company, a few companies very common) and courses
/// (descriptions of real HTML), then the running sale event.
pub async fn users_and_courses(database_url: &str, scale: &Scale, corpus: &Corpus) -> Result<()> {
    let mut conn = PgConnection::connect(database_url).await?;
    sqlx::raw_sql("SET synchronous_commit = off")
        .execute(&mut conn)
        .await?;
    let first: Vec<String> = FIRST_NAMES.iter().map(|s| (*s).to_owned()).collect();
    let last: Vec<String> = LAST_NAMES.iter().map(|s| (*s).to_owned()).collect();
    let companies = companies();
    let chunk = 100_000;
    let mut from = 1;
    while from <= scale.users {
        let to = (from + chunk - 1).min(scale.users);
        // The company pick: a hash of the id cubed, so low indexes (a few
        // big employers) are common and the tail is long.
        sqlx::query(
            "INSERT INTO users (email, name, company, created_at) \
             SELECT 'learner' || g || '@mail' || (g % 89) || '.example', \
                    $1[1 + (g * 7919) % cardinality($1)] || ' ' || $2[1 + (g * 104729) % cardinality($2)], \
                    CASE WHEN g % 5 = 0 THEN \
                      $3[1 + floor(power(((g * 2654435761) % 1000003) / 1000003.0, 3) * cardinality($3))::int] \
                    END, \
                    now() - (g % 700) * interval '1 day' \
               FROM generate_series($4::bigint, $5::bigint) AS g",
        )
        .bind(&first)
        .bind(&last)
        .bind(&companies)
        .bind(from)
        .bind(to)
        .execute(&mut conn)
        .await
        .context("inserting users")?;
        from = to + 1;
    }

    let mut rng = SplitMix(7);
    let batch = 200;
    let mut next = 1i64;
    while next <= scale.courses {
        let last_id = (next + batch - 1).min(scale.courses);
        let mut titles = Vec::new();
        let mut summaries = Vec::new();
        let mut descriptions = Vec::new();
        let mut categories = Vec::new();
        let mut instructors = Vec::new();
        let mut prices = Vec::new();
        let mut created = Vec::new();
        for id in next..=last_id {
            let html = corpus.description(id as u64, scale.description_bytes);
            titles.push(Corpus::title_of(html, id as u64));
            let summary = Corpus::summary_of(html);
            summaries.push(if summary.is_empty() {
                format!("Course {id}")
            } else {
                summary
            });
            descriptions.push(html.to_owned());
            categories.push(CATEGORIES[rng.below(CATEGORIES.len() as u64) as usize].to_owned());
            instructors.push(format!(
                "{} {}",
                FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize],
                LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize]
            ));
            prices.push(10_000 + 1_000 * rng.below(290) as i64);
            created.push(Utc::now() - Days::minutes(rng.below(60 * 24 * 900) as i64));
        }
        // Ids are identities handed out in insertion order, so course n
        // gets description n.
        sqlx::query(
            "INSERT INTO courses (title, summary, description_html, category, instructor, price_krw, created_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::timestamptz[])",
        )
        .bind(&titles)
        .bind(&summaries)
        .bind(&descriptions)
        .bind(&categories)
        .bind(&instructors)
        .bind(&prices)
        .bind(&created)
        .execute(&mut conn)
        .await
        .context("inserting courses")?;
        next = last_id + 1;
    }

    // The sale: 125 courses at 100% off for two weeks, running now.
    let event: i64 = sqlx::query_scalar(
        "INSERT INTO sale_events (name, starts_at, ends_at, discount_percent) \
         VALUES ('Winter sale: 125 courses free for two weeks', now() - interval '1 day', \
                 now() + interval '13 days', 100) RETURNING id",
    )
    .fetch_one(&mut conn)
    .await?;
    sqlx::query(
        "INSERT INTO sale_event_courses (event_id, course_id, seat_limit) \
         SELECT $1, id, NULL FROM UNNEST($2::bigint[]) AS id",
    )
    .bind(event)
    .bind(scale.cart_ids())
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}

/// Enrollments: the hot course (course 1) with `hot_enrollments` students,
/// `warm_courses` courses with `warm_enrollments` each, and every other
/// course with `cold_enrollments`, all from the first half of the users.
pub async fn enrollments(database_url: &str, scale: &Scale) -> Result<()> {
    let mut conn = PgConnection::connect(database_url).await?;
    sqlx::raw_sql("SET synchronous_commit = off")
        .execute(&mut conn)
        .await?;
    let pool = scale.enrolled_pool();
    sqlx::query(
        "INSERT INTO enrollments (user_id, course_id, company, created_at) \
         SELECT u.id, 1, u.company, now() - (u.id % 5000) * interval '1 minute' \
           FROM users u WHERE u.id <= $1",
    )
    .bind(scale.hot_enrollments.min(pool))
    .execute(&mut conn)
    .await
    .context("enrolling the hot course")?;
    // For a fixed course, k -> (c * 7919 + k * 104729) mod pool is one-to-one
    // (104729 is a prime that divides no pool size used), so no user is
    // enrolled twice in one course.
    for (first, last, per_course) in [
        (2, 1 + scale.warm_courses, scale.warm_enrollments),
        (
            2 + scale.warm_courses,
            scale.courses,
            scale.cold_enrollments,
        ),
    ] {
        if first > last {
            continue;
        }
        sqlx::query(
            "INSERT INTO enrollments (user_id, course_id, company, created_at) \
             SELECT u.id, c, u.company, now() - ((c * 31 + k) % 20000) * interval '1 minute' \
               FROM generate_series($1::bigint, $2::bigint) AS c \
               CROSS JOIN generate_series(1::bigint, $3::bigint) AS k \
               JOIN users u ON u.id = 1 + ((c * 7919 + k * 104729) % $4)",
        )
        .bind(first)
        .bind(last)
        .bind(per_course.min(pool))
        .bind(pool)
        .execute(&mut conn)
        .await
        .context("enrolling the other courses")?;
    }
    sqlx::raw_sql("ANALYZE").execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// Turns a copy of the write model into the monolith's database: the
/// `student_count` column the hot-row rule bans, filled from the
/// enrollments, and the index its top-companies query needs.
pub async fn monolith(database_url: &str) -> Result<()> {
    let mut conn = PgConnection::connect(database_url).await?;
    sqlx::raw_sql(
        "ALTER TABLE courses ADD COLUMN student_count bigint NOT NULL DEFAULT 0; \
         UPDATE courses c SET student_count = e.n \
           FROM (SELECT course_id, count(*) AS n FROM enrollments WHERE revoked_at IS NULL GROUP BY 1) e \
          WHERE e.course_id = c.id; \
         CREATE INDEX enrollments_course_company_idx ON enrollments (course_id, company) \
          WHERE revoked_at IS NULL;",
    )
    .execute(&mut conn)
    .await
    .context("preparing the monolith database")?;
    // Visibility map and statistics, so the aggregates can use index-only scans.
    sqlx::raw_sql("VACUUM ANALYZE").execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// Counts of what was seeded, for the report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Seeded {
    pub users: i64,
    pub users_with_company: i64,
    pub companies: i64,
    pub courses: i64,
    pub mean_description_bytes: f64,
    pub enrollments: i64,
    pub hot_course_enrollments: i64,
    pub database_mb: f64,
}

/// Reads the seeded counts back.
pub async fn describe(database_url: &str) -> Result<Seeded> {
    let mut conn = PgConnection::connect(database_url).await?;
    let (users, users_with_company, companies): (i64, i64, i64) =
        sqlx::query_as("SELECT count(*), count(company), count(DISTINCT company) FROM users")
            .fetch_one(&mut conn)
            .await?;
    let (courses, mean): (i64, f64) = sqlx::query_as(
        "SELECT count(*), coalesce(avg(octet_length(description_html)), 0)::float8 FROM courses",
    )
    .fetch_one(&mut conn)
    .await?;
    let (enrollments, hot): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE course_id = 1) FROM enrollments")
            .fetch_one(&mut conn)
            .await?;
    let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(Seeded {
        users,
        users_with_company,
        companies,
        courses,
        mean_description_bytes: mean,
        enrollments,
        hot_course_enrollments: hot,
        database_mb: size as f64 / 1e6,
    })
}
