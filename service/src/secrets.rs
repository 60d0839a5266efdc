//! Secret-bearing settings (`DATABASE_URL`, `ADMIN_TOKEN`; `REDIS_URL` in
//! `views`): each with a `_FILE` twin read once at start, the systemd
//! credentials and Kubernetes convention, and never shown by `--help`,
//! `Debug` or a log line.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use axum::http::HeaderValue;
use subtle::ConstantTimeEq;

/// A secret setting that could not be taken from its file.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read (its content is never quoted).
    #[error("{setting}_FILE: cannot read {}: {cause}", path.display())]
    Unreadable {
        setting: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The file holds no UTF-8 text.
    #[error("{setting}_FILE: {} is not UTF-8 text", path.display())]
    NotText {
        setting: &'static str,
        path: PathBuf,
    },
}

/// The secret in `path`, one trailing newline (`\n` or `\r\n`) trimmed.
/// `setting` (`DATABASE_URL`...) names it in errors.
pub fn read_secret_file(setting: &'static str, path: &Path) -> Result<String, SecretError> {
    let bytes = std::fs::read(path).map_err(|cause| SecretError::Unreadable {
        setting,
        path: path.to_owned(),
        cause,
    })?;
    let mut text = String::from_utf8(bytes).map_err(|_| SecretError::NotText {
        setting,
        path: path.to_owned(),
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// The local stack's database: where a program connects unless told otherwise.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:55432/courses";

/// `DATABASE_URL` and its file twin; flattened into the settings of every
/// program that reaches PostgreSQL.
#[derive(clap::Args, Clone)]
pub struct Database {
    /// PostgreSQL connection URL (the projector's role needs REPLICATION and SELECT on the published tables).
    #[arg(
        id = "database_url",
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub url: String,

    /// File holding the PostgreSQL connection URL, read once at start (a trailing newline is trimmed); instead of DATABASE_URL.
    #[arg(
        id = "database_url_file",
        long = "database-url-file",
        env = "DATABASE_URL_FILE",
        value_name = "FILE",
        conflicts_with = "database_url"
    )]
    pub file: Option<PathBuf>,
}

impl Database {
    /// The given URL, for tests and tools.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            file: None,
        }
    }

    /// Reads the file twin, if one is named, into `url`; call once at
    /// start (clap refuses the value and its file together).
    pub fn load(&mut self) -> Result<(), SecretError> {
        if let Some(path) = self.file.take() {
            self.url = read_secret_file("DATABASE_URL", &path)?;
        }
        Ok(())
    }

    /// Where the URL points, without its password: `user@host:port/db`,
    /// for log lines and errors.
    pub fn redacted(&self) -> String {
        redacted_url(&self.url)
    }
}

/// Never the password: settings may be printed with `{:?}`.
impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.redacted())
            .field("file", &self.file)
            .finish()
    }
}

/// Where a PostgreSQL connection string points, for log lines and errors:
/// a URL with its password replaced by `***` and no password parameter; of
/// the `key=value` form, only `host`, `hostaddr`, `port`, `user` and
/// `dbname`. Anything else (a file holding something other than a URL) is
/// not shown at all.
pub fn redacted_url(text: &str) -> String {
    const NOT_SHOWN: &str = "(not a connection URL; not shown)";
    let text = text.trim();
    let Some((scheme, rest)) = text.split_once("://") else {
        let kept: Vec<&str> = text
            .split_whitespace()
            .filter(|pair| {
                pair.split_once('=').is_some_and(|(key, _)| {
                    matches!(key, "host" | "hostaddr" | "port" | "user" | "dbname")
                })
            })
            .collect();
        return if kept.is_empty() {
            NOT_SHOWN.to_owned()
        } else {
            kept.join(" ")
        };
    };
    let plain_scheme = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !plain_scheme || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return NOT_SHOWN.to_owned();
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _password)) => format!("{name}:***@{host}"),
            None => format!("{user}@{host}"),
        },
        None => authority.to_owned(),
    };
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.to_ascii_lowercase().contains("password"))
        .collect();
    if kept.is_empty() {
        format!("{scheme}://{authority}{path}")
    } else {
        format!("{scheme}://{authority}{path}?{}", kept.join("&"))
    }
}

/// `ADMIN_TOKEN` and its file twin; flattened into every program's settings.
#[derive(clap::Args, Clone, Default)]
pub struct AdminToken {
    /// Bearer token guarding `/v1/ops/*` (off, answering 401, when unset) and the command API's back-office writes (open when unset: development mode, warned about at start).
    #[arg(
        id = "admin_token",
        long = "admin-token",
        env = "ADMIN_TOKEN",
        value_name = "ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// File holding the admin token, read once at start (a trailing newline is trimmed); instead of ADMIN_TOKEN.
    #[arg(
        id = "admin_token_file",
        long = "admin-token-file",
        env = "ADMIN_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "admin_token"
    )]
    pub file: Option<PathBuf>,
}

impl AdminToken {
    /// The given token (for tests and tools).
    pub fn new(token: Option<&str>) -> Self {
        Self {
            token: token.map(str::to_owned),
            file: None,
        }
    }

    /// Reads the file twin, if one is named, into the token; call once at start.
    pub fn load(&mut self) -> Result<(), SecretError> {
        if let Some(path) = self.file.take() {
            self.token = Some(read_secret_file("ADMIN_TOKEN", &path)?);
        }
        Ok(())
    }

    /// The token, if one is configured; an empty value counts as none.
    pub fn configured(&self) -> Option<&str> {
        self.token.as_deref().filter(|token| !token.is_empty())
    }

