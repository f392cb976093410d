//! The byte format between nodes and clients: versioned MessagePack frames
//! with a `u32` big-endian length prefix, and bounded decoding.
//!
//! Only this module knows the byte layout, of frames and of the user values
//! they carry ([`encode`], [`decode`]). A frame longer than the reader's
//! limit is refused from its prefix, before any of its body is read.
//!
//! Each conversation has its own messages, and a reader decodes only the
//! ones its conversation may carry: a worker's link ([`FromWorker`],
//! [`ToWorker`]), a client's requests ([`Request`]) and the master's
//! replies and pushes ([`Reply`]). The first frame of a stream the master
//! accepts opens either conversation ([`Opening`]). A variant's name is its
//! encoding, so messages may move between enums without a change on the
//! wire (the golden files check it).

mod client;
pub mod core_serde;
mod link;

pub use client::*;
pub use link::*;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The newest protocol version this build speaks: bumped when a frame
/// gains a variant or a meaning that a peer of an earlier version does not
/// know (a field added is not such a change: see [`encode_named`]).
pub const PROTOCOL_VERSION: u32 = 8;

/// The first version whose master holds a delayed job
/// ([`JobOptions::not_before_ms`]) until its time, and keeps limits
/// ([`Request::SetLimit`], [`JobOptions::under`]).
pub const SCHEDULING: u32 = 8;

/// The oldest protocol version this build still speaks: a link's version
/// is the newest both ends speak ([`negotiate`]), so that adjacent
/// releases interoperate on every link.
pub const PROTOCOL_MIN: u32 = 6;

/// The version a link between a peer speaking `oldest..=newest` and this
/// build uses: the newest both speak; an error when the ranges do not meet.
pub fn negotiate(oldest: u32, newest: u32) -> Result<u32, VersionMismatch> {
    let version = newest.min(PROTOCOL_VERSION);
    if version < oldest.max(PROTOCOL_MIN) {
        return Err(VersionMismatch {
            oldest,
            newest,
            this: "this build",
        });
    }
    Ok(version)
}

/// A peer speaks no protocol version this build does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "it speaks protocol versions {oldest} to {newest} and {this} {PROTOCOL_MIN} to \
     {PROTOCOL_VERSION}: upgrade the older of the two (adjacent releases work together; see \
     \"Upgrading\" in the README)"
)]
pub struct VersionMismatch {
    /// The oldest version the peer speaks.
    pub oldest: u32,
    /// The newest.
    pub newest: u32,
    /// This build, as the message names it ("this master").
    pub this: &'static str,
}

impl VersionMismatch {
    /// The same, with this build named `this` ("this master").
    pub fn by(self, this: &'static str) -> Self {
        VersionMismatch { this, ..self }
    }
}

/// Most bytes of a frame's body reserved before they arrive.
const RESERVE_AHEAD: usize = 64 << 10;

/// Default upper bound of one frame's body.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Errors of reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer announced a frame over the limit; nothing of it was read.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The reader's limit.
        max: usize,
    },
    /// The frame body is not a valid MessagePack message of its conversation.
    #[error("malformed frame: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    /// Encoding failed (a value serde cannot represent).
    #[error("cannot encode frame: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The stream ended or broke.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    /// A message this build does not know in its conversation: the
    /// sender is of a newer version, or speaks another conversation.
    #[error("{name} is not a frame of {conversation} this build knows (a newer version's?)")]
    Unknown {
        /// The conversation the reader expected.
        conversation: &'static str,
        /// The frame's name, as it came.
        name: String,
    },
    /// The stream ended cleanly between frames.
    #[error("stream closed by peer")]
    Closed,
    /// The frame does not fit in what its connection may hold in the
    /// reader's memory at once; nothing of it was read.
    #[error(
        "a request of {wanted} bytes does not fit in what one connection may hold in this \
         node's memory at once ({free} of {budget} bytes free): retry once some of its \
         requests are answered"
    )]
    OverBudget {
        /// What the frame would hold.
        wanted: usize,
        /// What was free.
        free: usize,
        /// The connection's whole budget.
        budget: usize,
    },
}

