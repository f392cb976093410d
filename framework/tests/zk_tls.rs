#![allow(clippy::unwrap_used)]
//! ZooKeeper locked down: a private server with its TLS client port and
//! x509 authentication; a node's session over TLS creates the cluster's
//! znodes so that only node certificates may change them, a client's
//! certificate may read `/master` only, and a client without the
//! cluster's credentials (on the plain port) can neither read, delete nor
//! alter anything under the cluster root.

use std::time::Duration;

use ringleader::coord::{self, Layout, MasterInfo, Session, ZkTls};
use ringleader::transport::tls::Identity;
use ringleader::zkserver::{ZkEnsemble, ZkServer, ZkServerOptions};

fn zk_tls(identity: &Identity) -> ZkTls {
    let (cert, key, ca) = identity.pem();
    let origin = format!("(the test's {})", identity.id());
    ZkTls {
        ca,
        cert,
        key,
        origin,
    }
}

/// A one-machine certificate directory, a ZooKeeper server certificate
/// for 127.0.0.1 from its CA, and server options opening the TLS port.
fn tls_setup(dir: &std::path::Path) -> (std::path::PathBuf, ZkServerOptions) {
    let certs = dir.join("certs");
    ringleader::pki::make_cluster_certs(&certs).unwrap();
    let zk_certs = dir.join("zk-certs");
    ringleader::pki::issue_zookeeper(&certs, &["127.0.0.1".into(), "localhost".into()], &zk_certs)
        .unwrap();
    let opts = ZkServerOptions {
        tls: Some(zk_certs),
        ..Default::default()
    };
    (certs, opts)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn only_nodes_change_the_cluster_and_clients_read_only_the_master() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, opts) = tls_setup(dir.path());
    let server = ZkServer::start(&dir.path().join("zk"), &opts).unwrap();
    let secure = server.secure_connect_string().unwrap();
    let node = Identity::node(&certs, Some("n1"), || unreachable!()).unwrap();
    let client = Identity::client(&certs).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let t = Duration::from_secs(10);
        let layout = Layout::new("locked");
        let session = Session::connect_with(&secure, t, layout.clone(), Some(&zk_tls(&node)))
            .await
            .unwrap();
        session.ensure_root().await.unwrap();
        let store =
            ringleader::store::Store::open(dir.path().join("store").to_str().unwrap()).unwrap();
        let won = session.campaign("n1").await.unwrap();
        let leader = coord::LeaderStore::take_over(won, store).await.unwrap();
        leader
            .publish("n1", "127.0.0.1:7470", "zk-tls-test")
            .await
            .unwrap();

        // A client's certificate reads /master, and nothing else.
        let reader = coord::connect_with(&secure, t, Some(&zk_tls(&client)))
            .await
            .unwrap();
        let master: Option<MasterInfo> = coord::read_master(&reader, &layout).await.unwrap();
        assert_eq!(master.unwrap().node_id, "n1");
        let err = reader.get_data(&layout.jobs()).await.unwrap_err();
        assert!(matches!(err, zookeeper_client::Error::NoAuth), "{err:?}");
        let err = reader.delete(&layout.master(), None).await.unwrap_err();
        assert!(matches!(err, zookeeper_client::Error::NoAuth), "{err:?}");

        // No credentials, on the plain port: nothing.
        let stranger = coord::connect(&server.connect_string(), t).await.unwrap();
        for path in [layout.master(), layout.jobs(), layout.root().to_string()] {
            let err = stranger.get_data(&path).await.unwrap_err();
            assert!(
                matches!(err, zookeeper_client::Error::NoAuth),
                "read {path}: {err:?}"
            );
        }
        let err = stranger.delete(&layout.jobs(), None).await.unwrap_err();
        assert!(matches!(err, zookeeper_client::Error::NoAuth), "{err:?}");
        let err = stranger
            .set_data(layout.root(), b"x", None)
            .await
            .unwrap_err();
        assert!(matches!(err, zookeeper_client::Error::NoAuth), "{err:?}");
        let err = stranger
            .create(
                &format!("{}/election/_c_x-latch-0000000000", layout.root()),
                b"",
                &zookeeper_client::CreateMode::Ephemeral
                    .with_acls(zookeeper_client::Acls::anyone_all()),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, zookeeper_client::Error::NoAuth), "{err:?}");
        // The node still serves: its writes go through.
        assert!(leader.list_job_ids().await.unwrap().is_empty());
    });
}

/// An ensemble over TLS: its servers elect and replicate over TLS among
/// themselves, and a node's session reaches each server's TLS port and
/// follows the ensemble when the server it uses dies.
#[test]
fn a_session_over_tls_survives_the_loss_of_its_server() {
    use ringleader::transport::probe::probe_tls;
    let dir = tempfile::tempdir().unwrap();
    let (certs, opts) = tls_setup(dir.path());
    let mut ensemble = ZkEnsemble::start(&dir.path().join("zk"), 3, &opts).unwrap();
    // Every server's election port speaks TLS (the ensemble formed, so
    // they understood one another).
    let cfg = std::fs::read_to_string(dir.path().join("zk/zk1/zoo.cfg")).unwrap();
    let election: Vec<String> = cfg
        .lines()
        .filter_map(|l| l.strip_prefix("server."))
        .map(|l| {
            let addr = l.split_once('=').unwrap().1;
            let (host, port) = addr.rsplit_once(':').unwrap();
            let host = host.rsplit_once(':').unwrap().0;
            format!("{host}:{port}")
        })
        .collect();
    assert_eq!(election.len(), 3, "{cfg}");
    for addr in &election {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        let seen = probe_tls(stream, "127.0.0.1", None, Duration::from_secs(5));
        assert!(seen.speaks_tls(), "election port {addr}: {seen:?}");
    }
    let secure: Vec<String> = ensemble
        .servers
        .iter()
        .map(|s| s.secure_connect_string().unwrap())
        .collect();
    let node = Identity::node(&certs, Some("n1"), || unreachable!()).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let t = Duration::from_secs(10);
        let layout = Layout::new("ensemble");
        let session =
            Session::connect_with(&secure.join(","), t, layout.clone(), Some(&zk_tls(&node)))
                .await
                .unwrap();
        session.ensure_root().await.unwrap();
        for s in &mut ensemble.servers {
            s.kill();
            // The others keep a quorum only while two of three live: one
            // at a time, each restarted before the next goes.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                if session.zookeeper().check_stat(layout.root()).await.is_ok() {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "no answer over TLS");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            s.restart().unwrap();
        }
    });
}

/// A host a TLS certificate cannot name is refused before connecting
/// (zookeeper-client would panic on it).
#[test]
fn a_host_no_certificate_can_name_is_refused_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, _) = tls_setup(dir.path());
    let node = Identity::node(&certs, Some("n1"), || unreachable!()).unwrap();
    runtime().block_on(async {
        let err = coord::connect_with("-bad-.:2281", Duration::from_secs(2), Some(&zk_tls(&node)))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("neither a host name nor an IP address"),
            "{err}"
        );
    });
}
