//! QUIC with mutual TLS: certificates of the cluster CA, endpoints, and
//! framed streams. Only this module imports quinn and rustls.

pub mod probe;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{RecvStream, SendStream};

use crate::wire::{self, Inbound, Message, Reply, Request, WireError};

pub use tls::{PeerId, Role};

/// The application close code of a connection refused after its
/// handshake (a certificate without a usable identity); the close reason
/// says why, and the dialer reports it as a definite refusal.
const REFUSED: u32 = 0x52;

/// Makes ring rustls's process-wide crypto provider, for libraries that
/// build their TLS configuration from it (zookeeper-client): with two
/// providers compiled in, rustls would otherwise panic. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Whether `host` is a name or an IP address a TLS server certificate can
/// carry (and a TLS client can check).
pub fn is_server_name(host: &str) -> bool {
    rustls::pki_types::ServerName::try_from(host).is_ok()
}

/// A QUIC connection to a peer: streams of frames are opened on it
/// ([`FramedStream::open`]); cheap to clone. quinn's handle stays in this
/// module.
#[derive(Clone, Debug)]
pub struct Connection(quinn::Connection);

impl Connection {
    /// It closed (either end, or the link was lost).
    pub fn is_closed(&self) -> bool {
        self.0.close_reason().is_some()
    }
    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.0.remote_address()
    }
}

/// A node's or client's QUIC endpoint: it dials ([`dial`], [`dial_node`])
/// and, a node's, serves ([`serve`]); cheap to clone. quinn's handle stays
/// in this module.
#[derive(Clone, Debug)]
pub struct Endpoint(quinn::Endpoint);

impl Endpoint {
    /// The address it is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
    /// The next incoming connection, its handshake done (`None` once the
    /// endpoint is closed). Nodes serve with [`serve`]; this is for tests
    /// and tools that take one connection.
    pub async fn accept(&self) -> Option<Result<Connection, TransportError>> {
        let incoming = self.0.accept().await?;
        Some(incoming.await.map(Connection).map_err(TransportError::from))
    }
    /// Connections open now (served and dialed).
    pub fn open_connections(&self) -> usize {
        self.0.open_connections()
    }
    /// Closes every connection with `reason`, and waits up to `wait` for
    /// the peers to hear of it.
    pub async fn close(&self, reason: &str, wait: Duration) {
        self.0.close(0u32.into(), reason.as_bytes());
        let _ = tokio::time::timeout(wait, self.0.wait_idle()).await;
    }
}

/// The identity the peer's certificate carries (checked against the
/// cluster CA by the handshake).
pub fn peer_id(conn: &Connection) -> Result<PeerId, String> {
    peer_id_and_serial(conn).map(|(id, _)| id)
}

/// [`peer_id`], and the certificate's serial number.
fn peer_id_and_serial(conn: &Connection) -> Result<(PeerId, Vec<u8>), String> {
    let certs = conn
        .0
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| "the peer presented no certificate".to_string())?;
    let leaf = certs
        .first()
        .ok_or_else(|| "the peer presented no certificate".to_string())?;
    PeerId::with_serial(leaf)
}

/// Closes `conn` as refused, with the reason the peer will report.
pub fn refuse_connection(conn: &Connection, reason: &str) {
    let mut bytes = reason.as_bytes();
    // The reason must fit one packet.
    if bytes.len() > 600 {
        bytes = &bytes[..600];
    }
    conn.0.close(REFUSED.into(), bytes);
}

/// What this node's served handshakes came to, counted for its master's
/// standing (`core::standing`): how many peers refused this node's
/// certificate, and how many other peers' handshakes completed. The
/// counts only grow; the master samples them.
#[derive(Debug, Clone)]
pub struct Handshakes(Arc<HandshakeCounts>);

#[derive(Debug)]
struct HandshakeCounts {
    /// This node's own name: its own worker's handshakes are not another
    /// peer's say.
    own: String,
    refused_us: std::sync::atomic::AtomicU64,
    completed: std::sync::atomic::AtomicU64,
    /// Workers this node, as master, refused for not sharing its store:
    /// each completed a handshake first.
    refused_for_store: std::sync::atomic::AtomicU64,
}

