//! A real S3-compatible server for tests: moto's server (`moto_server`,
//! installed by `scripts/setup` from PyPI), as a separate process on this
//! machine's loopback or on a test host of its own. Signatures are
//! checked: the server starts with `INITIAL_NO_AUTH_ACTION_COUNT` set, so
//! only the bootstrap requests made here (a user, its policy, its access
//! key, the bucket) go unsigned, and every later request must carry a
//! valid SigV4 signature of that key. It serves ranged GETs and multipart
//! uploads and answers 412 to a second `If-None-Match: *` write.
//!
//! moto (5.x) checks a signature against the request's query as it
//! renders it again, unescaped: a listing whose prefix holds a `/` (every
//! job directory's) is refused, from boto3 as from us. The server is
//! started with that one thing mended (`QUERY_ESCAPED`): the query's
//! names and values escaped as SigV4 says, before moto's own check.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Requests the server takes unsigned: CreateUser, PutUserPolicy,
/// CreateAccessKey, CreateBucket.
const BOOTSTRAP_REQUESTS: u32 = 4;

/// A running server with a bucket and an access key that may use it.
pub struct S3Server {
    child: Option<Child>,
    addr: SocketAddr,
    /// The bucket made for the test.
    pub bucket: String,
    /// The access key's id.
    pub key_id: String,
    /// The access key's secret.
    pub secret: String,
}

/// Python that mends moto's signature check (see the module doc) and runs
/// moto's server with the arguments that follow.
const QUERY_ESCAPED: &str = r#"
import sys, urllib.parse
import moto.core.authorization as authorization
from moto.server import main
check = authorization.ActionAuthenticatorMixin._authenticate_and_authorize_action
def escape(pair):
    return "=".join(
        urllib.parse.quote(urllib.parse.unquote(part), safe="-_.~")
        for part in pair.split("=", 1)
    )
def escaped(self, *args, **kwargs):
    uri = self.uri
    parts = urllib.parse.urlsplit(uri)
    if parts.query:
        query = "&".join(escape(pair) for pair in parts.query.split("&"))
        self.uri = urllib.parse.urlunsplit(parts._replace(query=query))
    try:
        return check(self, *args, **kwargs)
    finally:
        self.uri = uri
authorization.ActionAuthenticatorMixin._authenticate_and_authorize_action = escaped
sys.exit(main())
"#;

/// The Python that runs `moto_server` (its script's interpreter line, or
/// `python3` beside it: a pyenv shim).
fn moto_python(server: &Path) -> PathBuf {
    let named = std::fs::read_to_string(server).ok().and_then(|text| {
        let first = text.lines().next()?.strip_prefix("#!")?.trim().to_string();
        (first.contains("python") && !first.contains(' ')).then(|| PathBuf::from(first))
    });
    named.unwrap_or_else(|| server.with_file_name("python3"))
}

/// Where `moto_server` is: on the PATH, or where `scripts/setup` puts it.
fn moto_server() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/opt/ringleader-s3/bin/moto_server"))
}

/// One HTTP/1.1 request; returns the status and body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    service: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    // The credential scope tells moto's server which service is meant; the
    // signature of a bootstrap request is not checked.
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=bootstrap/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, out))
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

fn form(s: &str) -> String {
    crate::prom::url_encode(s)
}

impl S3Server {
    /// Starts a server on loopback (`host` `None`) or on a test host
    /// (`Some((netns, ip))`), logging to `dir/s3.log`, and bootstraps a
    /// bucket and an access key. Panics on failure (test set-up).
    pub fn start(dir: &Path, host: Option<(&str, IpAddr)>) -> S3Server {
        let (netns, ip, port) = match host {
            Some((ns, ip)) => (Some(ns), ip, 9000),
            None => (
                None,
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                crate::zkserver::free_port().expect("a free port"),
            ),
        };
        let addr = SocketAddr::new(ip, port);
        let bin = moto_server();
        let log = std::fs::File::create(dir.join("s3.log")).expect("s3 log file");
        let mut command = crate::process::command_in(netns, moto_python(&bin));
        command
            .args([
                "-c",
                QUERY_ESCAPED,
                "-H",
                &ip.to_string(),
                "-p",
                &port.to_string(),
            ])
            .env(
                "INITIAL_NO_AUTH_ACTION_COUNT",
                BOOTSTRAP_REQUESTS.to_string(),
            );
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (run scripts/setup to install moto's server): {e}",
                    bin.display()
                )
            });
        let mut server = S3Server {
            child: Some(child),
            addr,
            bucket: "ringleader-test".into(),
            key_id: String::new(),
            secret: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto's server did not listen on {addr} within 60 s; see {}",
                dir.join("s3.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let iam = |body: &str| {
            let (status, text) = http(addr, "POST", "/", "iam", body).expect("IAM request");
            assert_eq!(status, 200, "IAM bootstrap failed: {text}");
            text
        };
        iam("Action=CreateUser&UserName=ringleader&Version=2010-05-08");
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        iam(&format!(
            "Action=PutUserPolicy&UserName=ringleader&PolicyName=s3&PolicyDocument={}&Version=2010-05-08",
            form(policy)
        ));
        let key = iam("Action=CreateAccessKey&UserName=ringleader&Version=2010-05-08");
        server.key_id = between(&key, "<AccessKeyId>", "</AccessKeyId>")
            .expect("an access key id")
            .to_string();
        server.secret = between(&key, "<SecretAccessKey>", "</SecretAccessKey>")
            .expect("a secret key")
            .to_string();
        let (status, text) = http(addr, "PUT", &format!("/{}", server.bucket), "s3", "")
            .expect("CreateBucket request");
        assert_eq!(status, 200, "CreateBucket failed: {text}");
        server
    }

    /// `http://ip:port`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The `AWS_*` variables a node or client needs to use it.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ENDPOINT".into(), self.endpoint()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    /// The same as `object_store` options, with another secret if given.
    pub fn options(&self, secret: Option<&str>) -> Vec<(String, String)> {
        vec![
            ("aws_access_key_id".into(), self.key_id.clone()),
            (
                "aws_secret_access_key".into(),
                secret.unwrap_or(&self.secret).to_string(),
            ),
            ("aws_region".into(), "us-east-1".into()),
            ("aws_endpoint".into(), self.endpoint()),
            ("aws_allow_http".into(), "true".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::process::terminate(&mut c, Duration::from_secs(3));
        }
    }
}
