//! Reaching the Redis that holds the views, for both sides: the forms of
//! `REDIS_URL` (one Redis or a Redis Cluster) and clean-ups that cover every
//! node of a cluster.

use std::{fmt, str::FromStr, sync::Arc, time::Duration};

use fred::{
    error::Error,
    prelude::{Builder, Client, ClientLike, Config, KeysInterface, ReconnectPolicy, ServerConfig},
    types::{
        config::{TlsConfig, TlsConnector, TlsHostMapping},
        scan::Scanner,
        Key,
    },
};
use futures_util::{StreamExt, TryStreamExt};

/// What `REDIS_URL` accepts, for `--help` texts and errors.
pub const REDIS_URL_FORMS: &str = "redis://[user:password@]host[:port][/db] for one Redis; \
     redis-cluster://host:port[?node=host:port...] or a list host:port,host:port[,...] \
     (entries may be written redis://host:port) for a Redis Cluster; \
     rediss:// and rediss-cluster:// (or every entry of a list written rediss://host:port) for TLS";

/// A parsed `REDIS_URL`: one Redis, or the seed nodes of a Redis Cluster.
///
/// Forms: `redis://[user:password@]host[:port][/db]` (one Redis);
/// `redis-cluster://[user:password@]host:port[?node=host:port...]` (a
/// cluster, fred's own form); a comma-separated list of two or more nodes,
/// `host:port,host:port` or `redis://host:port,redis://host:port` (a cluster
/// seeded by those nodes). `valkey` schemes work as their `redis` twins.
/// TLS: `rediss://` (one Redis), `rediss-cluster://`, or a list whose every
/// entry is `rediss://host:port`; the certificate is checked against the
/// CAs given by [`RedisUrl::with_tls`], host name included.
#[derive(Clone)]
pub struct RedisUrl {
    text: String,
    config: Config,
    /// A TLS scheme was given.
    tls: bool,
    /// How TLS connections check the server (set at start from the CA file).
    tls_client: Option<Arc<rustls::ClientConfig>>,
}

/// A `REDIS_URL` that names no Redis this program can reach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisUrlError {
    #[error("REDIS_URL is empty; use {REDIS_URL_FORMS}")]
    Empty,
    #[error("{0:?} has no scheme: write redis://{0} for one Redis, or list every node (host:port,host:port) for a cluster")]
    NoScheme(String),
    #[error("{0:?}: unsupported scheme {1:?}; use {REDIS_URL_FORMS}")]
    Scheme(String, String),
    #[error(
        "the nodes of {0:?} mix TLS (rediss://) and plain entries; write every one the same way"
    )]
    MixedTls(String),
    #[error("{0:?}: a cluster has only database 0, so a cluster node names none")]
    Database(String),
    #[error("an empty entry in the list of nodes {0:?}")]
    EmptyNode(String),
    #[error("the nodes of {0:?} name different credentials; give them once, or the same on each")]
    Credentials(String),
    #[error("{0:?}: {1}")]
    Invalid(String, String),
}

impl RedisUrl {
    /// Parses any of the accepted forms (see the type's documentation).
    pub fn parse(text: &str) -> Result<Self, RedisUrlError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(RedisUrlError::Empty);
        }
        let (config, tls) = if trimmed.contains(',') {
            node_list(trimmed)?
        } else {
            single(trimmed)?
        };
        Ok(Self {
            text: trimmed.to_owned(),
            config,
            tls,
            tls_client: None,
        })
    }

    /// The client configuration (fred's), ready for `Builder::from_config`.
    pub fn config(&self) -> Config {
        let mut config = self.config.clone();
        // Always set here, so a TLS URL never connects in clear and never
        // with fred's own choice of roots.
        config.tls = self.tls.then(|| {
            let client = self.tls_client.clone().unwrap_or_else(mozilla_roots);
            TlsConfig {
                connector: TlsConnector::from((*client).clone()),
                // Cluster nodes are reached at the addresses the cluster
                // announces, and their certificates must name those.
                hostnames: TlsHostMapping::None,
            }
        });
        config
    }

    /// A TLS URL (`rediss://`, `rediss-cluster://`).
    pub fn uses_tls(&self) -> bool {
        self.tls
    }

    /// Checks servers' certificates with `client` (for TLS URLs; ignored otherwise).
    pub fn with_tls(mut self, client: Arc<rustls::ClientConfig>) -> Self {
        if self.tls {
            self.tls_client = Some(client);
        }
        self
    }

    /// How TLS connections check the server, once [`RedisUrl::with_tls`] set it.
    pub fn tls_client(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls_client.clone()
    }

    /// A Redis Cluster, not one Redis.
    pub fn is_clustered(&self) -> bool {
        self.config.server.is_clustered()
    }

    /// The node (one Redis) or the seed nodes (a cluster), as host and port.
    pub fn nodes(&self) -> Vec<(String, u16)> {
        self.config
            .server
            .hosts()
            .into_iter()
            .map(|s| (s.host.to_string(), s.port))
            .collect()
    }

    /// The text as given, credentials included (to hand it to another
    /// process; never log it).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for RedisUrl {
    type Err = RedisUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The text with any password hidden, so that it may be logged.
impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redacted(&self.text))
    }
}

/// Like `Display`: settings are printed with `{:?}`, and must not show a password.
impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

/// How long a reader waits for a Redis reply or connection attempt unless
/// told otherwise (the query API's `QUERY_REDIS_TIMEOUT_MS`).
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 500;

/// A client that reads the views as the query API does (not connected yet):
/// `timeout` bounds each command and connection attempt, a failed first
/// connection is retried rather than final, and reconnections back off.
/// The benchmark's one-round-trip ceiling uses it too, so both read alike.
pub fn read_client(url: &RedisUrl, timeout: Duration) -> Result<Client, Error> {
    let mut config = url.config();
    // fred's default gives up on a failed first connection for good: a
    // reader started before Redis would never serve.
    config.fail_fast = false;
    Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = timeout;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .build()
}

/// Certificates checked against Mozilla's roots, host name included: what a
/// TLS URL uses until [`RedisUrl::with_tls`] names other CAs.
fn mozilla_roots() -> Arc<rustls::ClientConfig> {
    install_ring();
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Makes ring the process's crypto provider, as
/// `service::tls::install_crypto_provider` does at the start of each
/// program: fred builds a TLS client while it parses a `rediss://` URL, and
/// rustls panics there if no provider was chosen and the build has two.
fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What a scheme fred connects with means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scheme {
    cluster: bool,
    tls: bool,
}

/// Checks the scheme of `part` (which has one): whether it names a cluster,
/// and TLS.
fn checked_scheme(part: &str, scheme: &str) -> Result<Scheme, RedisUrlError> {
    let (cluster, tls) = match scheme.to_ascii_lowercase().as_str() {
        "redis" | "valkey" => (false, false),
        "redis-cluster" | "valkey-cluster" => (true, false),
        "rediss" | "valkeys" => (false, true),
        "rediss-cluster" | "valkeys-cluster" => (true, true),
        _ => return Err(RedisUrlError::Scheme(redacted(part), scheme.to_owned())),
    };
    if tls {
        install_ring();
    }
    Ok(Scheme { cluster, tls })
}

/// `scheme://…`: one Redis, or a cluster by its scheme; and whether over TLS.
fn single(text: &str) -> Result<(Config, bool), RedisUrlError> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(RedisUrlError::NoScheme(redacted(text)));
    };
    let invalid = |err: Error| RedisUrlError::Invalid(redacted(text), err.details().to_owned());
    let scheme = checked_scheme(text, scheme)?;
    let config = if scheme.cluster {
        if names_database(rest) {
            return Err(RedisUrlError::Database(redacted(text)));
        }
        Config::from_url_clustered(text).map_err(invalid)?
    } else {
        Config::from_url_centralized(text).map_err(invalid)?
    };
    Ok((config, scheme.tls))
}