impl WireError {
    /// The kind of `Error` frame that answers a request that failed so.
    pub fn kind(&self) -> ErrorKind {
        match self {
            WireError::Unknown { .. } => ErrorKind::Unsupported,
            WireError::OverBudget { .. } => ErrorKind::Unavailable,
            _ => ErrorKind::Invalid,
        }
    }
}

/// Errors of encoding and decoding user values (tasks, outputs, results).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not a valid encoding of the expected type.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's error.
        source: rmp_serde::decode::Error,
    },
    /// The value could not be encoded.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        source: rmp_serde::encode::Error,
    },
    /// An accumulator of another job was passed.
    #[error("accumulator of the wrong job type")]
    WrongType,
}

/// Encodes a user value (task, output, result) the way the framework stores it.
pub fn encode<T: serde::Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec(value).map_err(|source| CodecError::Encode { what, source })
}

/// Decodes a user value encoded with [`encode`].
pub fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, CodecError> {
    rmp_serde::from_slice(bytes).map_err(|source| CodecError::Decode { what, source })
}

/// A decoder over an encoded user value, for [`crate::Job::merge_from`].
pub type PayloadDecoder<'a> = rmp_serde::Deserializer<rmp_serde::decode::ReadRefReader<'a, [u8]>>;

/// A decoder reading `bytes` (encoded with [`encode`]).
pub fn payload_decoder(bytes: &[u8]) -> PayloadDecoder<'_> {
    rmp_serde::Deserializer::from_read_ref(bytes)
}

/// What a refused or failed request means for the one who asked: a
/// program acts on the kind, never on the message's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request cannot succeed as it is: bad arguments or options, a
    /// limit passed, an unknown job type, a malformed frame, a job id
    /// taken by another job. Sending it again gets the same answer.
    Invalid,
    /// No such job: unknown, never acknowledged, or collected once its
    /// result was fetched and its retention passed.
    NoSuchJob,
    /// The job belongs to another client.
    NotOwner,
    /// The job is not in a state for this request: still running (a
    /// fetch), already ended (a cancel), still being submitted.
    JobState,
    /// Not now: the master could not reach ZooKeeper or its store, its
    /// connection's budget is full, or the job's id is being freed.
    /// Nothing was done: send the same request again (a submission with
    /// the same job id) after a pause.
    Unavailable,
    /// A write was sent whose outcome the master cannot know (ZooKeeper's
    /// answer was lost): the job may have been accepted. Submitting again
    /// with the same job id finds it if it was, and submits it if not.
    OutcomeUnknown,
    /// The receiver does not know the request: a version from before it.
    Unsupported,
    /// The asker's certificate does not allow the request: an admin's or a
    /// node's is needed (protocol 7 on: sent only in answer to requests of
    /// that version).
    Forbidden,
}

/// The messages of one conversation: each is encoded as its variant's
/// name and its fields ([`encode_into`]), and read only where its
/// conversation is ([`Inbound`]).
pub trait Message: Serialize + DeserializeOwned + std::fmt::Debug {
    /// The conversation, as errors name it ("a client's request").
    const CONVERSATION: &'static str;
    /// Every variant's name: a frame of another name is not of this
    /// conversation, or of a newer version.
    const NAMES: &'static [&'static str];
    /// This message's variant name, for errors, logs and metrics.
    fn name(&self) -> &'static str;
}

/// What a reader decodes a frame's body into.
pub trait Inbound: Sized {
    /// The body read as this; [`WireError::Unknown`] for a frame whose
    /// name the reader does not know.
    fn decode(body: &[u8]) -> Result<Self, WireError>;
}

