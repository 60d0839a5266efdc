//! `deploy/postgresql/`, the settings and access lines a primary needs,
//! against a real server: every setting is one the server knows, with a
//! value of its kind, and the access lines name the roles of
//! `deploy/roles.sql`.

use anyhow::{ensure, Context, Result};
use e2e::{admin_database_url, tools::deploy_dir, COMMAND_ROLE, PROJECTOR_ROLE};

/// `(name, value)` of every setting line (`name = value  # comment`).
fn settings(text: &str) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .with_context(|| format!("`{line}` is not name = value"))?;
        let value = value.split('#').next().unwrap_or_default().trim();
        found.push((name.trim().to_owned(), value.trim_matches('\'').to_owned()));
    }
    Ok(found)
}

#[tokio::test]
async fn every_production_setting_is_one_the_server_knows_with_a_value_of_its_kind() -> Result<()> {
    let text = std::fs::read_to_string(deploy_dir().join("postgresql/course-sales.conf"))?;
    let settings = settings(&text)?;
    ensure!(settings.len() > 10, "only {} settings read", settings.len());
    for required in [
        "wal_level",
        "max_replication_slots",
        "max_wal_senders",
        "max_slot_wal_keep_size",
    ] {
        ensure!(
            settings.iter().any(|(n, _)| n == required),
            "{required} is not set"
        );
    }
    ensure!(
        settings.contains(&("wal_level".to_owned(), "logical".to_owned())),
        "the projector needs wal_level = logical"
    );
    let (pg, conn) = tokio_postgres::connect(&admin_database_url(), tokio_postgres::NoTls)
        .await
        .context(
            "connecting to the test PostgreSQL: is the local stack up (bash deploy/local.sh up)?",
        )?;
    tokio::spawn(conn);
    for (name, value) in settings {
        let row = pg
            .query_opt(
                "SELECT vartype, coalesce(enumvals, '{}') FROM pg_settings WHERE name = $1",
                &[&name],
            )
            .await?
            .with_context(|| format!("the server has no setting {name}"))?;
        let (kind, choices): (String, Vec<String>) = (row.get(0), row.get(1));
        let fits = match kind.as_str() {
            "bool" => {
                ["on", "off", "true", "false", "yes", "no", "1", "0"].contains(&value.as_str())
            }
            "enum" => choices.iter().any(|c| c.eq_ignore_ascii_case(&value)),
            // The server parses numbers with their units itself.
            "integer" | "real" => value
                .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                .parse::<f64>()
                .is_ok(),
            _ => true,
        };
        ensure!(
            fits,
            "{name} = {value} is not a {kind} the server takes ({choices:?})"
        );
    }
    Ok(())
}

#[test]
fn the_access_lines_give_each_role_its_database_and_the_projector_no_physical_replication(
) -> Result<()> {
    let text = std::fs::read_to_string(deploy_dir().join("postgresql/pg_hba.conf"))?;
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    for role in [COMMAND_ROLE, PROJECTOR_ROLE] {
        let of_role: Vec<&Vec<&str>> = lines.iter().filter(|l| l.get(2) == Some(&role)).collect();
        ensure!(!of_role.is_empty(), "no pg_hba.conf line for {role}");
        for line in of_role {
            ensure!(
                line.len() == 5,
                "`{}`: type, database, user, address, method",
                line.join(" ")
            );
            ensure!(
                line[0] == "hostssl",
                "{role} connects without TLS: `{}`",
                line.join(" ")
            );
            ensure!(
                line[1] != "replication",
                "{role} gets physical replication: `{}`",
                line.join(" ")
            );
            ensure!(
                line[4] == "scram-sha-256",
                "{role} authenticates by {}",
                line[4]
            );
        }
    }
    Ok(())
}