impl Handshakes {
    /// Counts for node `own`.
    pub fn new(own: &str) -> Self {
        Handshakes(Arc::new(HandshakeCounts {
            own: own.to_string(),
            refused_us: Default::default(),
            completed: Default::default(),
            refused_for_store: Default::default(),
        }))
    }
    /// Handshakes whose peer refused this node's certificate, and
    /// workers' links this node refused because they do not share its
    /// store: either way a peer this node cannot serve with.
    pub fn refused_us(&self) -> u64 {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        load(&self.0.refused_us).saturating_add(load(&self.0.refused_for_store))
    }
    /// Handshakes completed with a peer other than this node itself, but
    /// for those of workers it then refused for their store.
    pub fn completed_by_others(&self) -> u64 {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        load(&self.0.completed).saturating_sub(load(&self.0.refused_for_store))
    }
    /// Counts a worker refused because its store is not this node's.
    pub fn refused_for_store(&self) {
        self.count(&self.0.refused_for_store);
    }
    /// Workers refused because their store is not this node's, so far.
    pub fn store_refusals(&self) -> u64 {
        self.0
            .refused_for_store
            .load(std::sync::atomic::Ordering::Relaxed)
    }
    fn count(&self, counter: &std::sync::atomic::AtomicU64) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether a served handshake failed because the peer refused this
/// node's certificate: it closed the connection with a TLS alert about
/// certificates (bad, unsupported, revoked, expired, unknown, unknown CA).
/// A refusal of the peer's certificate by this node is a local error,
/// not this.
fn peer_refused_our_certificate(e: &quinn::ConnectionError) -> bool {
    const CERTIFICATE_ALERTS: [u64; 6] = [42, 43, 44, 45, 46, 48];
    match e {
        quinn::ConnectionError::ConnectionClosed(c) => {
            let code = u64::from(c.error_code);
            (0x100..0x200).contains(&code) && CERTIFICATE_ALERTS.contains(&(code - 0x100))
        }
        _ => false,
    }
}

/// A link's failure detector at work ([`crate::core::liveness`]): samples
/// the connection's received datagrams every tick, and closes it once its
/// peer has been silent past the detector's threshold. Both ends of a
/// worker's link run one (the master's in [`serve`], for every
/// connection it serves; the worker's on its link to the master).
#[derive(Debug)]
pub struct LinkWatch {
    detector: crate::core::liveness::Detector,
    tick: tokio::time::Interval,
}

/// The error code of a connection closed for its peer's silence.
pub const SILENT: u32 = 3;

impl LinkWatch {
    /// A watch of a link with timeout `link_timeout` (the detector's
    /// floor; [`link_ceiling`] its ceiling).
    pub fn new(link_timeout: Duration) -> Self {
        let detector = crate::core::liveness::Detector::new(
            std::time::Instant::now(),
            link_timeout,
            link_ceiling(link_timeout),
        );
        let mut tick = tokio::time::interval(detector.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        LinkWatch { detector, tick }
    }

    /// Returns once `conn`'s peer has been silent past the threshold,
    /// having closed the connection, with what was measured (cancel-safe:
    /// a `select!` arm). Logged and counted here.
    pub async fn lost(&mut self, conn: &Connection) -> TransportError {
        use crate::core::liveness::Verdict;
        loop {
            self.tick.tick().await;
            let received = conn.0.stats().udp_rx.datagrams;
            let verdict = self.detector.observe(std::time::Instant::now(), received);
            if let Verdict::Silent { silent, threshold } = verdict {
                metrics::counter!(crate::metrics::LINKS_SILENT).increment(1);
                tracing::warn!(
                    remote = %conn.remote_address(),
                    silent_ms = silent.as_millis() as u64,
                    threshold_ms = threshold.as_millis() as u64,
                    "the peer of a link fell silent past its threshold; closing the link"
                );
                conn.0
                    .close(SILENT.into(), b"silent past the link's threshold");
                return TransportError::Silent { silent, threshold };
            }
        }
    }
}

/// A connection's other end: where it is and who its certificate says it is.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// Its identity.
    pub id: PeerId,
    /// Its certificate's serial number.
    pub serial: Vec<u8>,
    /// What its requests may hold of this node's memory at once: their
    /// first frames, and what their later frames bring (a submission's
    /// tasks), each of its own budget.
    pub budget: Budget,
    /// See `budget`.
    pub bulk: Budget,
}

/// The bytes of requests one connection may hold in a node's memory at
/// once, shared by its streams: a peer's thousand streams cost what this
/// allows, not a thousand times what a frame may be. A frame that does
/// not fit is refused at once ([`WireError::OverBudget`]), never waited
/// for, so that no stream can hold another up.
#[derive(Debug, Clone)]
pub struct Budget {
    free: Arc<tokio::sync::Semaphore>,
    total: usize,
}

/// Bytes taken from a [`Budget`], given back when dropped.
#[derive(Debug, Default)]
pub struct Held(Vec<tokio::sync::OwnedSemaphorePermit>);

impl Held {
    /// Keeps `other`'s bytes with these.
    pub fn merge(&mut self, other: Held) {
        self.0.extend(other.0);
    }
}

impl Budget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Self {
        let total = total.min(tokio::sync::Semaphore::MAX_PERMITS);
        Budget {
            free: Arc::new(tokio::sync::Semaphore::new(total)),
            total,
        }
    }