/// `host:port,host:port,…` (entries may carry a scheme): a cluster seeded by
/// every node listed; and whether over TLS (every entry `rediss://`).
fn node_list(text: &str) -> Result<(Config, bool), RedisUrlError> {
    let mut hosts = Vec::new();
    let mut credentials: Option<(Option<String>, Option<String>)> = None;
    let mut tls: Option<bool> = None;
    for part in text.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(RedisUrlError::EmptyNode(redacted(text)));
        }
        let (url, secure) = match part.split_once("://") {
            Some((scheme, _)) => (part.to_owned(), checked_scheme(part, scheme)?.tls),
            None => (format!("redis://{part}"), false),
        };
        if *tls.get_or_insert(secure) != secure {
            return Err(RedisUrlError::MixedTls(redacted(text)));
        }
        let rest = url.split_once("://").map_or("", |(_, rest)| rest);
        if names_database(rest) {
            return Err(RedisUrlError::Database(redacted(part)));
        }
        // fred's parser for each node: host, port and credentials as fred reads them.
        let node = Config::from_url_clustered(&url)
            .map_err(|err| RedisUrlError::Invalid(redacted(part), err.details().to_owned()))?;
        let given = (node.username.clone(), node.password.clone());
        if given != (None, None) {
            match &credentials {
                Some(known) if *known != given => {
                    return Err(RedisUrlError::Credentials(redacted(text)))
                }
                _ => credentials = Some(given),
            }
        }
        for host in node.server.hosts() {
            if !hosts
                .iter()
                .any(|h: &(String, u16)| h.0 == *host.host && h.1 == host.port)
            {
                hosts.push((host.host.to_string(), host.port));
            }
        }
    }
    let (username, password) = credentials.unwrap_or_default();
    let config = Config {
        server: ServerConfig::new_clustered(hosts),
        username,
        password,
        ..Config::default()
    };
    Ok((config, tls.unwrap_or(false)))
}

/// The part after `scheme://` has a path naming a database other than 0.
fn names_database(rest: &str) -> bool {
    let before_query = rest.split('?').next().unwrap_or(rest);
    match before_query.split_once('/') {
        Some((_, path)) => !path.is_empty() && path != "0",
        None => false,
    }
}