    /// Whether a request with this `Authorization` header may use an
    /// `/v1/ops/*` route: it carries the configured token (with none
    /// configured, those routes are off).
    pub fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        self.configured()
            .is_some_and(|expected| bearer_matches(authorization, expected))
    }
}

/// Never the token.
impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = self.token.as_ref().map(|_| "***");
        f.debug_struct("AdminToken")
            .field("token", &token)
            .field("file", &self.file)
            .finish()
    }
}

/// Whether an `Authorization` value is `Bearer <expected>`. Compared in
/// time that depends on the lengths only, so a token cannot be guessed
/// byte by byte.
pub fn bearer_matches(authorization: Option<&HeaderValue>, expected: &str) -> bool {
    authorization
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|token| token.ct_eq(expected.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn matches(authorization: &'static str, expected: &str) -> bool {
        bearer_matches(Some(&HeaderValue::from_static(authorization)), expected)
    }

    #[test]
    fn tokens_match_only_when_every_byte_matches() {
        assert!(matches("Bearer s3cret", "s3cret"));
        assert!(!matches("Bearer s3creT", "s3cret"));
        assert!(!matches("Bearer s3cre", "s3cret"));
        assert!(!matches("Bearer s3crets", "s3cret"));
        assert!(!matches("Bearer ", "x"));
    }

    #[test]
    fn a_missing_header_or_another_scheme_never_matches() {
        assert!(!bearer_matches(None, "s3cret"));
        assert!(!matches("s3cret", "s3cret"));
        assert!(!matches("Basic s3cret", "s3cret"));
    }

    #[test]
    fn without_a_configured_token_nothing_is_admitted() {
        let header = HeaderValue::from_static("Bearer ");
        assert!(!AdminToken::new(None).admits(Some(&header)));
        assert!(!AdminToken::new(Some("")).admits(Some(&header)));
        assert!(AdminToken::new(Some("t")).admits(Some(&HeaderValue::from_static("Bearer t"))));
    }

    fn file_holding(text: &str) -> (PathBuf, impl Drop) {
        struct Remove(PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let path = std::env::temp_dir().join(format!(
            "secret-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        let mut file = std::fs::File::create(&path).expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        (path.clone(), Remove(path))
    }

    #[test]
    fn a_secret_file_loses_one_trailing_newline_only() {
        let (path, _remove) = file_holding("s3cret\n");
        assert_eq!(
            read_secret_file("ADMIN_TOKEN", &path).expect("read"),
            "s3cret"
        );
        let (path, _remove) = file_holding("s3cret\r\n");
        assert_eq!(
            read_secret_file("ADMIN_TOKEN", &path).expect("read"),
            "s3cret"
        );
        let (path, _remove) = file_holding(" s3cret \n\n");
        assert_eq!(
            read_secret_file("ADMIN_TOKEN", &path).expect("read"),
            " s3cret \n"
        );
    }

    #[derive(clap::Parser)]
    struct Settings {
        #[command(flatten)]
        database: Database,
        #[command(flatten)]
        admin: AdminToken,
    }

    #[test]
    fn a_value_and_its_file_together_are_refused_but_a_default_gives_way() {
        use clap::Parser;
        let (path, _remove) = file_holding("postgres://u:pw@h/db\n");
        let path = path.to_str().expect("utf-8 path");
        let err = Settings::try_parse_from([
            "x",
            "--database-url",
            "postgres://h/d",
            "--database-url-file",
            path,
        ])
        .err()
        .expect("both given")
        .to_string();
        assert!(err.contains("--database-url-file"), "{err}");
        let mut settings = Settings::try_parse_from(["x", "--database-url-file", path])
            .expect("the default gives way");
        settings.database.load().expect("readable");
        assert_eq!(settings.database.url, "postgres://u:pw@h/db");
        assert!(
            Settings::try_parse_from(["x", "--admin-token", "t", "--admin-token-file", path])
                .is_err()
        );
    }

    #[test]
    fn an_unreadable_file_is_named_without_its_content() {
        let mut token = AdminToken::new(None);
        token.file = Some(PathBuf::from("/nonexistent/admin-token"));
        let err = token.load().expect_err("no such file").to_string();
        assert!(err.contains("ADMIN_TOKEN_FILE"), "{err}");
        assert!(err.contains("/nonexistent/admin-token"), "{err}");
    }

    #[test]
    fn redacted_urls_keep_the_user_and_host_only() {
        assert_eq!(
            redacted_url("postgres://app:pa55@db.example:5432/courses?sslmode=require"),
            "postgres://app:***@db.example:5432/courses?sslmode=require"
        );
        assert_eq!(
            redacted_url("postgres://app@db:5432/courses?password=pa55&sslmode=disable"),
            "postgres://app@db:5432/courses?sslmode=disable"
        );
        assert_eq!(
            redacted_url("postgres://db/courses"),
            "postgres://db/courses"
        );
        assert_eq!(
            redacted_url("host=db port=5432 user=app password=pa55 dbname=courses"),
            "host=db port=5432 user=app dbname=courses"
        );
        // A file holding something else is not echoed.
        assert!(!redacted_url("root:pa55:20228:0:99999:7:::\ndaemon:*").contains("pa55"));
        assert!(!redacted_url("pa55").contains("pa55"));
        assert!(!redacted_url("x://a b pa55").contains("pa55"));
        assert!(!format!("{:?}", Database::new("postgres://a:pa55@h/d")).contains("pa55"));
        assert!(!format!("{:?}", AdminToken::new(Some("pa55"))).contains("pa55"));
    }
}