    /// Takes `n` bytes now, or says that they do not fit.
    pub fn take(&self, n: usize) -> Result<Held, WireError> {
        let over = || WireError::OverBudget {
            wanted: n,
            free: self.free.available_permits(),
            budget: self.total,
        };
        let permits = u32::try_from(n).map_err(|_| over())?;
        if permits == 0 {
            return Ok(Held::default());
        }
        match self.free.clone().try_acquire_many_owned(permits) {
            Ok(p) => Ok(Held(vec![p])),
            Err(_) => Err(over()),
        }
    }

    /// Bytes free now.
    pub fn free(&self) -> usize {
        self.free.available_permits()
    }
}

/// Errors of the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Socket set-up failed.
    #[error("cannot bind QUIC endpoint on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Connecting failed for a reason the peer gave or the handshake met
    /// (a bad certificate, a refusal, a malformed address): known at once,
    /// and trying again will not help.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The peer.
        addr: String,
        /// Why.
        reason: String,
    },
    /// This host cannot send to the address at all (no route, a local
    /// socket error): known at once, before any packet leaves.
    #[error(
        "cannot send to {addr} from this host: {source} (check the address and this host's routes)"
    )]
    Unroutable {
        /// The peer.
        addr: String,
        /// The operating system's answer.
        source: std::io::Error,
    },
    /// Nothing answered at the address within the handshake timeout, or
    /// the peer was closing: it may be dead, paused, partitioned, behind a
    /// firewall or stopping. Trying again later may work.
    #[error("no answer from {addr}: {reason}")]
    NoAnswer {
        /// The peer.
        addr: String,
        /// What the handshake saw.
        reason: String,
    },
    /// The connection broke.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The peer fell silent past the link's threshold ([`LinkWatch`]).
    #[error("the peer was silent for {} ms, past the link's threshold of {} ms", silent.as_millis(), threshold.as_millis())]
    Silent {
        /// How long, this process's own stalls taken out.
        silent: Duration,
        /// The threshold it passed.
        threshold: Duration,
    },
    /// A frame could not be read or written.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// TLS material problems.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Default time after which a silent peer's connection is declared lost.
///
/// This is the failure detector for worker links: a worker killed with
/// kill -9 sends no close, so its shards are reassigned when this runs out,
/// long before its ZooKeeper session expires. The dialing side sends a
/// keep-alive four times per timeout, so a link is suspected after three
/// missed in a row. Only the dialer pings: the serving side's idle timer is
/// then restarted by what it receives alone, so a dead peer is seen within
/// one timeout of its last packet, and a master with many workers answers
/// their pings without sending its own.
pub const LINK_TIMEOUT: Duration = Duration::from_millis(400);

/// Bytes a peer may send on one connection ahead of what this end read.
const CONNECTION_WINDOW: u32 = 4 << 20;

/// The longest a node's link may stay silent before its failure detector
/// gives up whatever it has seen (see [`LinkWatch`]), and quinn's idle
/// timeout of node endpoints: ten link timeouts.
pub fn link_ceiling(link_timeout: Duration) -> Duration {
    link_timeout.saturating_mul(10)
}