/// `text` (a URL or a list of them) with every password replaced by `***`.
fn redacted(text: &str) -> String {
    text.split(',')
        .map(redacted_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redacted_one(part: &str) -> String {
    let Some((scheme, rest)) = part.split_once("://") else {
        return part.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or("");
            let hidden = if user.is_empty() {
                ":***".to_owned()
            } else {
                format!("{user}:***")
            };
            format!("{scheme}://{hidden}@{host}{}", &rest[authority_end..])
        }
        None => part.to_owned(),
    }
}

/// Deletes the keys matching `pattern` that `keep` does not claim, on every
/// primary of a cluster or on the one Redis, a page of SCAN at a time;
/// returns how many it deleted.
pub async fn delete_matching(
    client: &Client,
    pattern: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<u64, Error> {
    // fred's cluster scan runs SCAN on every primary (it follows the slot
    // map), where a plain SCAN reaches one node of a cluster.
    let mut pages = if client.is_clustered() {
        client.scan_cluster(pattern, Some(1000), None).boxed()
    } else {
        client.scan(pattern, Some(1000), None).boxed()
    };
    let mut deleted = 0;
    while let Some(mut page) = pages.try_next().await? {
        let doomed: Vec<Key> = page
            .take_results()
            .unwrap_or_default()
            .into_iter()
            .filter(|key| !key.as_str().is_some_and(&keep))
            .collect();
        if !doomed.is_empty() {
            // One UNLINK per key: a page spans hash slots, and a UNLINK of
            // several keys in different slots fails in a cluster (CROSSSLOT).
            let pipe = client.pipeline();
            for key in doomed {
                pipe.unlink::<(), _>(key).await?;
            }
            let unlinked: Vec<u64> = pipe.all().await?;
            deleted += unlinked.iter().sum::<u64>();
        }
        page.next();
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> RedisUrl {
        RedisUrl::parse(text).unwrap_or_else(|err| panic!("{text:?}: {err}"))
    }

    #[test]
    fn a_redis_url_names_one_redis() {
        let url = parsed("redis://127.0.0.1:56379");
        assert!(!url.is_clustered());
        assert_eq!(url.nodes(), vec![("127.0.0.1".to_owned(), 56379)]);

        let url = parsed("redis://user:secret@cache.internal/3");
        assert!(!url.is_clustered());
        assert_eq!(url.nodes(), vec![("cache.internal".to_owned(), 6379)]);
        assert_eq!(url.config().database, Some(3));
        assert_eq!(url.config().username.as_deref(), Some("user"));
        assert_eq!(url.config().password.as_deref(), Some("secret"));
        assert_eq!(url.as_str(), "redis://user:secret@cache.internal/3");
    }

    #[test]
    fn a_cluster_url_names_its_seed_nodes() {
        let url = parsed("redis-cluster://h1:7000?node=h2:7001&node=h3:7002");
        assert!(url.is_clustered());
        let mut nodes = url.nodes();
        nodes.sort();
        assert_eq!(
            nodes,
            vec![
                ("h1".to_owned(), 7000),
                ("h2".to_owned(), 7001),
                ("h3".to_owned(), 7002)
            ]
        );
        assert!(parsed("valkey-cluster://h1:7000").is_clustered());
        assert!(parsed("redis-cluster://h1:7000/0").is_clustered());
    }

    #[test]
    fn a_list_of_nodes_is_a_cluster_seeded_by_every_node() {
        for text in [
            "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002",
            " 127.0.0.1:7000 , redis://127.0.0.1:7001,redis-cluster://127.0.0.1:7002",
            "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7000",
        ] {
            let url = parsed(text);
            assert!(url.is_clustered(), "{text}");
            assert_eq!(
                url.nodes(),
                vec![
                    ("127.0.0.1".to_owned(), 7000),
                    ("127.0.0.1".to_owned(), 7001),
                    ("127.0.0.1".to_owned(), 7002)
                ],
                "{text}"
            );
        }
        let url = parsed("redis://:pw@h1:7000,h2:7001");
        assert_eq!(url.config().password.as_deref(), Some("pw"));
        assert_eq!(url.nodes().len(), 2);
    }

    #[test]
    fn what_names_no_reachable_redis_is_refused_with_the_reason() {
        let err = |text: &str| match RedisUrl::parse(text) {
            Ok(url) => panic!("{text:?} parsed as {url:?}"),
            Err(err) => err,
        };
        assert_eq!(err("  "), RedisUrlError::Empty);
        assert!(matches!(err("127.0.0.1:6379"), RedisUrlError::NoScheme(_)));
        assert!(matches!(
            err("http://127.0.0.1:6379"),
            RedisUrlError::Scheme(..)
        ));
        assert!(matches!(
            err("redis-sentinel://h:26379"),
            RedisUrlError::Scheme(..)
        ));
        assert!(matches!(
            err("h1:7000,rediss://h2:7001"),
            RedisUrlError::MixedTls(_)
        ));
        assert!(matches!(
            err("h1:7000,,h2:7001"),
            RedisUrlError::EmptyNode(_)
        ));
        assert!(matches!(err("h1:7000,"), RedisUrlError::EmptyNode(_)));
        assert!(matches!(
            err("h1:7000,h2:7001/2"),
            RedisUrlError::Database(_)
        ));
        assert!(matches!(
            err("redis-cluster://h1:7000/1"),
            RedisUrlError::Database(_)
        ));
        assert!(matches!(
            err("redis://a:x@h1:7000,redis://a:y@h2:7001"),
            RedisUrlError::Credentials(_)
        ));
        assert!(matches!(
            err("h1:notaport,h2:7001"),
            RedisUrlError::Invalid(..)
        ));
        assert!(matches!(
            err("redis://h1:99999"),
            RedisUrlError::Invalid(..)
        ));
        assert!(matches!(err("redis://"), RedisUrlError::Invalid(..)));
    }

    #[test]
    fn rediss_schemes_select_tls_for_one_redis_and_for_a_cluster() {
        let one = parsed("rediss://user:secret@cache.internal:6380");
        assert!(one.uses_tls() && !one.is_clustered());
        assert!(one.config().tls.is_some());
        let cluster = parsed("rediss-cluster://h1:7000?node=h2:7001");
        assert!(cluster.uses_tls() && cluster.is_clustered());
        let list = parsed("rediss://h1:7000,rediss://h2:7001");
        assert!(list.uses_tls() && list.is_clustered());
        assert!(list.config().tls.is_some());
        for plain in ["redis://h:1", "redis-cluster://h:1", "h1:1,h2:2"] {
            let url = parsed(plain);
            assert!(!url.uses_tls() && url.config().tls.is_none(), "{plain}");
        }
    }

    #[test]
    fn passwords_are_never_shown() {
        let url = parsed("redis://user:secret@h1:7000,redis://user:secret@h2:7001");
        assert_eq!(
            url.to_string(),
            "redis://user:***@h1:7000,redis://user:***@h2:7001"
        );
        let err = RedisUrl::parse("redis://:secret@h1:1,redis://:other@h2:2").err();
        assert!(err.is_some_and(|e| !e.to_string().contains("secret")));
        assert!(!format!("{url:?}").contains("secret"));
        let err = RedisUrl::parse("rediss://user:secret@h:6380,redis://h2:1").err();
        assert!(err.is_some_and(|e| !e.to_string().contains("secret")));
        assert_eq!(parsed("redis://h:1/2").to_string(), "redis://h:1/2");
    }
}
