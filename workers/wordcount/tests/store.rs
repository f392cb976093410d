#![allow(clippy::unwrap_used)]
//! The cluster's object store against a real S3-compatible server (moto's,
//! a separate process): what Ringleader relies on from S3, shown.

mod common;

use std::io::Write;

use common::*;
use ringleader::store::Store;
use ringleader::testkit::s3::S3Server;

fn open(s3: &S3Server, secret: Option<&str>) -> Store {
    let opts = s3.options(secret);
    let opts: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Store::open_with(&s3.url("t"), &opts).unwrap()
}

/// Signatures are checked (a wrong secret is refused), a second
/// create-only write of one name is refused (412 to `If-None-Match: *`),
/// ranged reads return exactly the range, multipart uploads reassemble,
/// deletion is by exact name, and a listing under a directory (a prefix
/// with `/`s, signed) names what is under it and nothing beside it.
#[test]
fn s3_checks_signatures_refuses_a_second_create_and_serves_ranges_and_multipart() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(dir.path(), None);
    let good = open(&s3, None);
    let forged = open(&s3, Some("not-the-secret"));
    rt().block_on(async {
        let refused = forged.probe("forged").await.unwrap_err().to_string();
        assert!(refused.contains("Signature"), "{refused}");
        good.probe("good").await.unwrap();

        good.put_new("jobs/a/x.out", b"hello world".to_vec())
            .await
            .unwrap();
        let again = good
            .put_new("jobs/a/x.out", b"other".to_vec())
            .await
            .unwrap_err();
        assert!(again.is_already_exists(), "{again}");
        assert_eq!(
            good.get("jobs/a/x.out").await.unwrap().as_ref(),
            b"hello world"
        );
        assert_eq!(
            good.get_range("jobs/a/x.out", 6..11)
                .await
                .unwrap()
                .as_ref(),
            b"world"
        );

        // 20 MiB in 8 MiB parts.
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let sent = good
            .upload(f.path(), "inputs/u/big.bin", |_| {})
            .await
            .unwrap();
        assert_eq!(sent, data.len() as u64);
        assert_eq!(
            good.size("inputs/u/big.bin").await.unwrap(),
            data.len() as u64
        );
        let mid = (9u64 << 20) - 3..(9u64 << 20) + 5;
        let got = good
            .get_range("inputs/u/big.bin", mid.clone())
            .await
            .unwrap();
        assert_eq!(got.as_ref(), &data[mid.start as usize..mid.end as usize]);

        good.put_new("jobs/a.b/y.out", b"beside".to_vec())
            .await
            .unwrap();
        assert_eq!(good.list("jobs/a/").await.unwrap(), vec!["jobs/a/x.out"]);
        let refused = forged.list("jobs/a/").await.unwrap_err().to_string();
        assert!(refused.contains("Signature"), "{refused}");

        good.delete("jobs/a/x.out").await.unwrap();
        good.delete("jobs/a/x.out").await.unwrap();
        assert!(good.get("jobs/a/x.out").await.unwrap_err().is_not_found());
    });
}