/// `node`: an endpoint of a node, whose links [`LinkWatch`] watches, so
/// quinn's idle timeout is only the ceiling; a client's connections time
/// out after `link_timeout` of silence (the smaller of the two ends'
/// idle timeouts holds, so a node's served client connections too).
fn transport_config(
    link_timeout: Duration,
    dialer: bool,
    node: bool,
) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(dialer.then_some(link_timeout / 4));
    let idle = if node {
        link_ceiling(link_timeout)
    } else {
        link_timeout
    };
    t.max_idle_timeout(idle.try_into().ok());
    t.max_concurrent_bidi_streams(1024u32.into());
    // What a peer may have sent on all its streams that this end has not
    // read yet (quinn's default is unbounded): a thousand streams of
    // unread frames cost at most this, whatever the streams' windows.
    t.receive_window(CONNECTION_WINDOW.into());
    Arc::new(t)
}

/// Binds an endpoint that serves (with client certificate checks) and dials,
/// with 4 MiB socket buffers so that loopback bursts are not dropped.
pub fn endpoint(
    addr: SocketAddr,
    identity: &tls::Identity,
    serve: bool,
    link_timeout: Duration,
) -> Result<Endpoint, TransportError> {
    let bind_err = |source| TransportError::Bind { addr, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(bind_err)?;
    if addr.is_ipv6() {
        // `[::]` serves and dials IPv4 peers too (as mapped addresses).
        socket.set_only_v6(false).map_err(bind_err)?;
    }
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into()).map_err(bind_err)?;
    let (server, client) = configs(identity, serve, link_timeout)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket.into(),
        runtime,
    )
    .map_err(bind_err)?;
    ep.set_default_client_config(client);
    Ok(Endpoint(ep))
}

/// The server (if `serve`) and client configurations of an identity.
fn configs(
    identity: &tls::Identity,
    serve: bool,
    link_timeout: Duration,
) -> Result<(Option<quinn::ServerConfig>, quinn::ClientConfig), TransportError> {
    let server = if serve {
        let mut s = quinn::ServerConfig::with_crypto(Arc::new(identity.quic_server_config()?));
        s.transport_config(transport_config(link_timeout, false, serve));
        Some(s)
    } else {
        None
    };
    let mut client = quinn::ClientConfig::new(Arc::new(identity.quic_client_config()?));
    client.transport_config(transport_config(link_timeout, true, serve));
    Ok((server, client))
}

/// Puts `identity` (certificate, key, trusted CAs, revocation lists) in
/// use on `ep` for the connections made from now on; live connections
/// keep theirs (see [`serve`] for revoked peers).
pub fn reload(
    ep: &mut Endpoint,
    identity: &tls::Identity,
    serve: bool,
    link_timeout: Duration,
) -> Result<(), TransportError> {
    let (server, client) = configs(identity, serve, link_timeout)?;
    if let Some(server) = server {
        ep.0.set_server_config(Some(server));
    }
    ep.0.set_default_client_config(client);
    Ok(())
}

/// The serial numbers of revoked certificates, as the node's `crl.pem`
/// says now: a connection whose peer's serial joins it is closed.
pub type Revoked = tokio::sync::watch::Receiver<Arc<std::collections::HashSet<Vec<u8>>>>;

/// Binds the first of `addrs` that this host allows: `[::]` (dual-stack)
/// where IPv6 is on, else `0.0.0.0`. A client's endpoint must not be bound
/// to loopback: it could then reach a master on this host only.
pub fn endpoint_any(
    port: u16,
    identity: &tls::Identity,
    serve: bool,
    link_timeout: Duration,
) -> Result<Endpoint, TransportError> {
    let v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    match endpoint(v6, identity, serve, link_timeout) {
        Ok(ep) => Ok(ep),
        Err(TransportError::Bind { .. }) => endpoint(
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)),
            identity,
            serve,
            link_timeout,
        ),
        Err(e) => Err(e),
    }
}

