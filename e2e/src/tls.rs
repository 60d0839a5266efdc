//! TLS fixtures made by the test itself: a CA and server certificates
//! (`openssl` on the command line), and a short-lived PostgreSQL of the
//! test's own with `ssl=on` (the shared one runs without TLS, and other tests
//! use it meanwhile). Removed on drop.
//!
//! Needs `openssl` and the Debian PostgreSQL binaries (the local stack
//! installs them).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{programs::free_port, unique_name};

/// Runs `program args…`, failing with its output when it fails.
fn run(command: &mut Command) -> Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// A certificate authority of the test's own, in a directory of its own.
pub struct Ca {
    dir: PathBuf,
    name: String,
}

/// A server's certificate and key, signed by a [`Ca`].
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    /// A fresh CA (EC P-256, valid two days) called `name`.
    pub fn new(name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(unique_name(&format!("ca_{name}")));
        std::fs::create_dir_all(&dir)?;
        let ca = Ca {
            dir,
            name: name.to_owned(),
        };
        run(Command::new("openssl")
            .args(["req", "-x509", "-new", "-nodes", "-days", "2"])
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
            .args(["-subj", &format!("/CN={name} test CA")])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(ca.dir.join("ca.key"))
            .arg("-out")
            .arg(ca.cert()))?;
        Ok(ca)
    }

    /// The CA's certificate (PEM): what a client is given to trust.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate naming `names` (DNS names, or IP addresses).
    pub fn issue(&self, file: &str, names: &[&str]) -> Result<ServerCert> {
        let key = self.dir.join(format!("{file}.key"));
        let csr = self.dir.join(format!("{file}.csr"));
        let cert = self.dir.join(format!("{file}.pem"));
        let ext = self.dir.join(format!("{file}.ext"));
        let alt = names
            .iter()
            .map(|n| {
                if n.parse::<std::net::IpAddr>().is_ok() {
                    format!("IP:{n}")
                } else {
                    format!("DNS:{n}")
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={alt}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )?;
        run(Command::new("openssl")
            .args(["req", "-new", "-nodes"])
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
            .args([
                "-subj",
                &format!("/CN={}", names.first().unwrap_or(&"server")),
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr))?;
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-set_serial"])
            .arg(format!(
                "{}",
                std::process::id() as u64 * 1000 + names.len() as u64
            ))
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(self.cert())
            .arg("-CAkey")
            .arg(self.dir.join("ca.key"))
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert))?;
        Ok(ServerCert { cert, key })
    }

    /// The CA's name, as given.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest Debian PostgreSQL's binaries (`/usr/lib/postgresql/<major>/bin`).
fn pg_bin() -> Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql (bash deploy/local.sh up installs PostgreSQL)")?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no initdb under /usr/lib/postgresql")
}

/// Whether this process runs as root (the server then runs as `postgres`).
fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `program args…` as the user the server runs as.
fn as_pg(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        // `postgres` may not enter the caller's working directory.
        command.current_dir("/");
        command
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL of the test's own with TLS on (`wal_level=logical`, trust
/// authentication on 127.0.0.1 as in the local stack), on a free port.
pub struct TlsPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl TlsPostgres {
    /// initdb, then starts with `server`'s certificate; waits until it answers.
    pub async fn start(server: &ServerCert) -> Result<Self> {
        let bin = pg_bin()?;
        let dir = PathBuf::from("/tmp").join(unique_name("tlspg"));
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let pg = TlsPostgres { dir, bin, port };
        // The server reads its key only when its own user owns it, 0600.
        std::fs::copy(&server.cert, pg.dir.join("server.pem"))?;
        std::fs::copy(&server.key, pg.dir.join("server.key"))?;
        std::fs::set_permissions(
            pg.dir.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&pg.dir))?;
        }
        run(as_pg(&pg.bin.join("initdb"))
            .arg("-D")
            .arg(pg.data())
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--locale=C",
            ]))?;
        let settings = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{dir}'\n\
             ssl = on\nssl_cert_file = '{dir}/server.pem'\nssl_key_file = '{dir}/server.key'\n\
             wal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\n\
             fsync = off\n",
            dir = pg.dir.display()
        );
        let conf = pg.data().join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap_or_default();
        text.push_str(&settings);
        std::fs::write(&conf, text)?;
        run(as_pg(&pg.bin.join("pg_ctl"))
            .arg("-D")
            .arg(pg.data())
            .arg("-l")
            .arg(pg.dir.join("server.log"))
            .args(["-w", "-t", "60", "start"]))?;
        pg.wait_ready().await?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A database URL as the administrative user, over `host`, with `query`
    /// (`sslmode=…&sslrootcert=…`) appended.
    pub fn url(&self, host: &str, database: &str, query: &str) -> String {
        format!(
            "postgres://postgres@{host}:{}/{database}?{query}",
            self.port
        )
    }

    /// A plain connection over the Unix socket (checks and set-up).
    pub async fn admin(&self, database: &str) -> Result<tokio_postgres::Client> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.dir)
            .port(self.port)
            .user("postgres")
            .dbname(database);
        let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.admin("postgres").await {
                Ok(_) => return Ok(()),
                Err(err) if Instant::now() > deadline => {
                    bail!(
                        "the TLS PostgreSQL did not answer in 30 s: {err:#}\n{}",
                        self.log()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_pg(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
