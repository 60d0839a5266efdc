//! TLS to the dependencies (PostgreSQL, Redis), one way for every program:
//! rustls with the `ring` provider, trusting a CA file when one is given and
//! Mozilla's roots (`webpki-roots`) otherwise.

use std::{path::Path, sync::Arc, time::Duration};

use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Makes `ring` the process's crypto provider. Call it first thing in
/// `main` (and in tests that start programs in-process): every TLS client of
/// the process then uses it, whichever providers the build compiled in.
pub fn install_crypto_provider() {
    // Err means one is installed already (a second call, or a test harness).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What a dependency's certificate is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Chain and host name (libpq's `verify-full`, and `rediss://`).
    Full,
    /// Chain only, any host name (libpq's `verify-ca`).
    Chain,
    /// Nothing: encryption without authentication (libpq's `require` and
    /// `prefer` without a root certificate).
    Nothing,
}

/// Why no TLS client could be set up (a setting's fault, found at start).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("reading the CA file {path}: {cause}")]
    CaFile { path: String, cause: String },
    #[error("the CA file {0} holds no certificate")]
    NoCertificate(String),
    #[error("building the certificate verifier: {0}")]
    Verifier(String),
}

/// A client configuration checking certificates as `verify` says, against
/// the CAs of `ca_file` (PEM) or Mozilla's roots.
pub fn client_config(
    ca_file: Option<&Path>,
    verify: Verify,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    install_crypto_provider();
    let roots = Arc::new(roots(ca_file)?);
    let config = match verify {
        Verify::Full => ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        Verify::Chain => {
            let inner = WebPkiServerVerifier::builder(roots)
                .build()
                .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
            ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
        Verify::Nothing => ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider())))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    let Some(path) = ca_file else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    let shown = path.display().to_string();
    let unreadable = |cause: String| TlsSetupError::CaFile {
        path: shown.clone(),
        cause,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(e.to_string()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsSetupError::NoCertificate(shown));
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks the chain as the inner verifier does, and accepts a certificate
/// that only fails to name the host.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any certificate, still checking the handshake's signatures (the
/// peer holds the key of the certificate it sent).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a TLS handshake tried at start did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Nothing answered (or not in time): the dependency may just be down,
    /// which the programs ride out.
    #[error("{0}")]
    Unreachable(String),
    /// The peer answered and the handshake failed (a wrong CA, a certificate
    /// for another name, no TLS on that port): a setting to fix.
    #[error("{0}")]
    Refused(String),
}

/// One TCP connection and TLS handshake to `host:port` as `config` checks
/// it, bounded by `timeout`, then closed. Tells a misconfiguration (the
/// handshake failed) from an outage (nothing answered), so a program can
/// stop at start on the first and start anyway on the second.
pub async fn check_handshake(
    host: &str,
    port: u16,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<(), HandshakeError> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| HandshakeError::Refused(format!("{host:?} is no valid server name: {e}")))?;
    let tcp =
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(err)) => return Err(HandshakeError::Unreachable(crate::io_cause(&err))),
            Err(_) => {
                return Err(HandshakeError::Unreachable(format!(
                    "no answer within {timeout:?}"
                )))
            }
        };
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(err)) => Err(HandshakeError::Refused(handshake_cause(&err))),
        Err(_) => Err(HandshakeError::Refused(format!(
            "no TLS handshake within {timeout:?} (is TLS on at that port?)"
        ))),
    }
}

/// Tries a TLS handshake with each of `nodes` of `dependency` (`Redis`) at
/// start: `Err` with one line naming the dependency, the node and the cause
/// when one answers and the handshake fails (a wrong CA or host name);
/// nodes that do not answer are left to the client's reconnections.
pub async fn check_at_start(
    dependency: &str,
    nodes: &[(String, u16)],
    config: &Arc<ClientConfig>,
    timeout: Duration,
) -> Result<(), StartRefused> {
    for (host, port) in nodes {
        match check_handshake(host, *port, config.clone(), timeout).await {
            Ok(()) => {}
            Err(HandshakeError::Unreachable(cause)) => {
                tracing::debug!(dependency, host, port, cause, "tls check: no answer");
            }
            Err(HandshakeError::Refused(cause)) => {
                return Err(StartRefused(format!(
                    "connecting to {dependency} at {host}:{port} over TLS: {cause}"
                )))
            }
        }
    }
    Ok(())
}

/// A dependency's TLS handshake failed at start (see [`check_at_start`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartRefused(pub String);

/// The rustls error inside an I/O error, as rustls words it
/// (`invalid peer certificate: UnknownIssuer`), or the I/O error's text.
fn handshake_cause(err: &std::io::Error) -> String {
    match err.get_ref() {
        Some(inner) => inner.to_string(),
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_certificate_is_refused() {
        let missing = client_config(Some(Path::new("/nonexistent/ca.pem")), Verify::Full);
        assert!(matches!(missing, Err(TlsSetupError::CaFile { .. })));

        let empty = std::env::temp_dir().join(format!("empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let none = client_config(Some(&empty), Verify::Full);
        let _ = std::fs::remove_file(&empty);
        assert!(matches!(none, Err(TlsSetupError::NoCertificate(_))));
    }

    #[test]
    fn without_a_ca_file_mozillas_roots_are_trusted() {
        for verify in [Verify::Full, Verify::Chain, Verify::Nothing] {
            assert!(client_config(None, verify).is_ok());
        }
    }
}