/// The address this host sends from toward `dest`: a UDP socket's
/// `connect` looks the route up and fails at once (ENETUNREACH, EINVAL)
/// without sending anything. quinn would only log such a send error and
/// let the handshake time out.
pub fn route_source(dest: SocketAddr) -> std::io::Result<std::net::IpAddr> {
    let any: SocketAddr = if dest.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = std::net::UdpSocket::bind(any)?;
    probe.connect(dest)?;
    Ok(probe.local_addr()?.ip())
}

/// Dials the node `node_id` at `addr`: [`dial`], then its certificate
/// must be that node's (a certificate of another node or of a client is
/// refused, whatever CA signed it).
pub async fn dial_node(
    ep: &Endpoint,
    addr: &str,
    node_id: &str,
) -> Result<Connection, TransportError> {
    let conn = dial(ep, addr).await?;
    let refused = |reason: String| {
        metrics::counter!(crate::metrics::PEER_REFUSALS, "reason" => "not_the_node").increment(1);
        conn.0.close(REFUSED.into(), b"not the node expected");
        Err(TransportError::Connect {
            addr: addr.to_string(),
            reason,
        })
    };
    match peer_id(&conn) {
        Ok(id) if id.is_node(node_id) => Ok(conn),
        Ok(id) => refused(format!(
            "the certificate there is {id}'s, but ZooKeeper names node {node_id} at this address; \
             refusing to talk to it (a stale address, or a host that should not serve)"
        )),
        Err(reason) => refused(format!("the peer's certificate: {reason}")),
    }
}

/// Dials `addr` and checks its certificate against the cluster CA.
///
/// Errors say what the caller can do: [`TransportError::Unroutable`] and
/// [`TransportError::Connect`] are known at once and will not change by
/// retrying; [`TransportError::NoAnswer`] may (a master that is starting,
/// or whose successor is about to be elected).
pub async fn dial(ep: &Endpoint, addr: &str) -> Result<Connection, TransportError> {
    let err = |reason: String| TransportError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| err(format!("not an IP address and port: {e}")))?;
    route_source(sock).map_err(|source| TransportError::Unroutable {
        addr: addr.to_string(),
        source,
    })?;
    let started = std::time::Instant::now();
    let connecting =
        ep.0.connect(sock, tls::SERVER_NAME)
            .map_err(|e| err(e.to_string()))?;
    connecting
        .await
        .map(Connection)
        .map_err(|e| match handshake_failure(&e) {
            Some(reason) => err(reason),
            None => TransportError::NoAnswer {
                addr: addr.to_string(),
                reason: format!("{e} after {} ms", started.elapsed().as_millis()),
            },
        })
}

/// Whether the peer closed `conn` as a refusal of this host (its TLS
/// rejected this host's certificate after the handshake, as TLS 1.3 checks
/// the client's last, or it closed the connection as refused): the error
/// to report, known at once, that retrying will not change.
pub fn refused(conn: &Connection, addr: &str) -> Option<TransportError> {
    let reason = handshake_failure(&conn.0.close_reason()?)?;
    Some(TransportError::Connect {
        addr: addr.to_string(),
        reason,
    })
}

/// A handshake failure that retrying cannot fix (TLS, protocol), in words
/// a user can act on; `None` for a silent or closing peer.
fn handshake_failure(e: &quinn::ConnectionError) -> Option<String> {
    use quinn::ConnectionError as E;
    // TLS alerts travel as QUIC's crypto error codes 0x100-0x1ff.
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        E::TransportError(t) if crypto(t.code) => Some(format!(
            "TLS handshake failed ({e}): the peer's certificate is not signed by this node's \
             cluster CA, or has expired; check that both sides use certificates of one cluster (--certs)"
        )),
        E::ConnectionClosed(c) if crypto(c.error_code) => Some(format!(
            "the peer refused this host's certificate ({e}): it is not signed by the peer's \
             cluster CA, has expired or is revoked; check --certs"
        )),
        E::ApplicationClosed(c) if c.error_code == REFUSED.into() => Some(format!(
            "the peer refused this host: {}",
            String::from_utf8_lossy(&c.reason)
        )),
        E::VersionMismatch | E::TransportError(_) | E::ConnectionClosed(_) | E::CidsExhausted => {
            Some(e.to_string())
        }
        E::TimedOut | E::Reset | E::ApplicationClosed(_) | E::LocallyClosed => None,
    }
}

