//! The settings both sides of the read model take, declared once: where the
//! Redis holding the views is (`REDIS_URL`, or `REDIS_URL_FILE` naming a
//! file that holds it) and the namespace of the keys.

use std::{ffi::OsStr, path::PathBuf};

use clap::{builder::TypedValueParser, error::ErrorKind};

use crate::{RedisUrl, RedisUrlError, DEFAULT_KEY_PREFIX};

/// The local stack's Redis: where a program connects unless told otherwise.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:56379";

/// Where the views are; flattened into the projector's and the query API's
/// settings.
#[derive(clap::Args, Clone, Debug)]
pub struct RedisSettings {
    /// Redis: `redis://[user:password@]host:port[/db]` for one Redis; `redis-cluster://host:port` or a list of nodes `host:port,host:port` for a Redis Cluster.
    #[arg(
        id = "redis_url",
        long = "redis-url",
        env = "REDIS_URL",
        value_name = "REDIS_URL",
        default_value = DEFAULT_REDIS_URL,
        hide_env_values = true,
        value_parser = RedisUrlParser
    )]
    pub url: RedisUrl,

    /// File holding the Redis URL, read once at start (a trailing newline is trimmed); instead of REDIS_URL.
    #[arg(
        id = "redis_url_file",
        long = "redis-url-file",
        env = "REDIS_URL_FILE",
        value_name = "FILE",
        conflicts_with = "redis_url"
    )]
    pub url_file: Option<PathBuf>,

    /// PEM file of the CAs that sign the Redis servers' certificates, for `rediss://` URLs (default: Mozilla's roots).
    #[arg(long = "redis-ca-file", env = "REDIS_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// Namespace of every Redis key; the projector and the query APIs reading its views must agree.
    #[arg(long, env = "KEY_PREFIX", default_value = DEFAULT_KEY_PREFIX)]
    pub key_prefix: String,
}