impl<M: Message> Inbound for M {
    fn decode(body: &[u8]) -> Result<Self, WireError> {
        rmp_serde::from_slice(body).map_err(|e| match variant_name(body) {
            Some(name) if !M::NAMES.contains(&name) => WireError::Unknown {
                conversation: M::CONVERSATION,
                name: name.to_string(),
            },
            _ => WireError::Malformed(e),
        })
    }
}

/// The name a frame's body starts with: a unit variant is its name, any
/// other a map of one entry keyed by it. `None` for anything else.
fn variant_name(body: &[u8]) -> Option<&str> {
    let body = match body.first()? {
        0x81 => &body[1..],
        _ => body,
    };
    let (len, rest) = match *body.first()? {
        b @ 0xa0..=0xbf => (usize::from(b & 0x1f), &body[1..]),
        0xd9 => (usize::from(*body.get(1)?), &body[2..]),
        _ => return None,
    };
    std::str::from_utf8(rest.get(..len)?).ok()
}

/// Declares one conversation's messages: the enum with its serde derives,
/// and its [`Message`] names, written once.
macro_rules! messages {
    (
        $(#[$meta:meta])*
        pub enum $name:ident($conversation:literal) {
            $(
                $(#[$vmeta:meta])*
                $variant:ident $({ $($fields:tt)* })? $(( $($tuple:tt)* ))?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
        pub enum $name {
            $( $(#[$vmeta])* $variant $({ $($fields)* })? $(( $($tuple)* ))? ),*
        }

        impl $name {
            /// This message's variant name, for errors, logs and metrics.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Self::$variant { .. } => stringify!($variant) ),*
                }
            }
        }

        impl Message for $name {
            const CONVERSATION: &'static str = $conversation;
            const NAMES: &'static [&'static str] = &[$(stringify!($variant)),*];
            fn name(&self) -> &'static str {
                $name::name(self)
            }
        }
    };
}
use messages;

/// The first frame of a stream the master accepts: a worker's hello opens
/// its link, anything else is a client's request.
#[derive(Debug)]
pub enum Opening {
    /// A [`FromWorker::WorkerHello`].
    Worker(Hello),
    /// A client's request.
    Client(Request),
}

impl Opening {
    /// Its name, for errors, logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Opening::Worker(_) => "WorkerHello",
            Opening::Client(m) => m.name(),
        }
    }
}

impl Inbound for Opening {
    fn decode(body: &[u8]) -> Result<Self, WireError> {
        /// The one worker frame that opens a stream.
        #[derive(Deserialize)]
        enum Hellos {
            WorkerHello(Hello),
        }
        match variant_name(body) {
            Some("WorkerHello") => {
                let Hellos::WorkerHello(hello) = rmp_serde::from_slice(body)?;
                Ok(Opening::Worker(hello))
            }
            _ => Ok(Opening::Client(Request::decode(body)?)),
        }
    }
}

/// Encodes a frame's body or a record the way every format of the
/// cluster is written: MessagePack with structs as maps of named fields,
/// so that a reader of another release reads the fields it knows and
/// skips the others (ARCHITECTURE.md, "Formats that evolve"). Tuples stay
/// arrays: they never grow.
pub fn encode_named<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

/// Appends one length-prefixed frame to `buf`.
pub fn encode_into<M: Message>(buf: &mut Vec<u8>, frame: &M) -> Result<(), WireError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    rmp_serde::encode::write_named(buf, frame)?;
    let len = u32::try_from(buf.len() - start - 4).map_err(|_| WireError::TooLarge {
        len: buf.len() - start - 4,
        max: u32::MAX as usize,
    })?;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Decodes one frame body (without its prefix).