/// How long a request whose sending was stopped waits for the answer
/// that says why.
const REFUSAL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// One bidirectional stream carrying frames. Its QUIC halves stay in this
/// module: the rest of the crate reads and writes frames, through the
/// stream or its halves ([`FramedStream::split`]).
pub struct FramedStream {
    send: FrameWriter,
    recv: FrameReader,
}

/// The sending half of a [`FramedStream`].
pub struct FrameWriter {
    send: SendStream,
}

/// The receiving half of a [`FramedStream`]: frames of at most its
/// `max_frame` bytes.
pub struct FrameReader {
    recv: RecvStream,
    max_frame: usize,
}

impl FrameWriter {
    /// Sends one frame.
    pub async fn write_frame<M: Message>(&mut self, frame: &M) -> Result<(), WireError> {
        wire::write_frame(&mut self.send, frame).await
    }
    /// Sends frames already encoded ([`wire::encode_into`]), in one write.
    pub async fn write_encoded(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|e| WireError::Io(e.into()))
    }
    /// Ends the sending side: the peer reads what was sent, then the end.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
    /// Resolves when the peer will read no more of this stream (it stopped
    /// or reset it, or the connection is gone), or, once this end finished
    /// it, when the peer has received all of it.
    pub fn peer_gone(&self) -> impl std::future::Future<Output = ()> + 'static {
        let stopped = self.send.stopped();
        async move {
            let _ = stopped.await;
        }
    }
}

impl FrameReader {
    /// Receives one frame.
    pub async fn read_frame<M: Inbound>(&mut self) -> Result<M, WireError> {
        wire::read_frame(&mut self.recv, self.max_frame).await
    }
    /// Receives one frame of at most `limit` bytes (and this stream's
    /// largest).
    pub async fn read_frame_within<M: Inbound>(&mut self, limit: usize) -> Result<M, WireError> {
        wire::read_frame(&mut self.recv, limit.min(self.max_frame)).await
    }
}

impl FramedStream {
    /// Opens a stream on a connection.
    pub async fn open(conn: &Connection, max_frame: usize) -> Result<Self, TransportError> {
        let (send, recv) = conn.0.open_bi().await?;
        Ok(FramedStream::new(send, recv, max_frame))
    }
    fn new(send: SendStream, recv: RecvStream, max_frame: usize) -> Self {
        FramedStream {
            send: FrameWriter { send },
            recv: FrameReader { recv, max_frame },
        }
    }
    /// Its halves, to write and read from different tasks.
    pub fn split(self) -> (FrameWriter, FrameReader) {
        (self.send, self.recv)
    }
    /// A stream from the halves [`FramedStream::split`] gave.
    pub fn join(send: FrameWriter, recv: FrameReader) -> Self {
        FramedStream { send, recv }
    }
    /// Sends one frame.
    pub async fn send<M: Message>(&mut self, frame: &M) -> Result<(), TransportError> {
        self.send.write_frame(frame).await?;
        Ok(())
    }
    /// Receives one frame.
    pub async fn recv<M: Inbound>(&mut self) -> Result<M, TransportError> {
        Ok(self.recv.read_frame().await?)
    }
    /// Receives one frame of at most `max` bytes, whose body (times
    /// `factor`, a bound on what decoding it makes of it) is taken from
    /// `budget` before it is read: a frame that does not fit is refused
    /// with nothing of it read.
    pub async fn recv_within<M: Inbound>(
        &mut self,
        max: usize,
        budget: &Budget,
        factor: usize,
    ) -> Result<(M, Held), TransportError> {
        let r = &mut self.recv;
        let len = wire::read_prefix(&mut r.recv, max.min(r.max_frame)).await?;
        let held = budget.take(len.saturating_mul(factor))?;
        let frame = wire::read_body(&mut r.recv, len).await?;
        Ok((frame, held))
    }
    /// Receives one frame of at most `limit` bytes (and this stream's
    /// largest).
    pub async fn recv_limited<M: Inbound>(&mut self, limit: usize) -> Result<M, WireError> {
        self.recv.read_frame_within(limit).await
    }
    /// Sends frames already encoded ([`wire::encode_into`]), in one write:
    /// also bytes that are no frame, as the adversary tests send.
    pub async fn write_encoded(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.send.write_encoded(bytes).await
    }
    /// Ends the sending side.
    pub fn finish(&mut self) {
        self.send.finish();
    }
    /// Answers with one frame and ends the sending side.
    pub async fn reply<M: Message>(&mut self, frame: &M) -> Result<(), WireError> {
        self.send.write_frame(frame).await?;
        self.send.finish();
        Ok(())
    }
    /// See [`FrameWriter::peer_gone`].
    pub fn peer_gone(&self) -> impl std::future::Future<Output = ()> + 'static {
        self.send.peer_gone()
    }
    /// Tells the peer to stop sending (after a bad frame): what it still
    /// sends is discarded.
    pub fn refuse(&mut self) {
        let _ = self.recv.recv.stop(1u32.into());
    }
    /// Sends a client's frames, then one request-response round: returns
    /// the master's reply.
    pub async fn request(&mut self, frames: &[Request]) -> Result<Reply, TransportError> {
        let mut buf = Vec::new();
        for f in frames {
            wire::encode_into(&mut buf, f)?;
        }
        if let Err(e) = self.send.write_encoded(&buf).await {
            // A peer that refuses midway (a size limit) answers, then stops
            // the stream: its answer says why, and nothing is sent again.
            if let Ok(Ok(reply)) = tokio::time::timeout(REFUSAL_WAIT, self.recv()).await {
                return Ok(reply);
            }
            return Err(e.into());
        }
        self.recv().await
    }
}

