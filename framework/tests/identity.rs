#![allow(clippy::unwrap_used)]
//! Identities in certificates made by a stock tool (`openssl`), not only
//! by the `certs` commands: they are read, checked at start, and carried
//! through a real QUIC handshake, where a node is told apart from a
//! client and from another node.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ringleader::transport::tls::{Identity, Role, TlsError};
use ringleader::transport::{self, TransportError};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl (scripts/setup installs it): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA of openssl's in `dir` (`ca.pem`, `ca.key`).
fn openssl_ca(dir: &Path) {
    let args = "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
                -out ca.pem -subj /CN=operators-ca -days 30 \
                -addext basicConstraints=critical,CA:TRUE \
                -addext keyUsage=critical,keyCertSign,cRLSign";
    openssl(dir, &args.split_whitespace().collect::<Vec<_>>());
}

/// A certificate of the CA in `ca` into `out` as `<file>.pem`/`.key`, with
/// the given subject alternative names and usages, valid `days`.
fn openssl_cert(ca: &Path, out: &Path, file: &str, san: &str, usage: &str, days: &str) {
    std::fs::create_dir_all(out).unwrap();
    std::fs::copy(ca.join("ca.pem"), out.join("ca.pem")).unwrap();
    let key = out.join(format!("{file}.key"));
    let csr = out.join(format!("{file}.csr"));
    let pem = out.join(format!("{file}.pem"));
    let ext = out.join(format!("{file}.ext"));
    std::fs::write(
        &ext,
        format!(
            "subjectAltName={san}\nextendedKeyUsage={usage}\nkeyUsage=critical,digitalSignature\n"
        ),
    )
    .unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let req = format!(
        "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {} -out {} \
         -subj /CN=whatever",
        s(&key),
        s(&csr)
    );
    openssl(ca, &req.split_whitespace().collect::<Vec<_>>());
    openssl(
        ca,
        &[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &s(&pem),
            "-days",
            days,
            "-extfile",
            &s(&ext),
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// An openssl CA, node n7's certificate (`n7/node.pem`) and client
/// alice's (`alice/client.pem`), in a temporary directory.
fn ca_node_and_client() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    std::fs::create_dir_all(&ca).unwrap();
    openssl_ca(&ca);
    let node = tmp.path().join("n7");
    openssl_cert(
        &ca,
        &node,
        "node",
        "DNS:ringleader.cluster,URI:urn:ringleader:node:n7",
        "serverAuth,clientAuth",
        "30",
    );
    let alice = tmp.path().join("alice");
    openssl_cert(
        &ca,
        &alice,
        "client",
        "URI:urn:ringleader:client:alice",
        "clientAuth",
        "30",
    );
    (tmp, ca, node, alice)
}

fn reason(e: TlsError) -> String {
    e.to_string()
}

#[test]
fn identities_in_certificates_made_by_openssl_are_read_and_checked() {
    let (tmp, ca, node, alice) = ca_node_and_client();

    // The id comes from the certificate; a --node-id that differs is refused.
    let id = Identity::node(&node, None, || unreachable!()).unwrap();
    assert_eq!((id.id().role, id.id().name.as_str()), (Role::Node, "n7"));
    assert!(Identity::node(&node, Some("n7"), || unreachable!()).is_ok());
    let other = reason(Identity::node(&node, Some("n8"), || unreachable!()).unwrap_err());
    assert!(
        other.contains("node n7's, but --node-id says n8"),
        "{other}"
    );
    let client = Identity::client(&alice).unwrap();
    assert_eq!(client.id().to_string(), "client alice");
    // A client's certificate is no node's.
    std::fs::copy(alice.join("client.pem"), alice.join("node.pem")).unwrap();
    std::fs::copy(alice.join("client.key"), alice.join("node.key")).unwrap();
    let not_node = reason(Identity::node(&alice, None, || unreachable!()).unwrap_err());
    assert!(
        not_node.contains("certificate of client alice, not of a node"),
        "{not_node}"
    );

    // No identity, an unknown role, two identities, an expired certificate.
    for (dir, san, days, want) in [
        (
            "plain",
            "DNS:ringleader.cluster",
            "30",
            "carries no Ringleader identity",
        ),
        (
            "odd",
            "URI:urn:ringleader:boss:x",
            "30",
            "unknown role \"boss\"",
        ),
        (
            "two",
            "URI:urn:ringleader:node:a,URI:urn:ringleader:node:b",
            "30",
            "2 Ringleader identities",
        ),
        ("old", "URI:urn:ringleader:node:old", "0", "has expired"),
    ] {
        let d = tmp.path().join(dir);
        openssl_cert(&ca, &d, "node", san, "serverAuth,clientAuth", days);
        let e = reason(Identity::node(&d, None, || unreachable!()).unwrap_err());
        assert!(e.contains(want), "{dir}: {e}");
    }
}

/// Over a real QUIC handshake: the server learns the client's identity,
/// the client checks the server is the node it meant, and a client's
/// certificate cannot serve.
#[test]
fn a_handshake_carries_identities_both_ways() {
    let (_tmp, _ca, node, alice) = ca_node_and_client();
    let node_id = Identity::node(&node, None, || unreachable!()).unwrap();
    let client_id = Identity::client(&alice).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let timeout = Duration::from_secs(5);
        let server =
            transport::endpoint("127.0.0.1:0".parse().unwrap(), &node_id, true, timeout).unwrap();
        let addr = server.local_addr().unwrap().to_string();
        let dialer =
            transport::endpoint("127.0.0.1:0".parse().unwrap(), &client_id, false, timeout)
                .unwrap();
        let accept = async {
            let conn = server.accept().await.unwrap().unwrap();
            transport::peer_id(&conn).unwrap()
        };
        let (seen, dialled) = tokio::join!(accept, transport::dial_node(&dialer, &addr, "n7"));
        let conn = dialled.unwrap();
        assert_eq!(seen.to_string(), "client alice");
        assert_eq!(transport::peer_id(&conn).unwrap().to_string(), "node n7");

        // ZooKeeper names another node at this address: refused.
        let accept = async {
            let _ = server.accept().await;
        };
        let (_, wrong) = tokio::join!(accept, transport::dial_node(&dialer, &addr, "n8"));
        match wrong {
            Err(TransportError::Connect { reason, .. }) => {
                assert!(
                    reason.contains("node n7's, but ZooKeeper names node n8"),
                    "{reason}"
                )
            }
            other => panic!("dialled the wrong node: {other:?}"),
        }

        // A client's certificate cannot serve: the dialer's TLS refuses it.
        let fake =
            transport::endpoint("127.0.0.1:0".parse().unwrap(), &client_id, true, timeout).unwrap();
        let fake_addr = fake.local_addr().unwrap().to_string();
        let node_dialer =
            transport::endpoint("127.0.0.1:0".parse().unwrap(), &node_id, false, timeout).unwrap();
        let accept = async {
            let _ = fake.accept().await;
        };
        let (_, served) = tokio::join!(
            accept,
            transport::dial_node(&node_dialer, &fake_addr, "alice")
        );
        match served {
            Err(TransportError::Connect { reason, .. }) => {
                assert!(reason.contains("TLS handshake failed"), "{reason}")
            }
            other => panic!("a client's certificate served: {other:?}"),
        }
    });
}