pub fn decode_frame<M: Inbound>(body: &[u8]) -> Result<M, WireError> {
    M::decode(body)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, M: Message>(
    w: &mut W,
    frame: &M,
) -> Result<(), WireError> {
    let mut buf = Vec::with_capacity(128);
    encode_into(&mut buf, frame)?;
    w.write_all(&buf).await?;
    let (frames, bytes) = crate::metrics::frames(true);
    frames.increment(1);
    bytes.increment(buf.len() as u64);
    Ok(())
}

/// Reads one frame of at most `max` body bytes. Returns [`WireError::Closed`]
/// when the stream ends cleanly before a new frame.
pub async fn read_frame<R: AsyncRead + Unpin, M: Inbound>(
    r: &mut R,
    max: usize,
) -> Result<M, WireError> {
    let len = read_prefix(r, max).await?;
    read_body(r, len).await
}

/// Reads a frame's length prefix: the length of its body, at most `max`
/// ([`WireError::Closed`] when the stream ends cleanly before it).
pub async fn read_prefix<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<usize, WireError> {
    let mut prefix = [0u8; 4];
    match r.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    Ok(len)
}

/// Reads and decodes a frame body of `len` bytes (its prefix read).
pub async fn read_body<R: AsyncRead + Unpin, M: Inbound>(
    r: &mut R,
    len: usize,
) -> Result<M, WireError> {
    // Memory grows with the bytes that arrive, not with what the prefix
    // announces: a thousand streams each announcing the limit and sending
    // nothing reserve nothing. It doubles as they come, and never past
    // the frame's length (a growth of `read_to_end` would take twice it).
    let mut body: Vec<u8> = Vec::new();
    while body.len() < len {
        let have = body.len();
        let next = len.min(have.saturating_mul(2).max(RESERVE_AHEAD));
        body.reserve_exact(next - have);
        body.resize(next, 0);
        if let Err(e) = r.read_exact(&mut body[have..next]).await {
            if e.kind() != std::io::ErrorKind::UnexpectedEof {
                return Err(e.into());
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("frame of {len} bytes ended after at most {next}"),
            )
            .into());
        }
    }
    let (frames, bytes) = crate::metrics::frames(false);
    frames.increment(1);
    bytes.increment(len as u64 + 4);
    decode_frame(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error_not_a_hang() {
        let mut buf = Vec::new();
        encode_into(
            &mut buf,
            &Request::GetJob {
                job_id: "j".repeat(100_000),
            },
        )
        .unwrap();
        buf.truncate(70_000);
        let mut r = &buf[..];
        let err = read_frame::<_, Request>(&mut r, 1 << 20).await.unwrap_err();
        assert!(err.to_string().contains("ended after"), "{err}");
    }

    #[test]
    fn a_link_speaks_the_newest_version_both_ends_speak_or_none() {
        assert_eq!(
            negotiate(PROTOCOL_MIN, PROTOCOL_VERSION),
            Ok(PROTOCOL_VERSION)
        );
        // A newer peer that still speaks this build's newest.
        assert_eq!(
            negotiate(PROTOCOL_VERSION, PROTOCOL_VERSION + 3),
            Ok(PROTOCOL_VERSION)
        );
        // An older peer that speaks this build's oldest.
        assert_eq!(negotiate(PROTOCOL_MIN - 2, PROTOCOL_MIN), Ok(PROTOCOL_MIN));
        // Ranges that do not meet, either way.
        let older = negotiate(1, PROTOCOL_MIN - 1).unwrap_err();
        assert!(older.to_string().contains("upgrade the older"), "{older}");
        assert!(negotiate(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 2).is_err());
    }

    #[tokio::test]
    async fn round_trip() {
        let mut buf = Vec::new();
        encode_into(&mut buf, &Request::GetJob { job_id: "j".into() }).unwrap();
        encode_into(&mut buf, &Reply::Ok).unwrap();
        let mut r = &buf[..];
        assert!(
            matches!(read_frame(&mut r, 1024).await.unwrap(), Request::GetJob { job_id } if job_id == "j")
        );
        assert!(matches!(read_frame(&mut r, 1024).await.unwrap(), Reply::Ok));
        assert!(matches!(
            read_frame::<_, Reply>(&mut r, 1024).await,
            Err(WireError::Closed)
        ));
    }

    #[tokio::test]
    async fn oversized_is_refused_from_prefix() {
        let mut buf = (1u32 << 30).to_be_bytes().to_vec();
        buf.extend_from_slice(b"abc");
        let mut r = &buf[..];
        assert!(
            matches!(read_frame::<_, Request>(&mut r, 1024).await, Err(WireError::TooLarge { len, max: 1024 }) if len == 1 << 30)
        );
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        let mut buf = 5u32.to_be_bytes().to_vec();
        buf.extend_from_slice(&[0xc1, 0xff, 0x00, 0x13, 0x37]);
        let mut r = &buf[..];
        assert!(matches!(
            read_frame::<_, Request>(&mut r, 1024).await,
            Err(WireError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn truncated_body_is_io_error() {
        let mut buf = 10u32.to_be_bytes().to_vec();
        buf.extend_from_slice(&[1, 2]);
        let mut r = &buf[..];
        assert!(matches!(
            read_frame::<_, Request>(&mut r, 1024).await,
            Err(WireError::Io(_))
        ));
    }

    /// A frame from a newer version, or of another conversation: the
    /// reader meets a name it does not know, and the refusal's kind says
    /// so (`Unsupported`), apart from garbage and a known frame whose
    /// fields are wrong (`Invalid`). No error text is read to tell them
    /// apart.
    #[test]
    fn a_frame_of_a_newer_version_is_refused_as_unsupported_and_garbage_as_invalid() {
        #[derive(Serialize)]
        enum Newer {
            Shiny { job_id: String },
            Tick,
        }
        let body = |m: &Newer| {
            let mut buf = Vec::new();
            rmp_serde::encode::write_named(&mut buf, m).unwrap();
            buf
        };
        for newer in [Newer::Shiny { job_id: "j".into() }, Newer::Tick] {
            let err = decode_frame::<Request>(&body(&newer)).unwrap_err();
            assert!(matches!(err, WireError::Unknown { .. }), "{err}");
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        }
        // A worker's frame where a client's request is read.
        let mut drained = Vec::new();
        encode_into(&mut drained, &FromWorker::Drained).unwrap();
        let err = decode_frame::<Request>(&drained[4..]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("Drained"), "{err}");
        // Garbage, and a known name with fields of the wrong type.
        let garbage = decode_frame::<Request>(&[0xc1]).unwrap_err();
        assert_eq!(garbage.kind(), ErrorKind::Invalid, "{garbage}");
        // `{"Cancel": 5}`: a request this build knows, with no job id.
        let mut renamed = vec![0x81, 0xa6];
        renamed.extend_from_slice(b"Cancel");
        renamed.push(0x05);
        let wrong = decode_frame::<Request>(&renamed).unwrap_err();
        assert_eq!(wrong.kind(), ErrorKind::Invalid, "{wrong}");
    }

    #[test]
    fn the_first_frame_of_a_stream_opens_a_worker_link_or_a_request() {
        let body = |m: &dyn Fn(&mut Vec<u8>)| {
            let mut buf = Vec::new();
            m(&mut buf);
            buf.split_off(4)
        };
        let hello = body(&|b| {
            encode_into(
                b,
                &FromWorker::WorkerHello(Hello {
                    version: PROTOCOL_MIN,
                    node_id: "n".into(),
                    slots: 1,
                    jobs: vec![],
                    epoch: 0,
                    store: String::new(),
                    store_mark: String::new(),
                    newest: None,
                    build: String::new(),
                    shapes: Default::default(),
                }),
            )
            .unwrap()
        });
        assert!(matches!(
            decode_frame::<Opening>(&hello),
            Ok(Opening::Worker(Hello { .. }))
        ));
        let status = body(&|b| encode_into(b, &Request::GetStatus).unwrap());
        assert!(matches!(
            decode_frame::<Opening>(&status),
            Ok(Opening::Client(Request::GetStatus))
        ));
        let report = body(&|b| encode_into(b, &FromWorker::Draining).unwrap());
        let err = decode_frame::<Opening>(&report).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    }
}