/// Accepts connections on `endpoint` until it closes, and hands each
/// bidirectional stream to `handle` with its [`Peer`] (a connection whose
/// handshake fails, or whose certificate carries no identity, is logged,
/// counted and dropped; one whose certificate is revoked later, in
/// `revoked`, is closed). Frames are at most `max_frame` bytes, and each
/// connection's requests may hold `budget` bytes of first frames and
/// `bulk` bytes of later ones at once ([`Peer::budget`], [`Peer::bulk`]).
/// Each connection is watched by a [`LinkWatch`] of `link_timeout`.
/// Spawns on the current runtime.
pub async fn serve<F, Fut>(
    endpoint: Endpoint,
    (max_frame, budget, bulk): (usize, usize, usize),
    link_timeout: Duration,
    revoked: Revoked,
    handshakes: Handshakes,
    handle: F,
) where
    F: Fn(FramedStream, Peer) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    while let Some(incoming) = endpoint.0.accept().await {
        let handle = handle.clone();
        let mut revoked = revoked.clone();
        let handshakes = handshakes.clone();
        tokio::task::spawn_local(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => Connection(c),
                Err(e) => {
                    metrics::counter!(crate::metrics::PEER_REFUSALS, "reason" => "handshake")
                        .increment(1);
                    if peer_refused_our_certificate(&e) {
                        handshakes.count(&handshakes.0.refused_us);
                        tracing::warn!(%remote, error = %e, "a peer refused this node's certificate");
                    } else {
                        tracing::warn!(%remote, error = %e, "refused a QUIC connection");
                    }
                    return;
                }
            };
            let peer = match peer_id_and_serial(&conn) {
                Ok((id, serial)) => Peer {
                    addr: remote,
                    id,
                    serial,
                    budget: Budget::new(budget),
                    bulk: Budget::new(bulk),
                },
                Err(reason) => {
                    metrics::counter!(crate::metrics::PEER_REFUSALS, "reason" => "no_identity")
                        .increment(1);
                    tracing::warn!(%remote, %reason, "refused a QUIC connection");
                    refuse_connection(&conn, &reason);
                    return;
                }
            };
            if !peer.id.is_node(&handshakes.0.own) {
                handshakes.count(&handshakes.0.completed);
            }
            // Whether reloads may still come (their sender lives).
            let mut reloads = true;
            let mut watch = LinkWatch::new(link_timeout);
            loop {
                if revoked.borrow_and_update().contains(&peer.serial) {
                    metrics::counter!(crate::metrics::PEER_REFUSALS, "reason" => "revoked")
                        .increment(1);
                    tracing::warn!(peer = %peer.id, %remote, "closing the connection of a revoked certificate");
                    refuse_connection(&conn, "its certificate is revoked");
                    return;
                }
                let (send, recv) = tokio::select! {
                    s = conn.0.accept_bi() => match s {
                        Ok(s) => s,
                        Err(_) => return,
                    },
                    changed = revoked.changed(), if reloads => {
                        reloads = changed.is_ok();
                        continue;
                    }
                    _ = watch.lost(&conn) => return,
                };
                let stream = FramedStream::new(send, recv, max_frame);
                tokio::task::spawn_local(handle(stream, peer.clone()));
            }
        });
    }
}