/// `REDIS_URL_FILE` named a file that could not be read or holds no Redis URL.
#[derive(Debug, thiserror::Error)]
pub enum RedisSettingsError {
    #[error(transparent)]
    File(#[from] service::SecretError),
    /// What is wrong, never the file's content: a file named by mistake
    /// may hold another secret.
    #[error("REDIS_URL_FILE: {} holds no Redis URL this program takes: {why}", path.display())]
    Url { path: PathBuf, why: &'static str },
    #[error("REDIS_CA_FILE: {0}")]
    Tls(#[from] service::tls::TlsSetupError),
}

impl RedisSettings {
    /// The given Redis and key prefix (tests and tools).
    pub fn new(url: RedisUrl, key_prefix: &str) -> Self {
        Self {
            url,
            url_file: None,
            ca_file: None,
            key_prefix: key_prefix.to_owned(),
        }
    }

    /// Reads the file twin, if one is named, into `url`, and makes a
    /// `rediss://` URL check certificates against `ca_file`; call once at
    /// start (clap refuses the URL and its file together).
    pub fn load(&mut self) -> Result<(), RedisSettingsError> {
        if let Some(path) = self.url_file.take() {
            let text = service::read_secret_file("REDIS_URL", &path)?;
            self.url = RedisUrl::parse(&text).map_err(|err| RedisSettingsError::Url {
                why: problem(&err),
                path,
            })?;
        }
        if self.url.uses_tls() {
            let client =
                service::tls::client_config(self.ca_file.as_deref(), service::tls::Verify::Full)?;
            self.url = self.url.clone().with_tls(client);
        }
        Ok(())
    }
}

/// What `err` says, without the text it quotes.
fn problem(err: &RedisUrlError) -> &'static str {
    match err {
        RedisUrlError::Empty => "it is empty",
        RedisUrlError::NoScheme(_) => "no scheme (redis://, redis-cluster://)",
        RedisUrlError::Scheme(..) => "an unsupported scheme",
        RedisUrlError::MixedTls(_) => "its nodes mix TLS (rediss://) and plain entries",
        RedisUrlError::Database(_) => "a cluster node names a database (a cluster has only 0)",
        RedisUrlError::EmptyNode(_) => "an empty entry in its list of nodes",
        RedisUrlError::Credentials(_) => "its nodes name different credentials",
        RedisUrlError::Invalid(..) => "a malformed URL",
    }
}

/// Parses `REDIS_URL` for clap without quoting the value in its error, as
/// clap's own parsers do: it may hold a password. `RedisUrlError` shows it
/// with the password hidden.
#[derive(Clone, Copy)]
struct RedisUrlParser;

impl TypedValueParser for RedisUrlParser {
    type Value = RedisUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<RedisUrl, clap::Error> {
        let name = arg.map_or_else(|| "--redis-url".to_owned(), ToString::to_string);
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(ErrorKind::InvalidUtf8, format!("{name} is not UTF-8\n")).with_cmd(cmd)
        })?;
        RedisUrl::parse(text).map_err(|err| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value for {name}: {err}\n"),
            )
            .with_cmd(cmd)
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Settings {
        #[command(flatten)]
        redis: RedisSettings,
    }

    #[test]
    fn a_bad_redis_url_is_refused_without_its_password() {
        let err = Settings::try_parse_from([
            "x",
            "--redis-url",
            "rediss://u:pa55word@h:6380,redis://h2:6381",
        ])
        .err()
        .expect("a list mixing TLS and plain nodes is refused")
        .to_string();
        assert!(err.contains("TLS"), "{err}");
        assert!(!err.contains("pa55word"), "{err}");
    }

    #[test]
    fn the_url_or_its_file_not_both() {
        let path = std::env::temp_dir().join(format!("redis-url-{}", std::process::id()));
        std::fs::write(&path, "redis://:pa55word@127.0.0.1:7000/2\n").expect("write");
        let file = path.to_str().expect("utf-8 path");
        let mut settings = Settings::try_parse_from(["x", "--redis-url-file", file])
            .expect("a default gives way to the file");
        settings.redis.load().expect("readable");
        assert_eq!(
            settings.redis.url.as_str(),
            "redis://:pa55word@127.0.0.1:7000/2"
        );
        assert!(Settings::try_parse_from([
            "x",
            "--redis-url",
            "redis://h",
            "--redis-url-file",
            file
        ])
        .is_err());
        std::fs::write(&path, "rediss://:pa55word@h1:1,redis://h2:2\n").expect("write");
        let mut settings =
            Settings::try_parse_from(["x", "--redis-url-file", file]).expect("parses");
        let err = settings
            .redis
            .load()
            .expect_err("a list mixing TLS and plain nodes is refused")
            .to_string();
        assert!(err.starts_with("REDIS_URL_FILE"), "{err}");
        assert!(err.contains("TLS"), "{err}");
        assert!(!err.contains("pa55word"), "{err}");
        std::fs::write(&path, "an-admin-token\n").expect("write");
        let mut settings =
            Settings::try_parse_from(["x", "--redis-url-file", file]).expect("parses");
        let err = settings.redis.load().expect_err("no scheme").to_string();
        assert!(!err.contains("an-admin-token"), "{err}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_tls_url_checks_certificates_against_the_ca_file() {
        let mut settings = Settings::try_parse_from(["x", "--redis-url", "rediss://h:6380"])
            .expect("a TLS URL parses");
        assert!(settings.redis.url.tls_client().is_none());
        settings
            .redis
            .load()
            .expect("Mozilla's roots without a CA file");
        assert!(settings.redis.url.tls_client().is_some());

        let mut settings = Settings::try_parse_from([
            "x",
            "--redis-url",
            "rediss://h:6380",
            "--redis-ca-file",
            "/nonexistent/ca.pem",
        ])
        .expect("parses");
        let err = settings.redis.load().expect_err("no CA file").to_string();
        assert!(err.starts_with("REDIS_CA_FILE"), "{err}");
    }
}
