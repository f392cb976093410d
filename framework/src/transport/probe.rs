//! What a TLS handshake with a TCP server shows: used to say why a
//! ZooKeeper port gives no session (it refused this certificate, its own
//! certificate is not trusted here, it does not speak TLS, or it does).
//! Blocking, and bounded by the timeout given; diagnosis only, nothing is
//! sent after the handshake.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The PEM text a client presents and trusts: CAs, chain, key.
#[derive(Clone, Copy)]
pub struct ProbePem<'a> {
    /// The CAs whose server certificates are trusted.
    pub ca: &'a str,
    /// The certificate chain presented.
    pub cert: &'a str,
    /// Its private key.
    pub key: &'a str,
}

/// What one handshake showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsProbe {
    /// The handshake completed and the server kept the connection open.
    Accepted,
    /// The server speaks TLS and refused the certificate presented (the
    /// alert it sent, or how it ended the connection).
    RefusedUs(String),
    /// The server speaks TLS, but its certificate does not check out
    /// against the CAs given (none given: any server certificate).
    Untrusted(String),
    /// What answered is not a TLS server.
    NotTls(String),
    /// Nothing conclusive (a timeout before any answer, a local error).
    Unknown(String),
}

impl TlsProbe {
    /// Whether the server answered as a TLS server does.
    pub fn speaks_tls(&self) -> bool {
        matches!(
            self,
            TlsProbe::Accepted | TlsProbe::RefusedUs(_) | TlsProbe::Untrusted(_)
        )
    }
}

fn config(pem: Option<ProbePem<'_>>) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?;
    let Some(pem) = pem else {
        // No CA: any server's certificate fails the check, which is enough
        // to learn that the server speaks TLS.
        return Ok(builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth());
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.ca.as_bytes()) {
        let cert = cert.map_err(|e| format!("ca.pem: {e}"))?;
        roots.add(cert).map_err(|e| format!("ca.pem: {e}"))?;
    }
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.key.as_bytes())
        .map_err(|e| format!("key: {e}"))?
        .ok_or_else(|| "no private key".to_string())?;
    builder
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())
}

/// The rustls error inside an I/O error, if that is what it is.
fn tls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn classify(e: &std::io::Error, handshake_done: bool, answered: bool) -> TlsProbe {
    use std::io::ErrorKind;
    match tls_error(e) {
        Some(rustls::Error::AlertReceived(alert)) => {
            TlsProbe::RefusedUs(format!("TLS alert {alert:?}"))
        }
        Some(rustls::Error::InvalidCertificate(why)) => TlsProbe::Untrusted(format!("{why:?}")),
        Some(
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. },
        ) if !handshake_done => TlsProbe::NotTls("its answer is not TLS".into()),
        Some(other) => TlsProbe::Unknown(other.to_string()),
        None => match e.kind() {
            // TLS 1.3 servers check the client's certificate after the
            // client has finished: a refusal may come as a closed
            // connection instead of an alert.
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                if handshake_done =>
            {
                TlsProbe::RefusedUs("the server closed the connection after the handshake".into())
            }
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                if !answered =>
            {
                TlsProbe::NotTls("it closed the connection at the first TLS message".into())
            }
            ErrorKind::WouldBlock | ErrorKind::TimedOut if handshake_done => TlsProbe::Accepted,
            _ => TlsProbe::Unknown(e.to_string()),
        },
    }
}

/// Runs a TLS handshake over `stream` (already connected) as a client
/// presenting `pem` (or nothing), for server name `host`, and waits up to
/// `timeout` for each step.
pub fn probe_tls(
    mut stream: TcpStream,
    host: &str,
    pem: Option<ProbePem<'_>>,
    timeout: Duration,
) -> TlsProbe {
    let config = match config(pem) {
        Ok(c) => Arc::new(c),
        Err(e) => return TlsProbe::Unknown(e),
    };
    let Ok(name) = ServerName::try_from(host.to_string()) else {
        return TlsProbe::Unknown(format!("{host:?} cannot be a TLS server name"));
    };
    let mut conn = match rustls::ClientConnection::new(config, name) {
        Ok(c) => c,
        Err(e) => return TlsProbe::Unknown(e.to_string()),
    };
    if stream.set_read_timeout(Some(timeout)).is_err()
        || stream.set_write_timeout(Some(timeout)).is_err()
    {
        return TlsProbe::Unknown("cannot set socket timeouts".into());
    }
    let mut answered = false;
    while conn.is_handshaking() {
        if conn.wants_write() {
            if let Err(e) = conn.write_tls(&mut stream) {
                return classify(&e, false, answered);
            }
            continue;
        }
        match conn.read_tls(&mut stream) {
            Ok(0) => {
                let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                return classify(&eof, false, answered);
            }
            Ok(_) => answered = true,
            Err(e) => return classify(&e, false, answered),
        }
        if let Err(e) = conn.process_new_packets() {
            // Tell the server why, as a client would.
            let _ = conn.write_tls(&mut stream);
            return classify(
                &std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                false,
                answered,
            );
        }
    }
    // Our Finished may still be queued; then the server's verdict on our
    // certificate arrives (an alert, a close) or nothing (accepted: it
    // waits for the first request).
    while conn.wants_write() {
        if let Err(e) = conn.write_tls(&mut stream) {
            return classify(&e, true, answered);
        }
    }
    let _ = stream.flush();
    let mut tls = rustls::Stream::new(&mut conn, &mut stream);
    let mut byte = [0u8; 1];
    match tls.read(&mut byte) {
        Ok(0) => classify(
            &std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            true,
            true,
        ),
        Ok(_) => TlsProbe::Accepted,
        Err(e) => classify(&e, true, true),
    }
}