/// A bounded queue of frames to one stream's writer ([`write_queued`], or
/// a watch's), filled by a side that must never wait for a peer (the
/// master's actor, a worker's slots). A frame that finds it full is not
/// queued, and [`Outbox::push`] says so: the caller then treats the peer
/// as gone (a worker's link is dropped and its runs requeued; a watch
/// ends, and its client watches again). A peer that keeps up holds about
/// one write's worth here; one that stops reading fills its stream's flow
/// control window, then this queue, and is dropped: it never grows the
/// sender's memory.
#[derive(Clone, Debug)]
pub struct Outbox<M> {
    tx: tokio::sync::mpsc::Sender<M>,
    /// The `queue` label of [`crate::metrics::OUTBOX_FULL`].
    queue: &'static str,
}

/// Frames a worker's link queues at most: the runs of its slots with their
/// prefetch, their acknowledgements and stops, many times over.
pub const LINK_QUEUE: usize = 4096;

/// Frames a watch queues at most: its writer takes them as they come and
/// keeps only a job's latest progress, so this fills only if it stops.
pub const WATCH_QUEUE: usize = 256;

impl<M: Message> Outbox<M> {
    /// An outbox of `capacity` frames, counted as `queue` when full, and
    /// its writer's end.
    pub fn new(
        capacity: usize,
        queue: &'static str,
    ) -> (Outbox<M>, tokio::sync::mpsc::Receiver<M>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        (Outbox { tx, queue }, rx)
    }

    /// Queues `frame`; false if the writer is gone or a whole queue behind
    /// (counted): the peer is to be treated as gone.
    pub fn push(&self, frame: M) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!(crate::metrics::OUTBOX_FULL, "queue" => self.queue).increment(1);
                tracing::warn!(
                    queue = self.queue,
                    "a peer fell a whole queue of frames behind; dropping it"
                );
                false
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Its writer is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Writes every frame received on `rx` to `send`, coalescing the frames
/// already queued into one write of up to about 1 MiB (one `write_all` per
/// small frame is many times slower). Ends when `rx` closes.
pub async fn write_queued<M: Message>(
    send: &mut FrameWriter,
    rx: &mut tokio::sync::mpsc::Receiver<M>,
) -> Result<(), WireError> {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(f) = rx.recv().await {
        buf.clear();
        wire::encode_into(&mut buf, &f)?;
        let mut frames = 1;
        while buf.len() < 1 << 20 {
            match rx.try_recv() {
                Ok(f) => wire::encode_into(&mut buf, &f)?,
                Err(_) => break,
            }
            frames += 1;
        }
        let (counted, bytes) = crate::metrics::frames(true);
        counted.increment(frames);
        bytes.increment(buf.len() as u64);
        send.write_encoded(&buf).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ToWorker;

    fn frame(n: u64) -> ToWorker {
        ToWorker::Welcome {
            epoch: n,
            version: None,
        }
    }

    #[test]
    fn an_outbox_a_whole_queue_behind_refuses_the_next_frame_and_keeps_what_it_holds() {
        let (outbox, mut rx) = Outbox::new(3, "link");
        assert!((0..3).all(|n| outbox.push(frame(n))), "room for three");
        assert!(
            !outbox.push(frame(3)),
            "the fourth: the peer is to be dropped"
        );
        let held: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|f| match f {
                ToWorker::Welcome { epoch, .. } => epoch,
                _ => u64::MAX,
            })
            .collect();
        assert_eq!(held, vec![0, 1, 2], "what it held, in order");
        assert!(
            outbox.push(frame(4)),
            "room again once the writer took them"
        );
        drop(rx);
        assert!(outbox.is_closed());
        assert!(!outbox.push(frame(5)), "a writer gone refuses too");
    }
}
