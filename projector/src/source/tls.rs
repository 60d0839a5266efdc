//! TLS to PostgreSQL as `DATABASE_URL` asks for it (`sslmode`, `sslrootcert`,
//! as libpq reads them), for both of the projector's connection kinds: the
//! ordinary ones (tokio-postgres) and the replication one (pgwire-replication).
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, so the two
//! parameters are read here and taken out of the URL before it sees it.

use std::{path::PathBuf, str::FromStr, sync::Arc};

use anyhow::Context;
use service::tls::Verify;

/// libpq's `sslmode`; `prefer` when the URL names none (libpq's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(match text {
            // libpq's `allow` tries plain first; TLS when offered is no worse.
            "disable" | "allow" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => anyhow::bail!(
                "DATABASE_URL: sslmode={other:?} is none of disable, prefer, require, verify-ca, verify-full"
            ),
        })
    }
}

/// `DATABASE_URL` split into its TLS parameters and the rest.
#[derive(Debug, Clone)]
pub(crate) struct DatabaseUrl {
    /// The URL without `sslmode` and `sslrootcert`.
    config: tokio_postgres::Config,
    mode: SslMode,
    root_cert: Option<PathBuf>,
}

impl DatabaseUrl {
    /// Reads a `postgres://` URL (or libpq's `key=value` form).
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        let mut mode = None;
        let mut root_cert = None;
        let mut take = |key: &str, value: &str| -> anyhow::Result<bool> {
            match key {
                "sslmode" => mode = Some(SslMode::parse(value)?),
                "sslrootcert" => root_cert = Some(PathBuf::from(value)),
                _ => return Ok(false),
            }
            Ok(true)
        };
        let rest = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let mut url = url::Url::parse(text).context("parsing DATABASE_URL")?;
            let mut kept = Vec::new();
            for (key, value) in url.query_pairs() {
                if !take(&key, &value)? {
                    kept.push((key.into_owned(), value.into_owned()));
                }
            }
            if kept.is_empty() {
                url.set_query(None);
            } else {
                url.query_pairs_mut().clear().extend_pairs(kept);
            }
            url.to_string()
        } else {
            // `key=value` pairs; values with spaces (quoted) are left to
            // tokio-postgres untouched unless they are these two.
            let mut kept = Vec::new();
            for word in text.split_whitespace() {
                let taken = match word.split_once('=') {
                    Some((key, value)) => take(key, value.trim_matches('\''))?,
                    None => false,
                };
                if !taken {
                    kept.push(word);
                }
            }
            kept.join(" ")
        };
        let mut config = tokio_postgres::Config::from_str(&rest).context("parsing DATABASE_URL")?;
        let mode = mode.unwrap_or(SslMode::Prefer);
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(Self {
            config,
            mode,
            root_cert,
        })
    }

    /// The connection settings, TLS parameters taken out.
    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// What the server's certificate is checked against. As in libpq,
    /// `require` with a root certificate checks the chain like `verify-ca`.
    fn verify(&self) -> Verify {
        match (self.mode, &self.root_cert) {
            (SslMode::VerifyFull, _) => Verify::Full,
            (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => Verify::Chain,
            _ => Verify::Nothing,
        }
    }

    /// Whether connections check the server's certificate (so that a
    /// failed check is a setting to fix, not an outage to wait out).
    pub(crate) fn verifies(&self) -> bool {
        self.verify() != Verify::Nothing
    }

    /// The TLS connector for tokio-postgres.
    pub(crate) fn connector(&self) -> anyhow::Result<tokio_postgres_rustls::MakeRustlsConnect> {
        let client = service::tls::client_config(self.root_cert.as_deref(), self.verify())
            .context("DATABASE_URL: sslrootcert")?;
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(
            Arc::unwrap_or_clone(client),
        ))
    }

    /// The same TLS settings for the replication connection to `host`.
    pub(crate) fn replication_tls(&self, host: &str) -> pgwire_replication::TlsConfig {
        use pgwire_replication::TlsConfig;
        let root = self.root_cert.clone();
        match self.verify() {
            // The name checked is the host's, an IP address included (pgwire
            // refuses an IP literal unless it is given as the name to check).
            Verify::Full => TlsConfig::verify_full(root).with_sni_hostname(host),
            Verify::Chain => TlsConfig::verify_ca(root),
            Verify::Nothing => match self.mode {
                SslMode::Disable => TlsConfig::disabled(),
                SslMode::Prefer => TlsConfig {
                    mode: pgwire_replication::SslMode::Prefer,
                    ..TlsConfig::disabled()
                },
                _ => TlsConfig::require(),
            },
        }
    }

    /// `host:port` of the first host, for messages.
    pub(crate) fn address(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.to_string_lossy().into_owned(),
            None => "localhost".to_owned(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_read_and_taken_out_of_the_url() {
        let url = DatabaseUrl::parse(
            "postgres://app:pw@db.internal:5433/courses?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x",
        )
        .expect("parses");
        assert_eq!(url.mode, SslMode::VerifyFull);
        assert_eq!(url.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(url.verify(), Verify::Full);
        assert_eq!(url.config().get_application_name(), Some("x"));
        assert_eq!(url.config().get_dbname(), Some("courses"));
        assert_eq!(url.address(), "db.internal:5433");

        let kv =
            DatabaseUrl::parse("host=db port=5433 user=app sslmode=verify-ca sslrootcert=/ca.pem")
                .expect("parses");
        assert_eq!(kv.verify(), Verify::Chain);
        assert_eq!(kv.config().get_user(), Some("app"));
    }

    #[test]
    fn modes_check_what_libpq_checks() {
        let verify = |query: &str| {
            DatabaseUrl::parse(&format!("postgres://h/db{query}"))
                .expect("parses")
                .verify()
        };
        assert_eq!(verify(""), Verify::Nothing);
        assert_eq!(verify("?sslmode=disable"), Verify::Nothing);
        assert_eq!(verify("?sslmode=require"), Verify::Nothing);
        assert_eq!(
            verify("?sslmode=require&sslrootcert=/ca.pem"),
            Verify::Chain
        );
        assert_eq!(verify("?sslmode=verify-ca"), Verify::Chain);
        assert_eq!(verify("?sslmode=verify-full"), Verify::Full);
        assert!(DatabaseUrl::parse("postgres://h/db?sslmode=strict").is_err());
    }
}
