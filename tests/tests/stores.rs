//! One conformance suite for the resolver's store layer, run against every backend: a directory
//! and a real S3 server.

use std::sync::Arc;
use std::time::Duration;

use imgfetch_resolver::config::StoreSpec;
use imgfetch_resolver::store::{Limits, ReadPool, Store, StoreErrorKind};
use imgfetch_tests::s3::S3Server;
use imgfetch_tests::{sample, within};
use object_store::path::Path;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions};

/// Everything a backend must do the same way. `writer` seeds objects into the same place the
/// store reads from.
async fn conformance(name: &str, spec: StoreSpec, writer: Arc<dyn ObjectStore>) {
    let jpeg = sample("harbor/quay-east.jpg");
    for key in ["top.jpg", "deep/er/nested.jpg", "青岛/港口.jpg"] {
        // `parse` keeps Unicode as it is, the way files and objects are really named.
        writer
            .put(&Path::parse(key).unwrap(), jpeg.clone().into())
            .await
            .unwrap();
    }
    let store = Store::open(name, &spec, Duration::from_secs(5), &ReadPool::new(2))
        .await
        .unwrap();

    for key in ["top.jpg", "deep/er/nested.jpg", "青岛/港口.jpg"] {
        let got = store
            .read(key, Limits::whole(1 << 20))
            .await
            .unwrap_or_else(|e| panic!("{name}: {key}: {e}"));
        assert_eq!(got.bytes.as_ref(), jpeg.as_slice(), "{name}: {key}");
        assert!(
            got.last_modified.contains('T'),
            "{name}: {}",
            got.last_modified
        );
    }

    let missing = store
        .read("absent.jpg", Limits::whole(1 << 20))
        .await
        .unwrap_err();
    assert_eq!(
        missing.kind(),
        StoreErrorKind::NotFound,
        "{name}: {missing}"
    );
    let missing_dir = store
        .read("nowhere/absent.jpg", Limits::whole(1 << 20))
        .await
        .unwrap_err();
    assert_eq!(
        missing_dir.kind(),
        StoreErrorKind::NotFound,
        "{name}: {missing_dir}"
    );

    // Over the inline limit: the head only, and the rest by ranges that reassemble the image.
    let streamed = Limits {
        max: 1 << 20,
        inline: 1000,
    };
    let got = store.read("deep/er/nested.jpg", streamed).await.unwrap();
    assert_eq!(got.size, jpeg.len() as u64, "{name}");
    let head = jpeg
        .len()
        .min(imgfetch_resolver::store::HEAD_BYTES as usize);
    assert_eq!(got.bytes.as_ref(), &jpeg[..head], "{name}");
    let body = got.body.expect("a body to read by ranges");
    let mut whole = Vec::new();
    let mut at = 0u64;
    while at < got.size {
        let end = (at + 777).min(got.size);
        whole.extend_from_slice(&body.read(at..end).await.unwrap());
        at = end;
    }
    assert_eq!(whole, jpeg, "{name}: ranges reassemble the image");
    // Replaced meanwhile: never a mix of two images.
    writer
        .put(
            &Path::parse("deep/er/nested.jpg").unwrap(),
            vec![7u8; jpeg.len()].into(),
        )
        .await
        .unwrap();
    match body.read(0..100).await {
        Ok(bytes) => assert_eq!(bytes.as_ref(), &jpeg[..100], "{name}: the old image whole"),
        Err(err) => assert_eq!(err.kind(), StoreErrorKind::Transient, "{name}: {err}"),
    }

    let big = store.read("top.jpg", Limits::whole(100)).await.unwrap_err();
    assert_eq!(big.kind(), StoreErrorKind::TooLarge, "{name}: {big}");
    assert!(
        big.to_string().contains(&jpeg.len().to_string()),
        "{name}: {big}"
    );

    for key in ["../escape.jpg", "a/../../b.jpg", "a//b.jpg"] {
        let bad = store.read(key, Limits::whole(1 << 20)).await.unwrap_err();
        assert_eq!(
            bad.kind(),
            StoreErrorKind::InvalidKey,
            "{name}: {key}: {bad}"
        );
    }
}

#[tokio::test]
async fn file_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let writer =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let suite = conformance(
        "file",
        StoreSpec::File {
            root: dir.path().into(),
        },
        writer,
    );
    within(
        "the directory store's suite",
        Duration::from_secs(60),
        suite,
    )
    .await;
}

#[tokio::test]
async fn s3_store_conforms() {
    let s3 = S3Server::start();
    s3.create_bucket("images");
    let suite = conformance("s3", s3.spec("images"), Arc::new(s3.client("images")));
    within("the S3 store's suite", Duration::from_secs(60), suite).await;
}

#[tokio::test]
async fn s3_user_metadata_comes_back_as_attributes() {
    let s3 = S3Server::start();
    s3.create_bucket("images");
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata("location".into()),
        "Qingdao harbor".into(),
    );
    attributes.insert(
        Attribute::Metadata("captured-at".into()),
        "2026-11-20T08:15:30+08:00".into(),
    );
    s3.client("images")
        .put_opts(
            &"a.jpg".into(),
            sample("harbor/quay-east.jpg").into(),
            PutOptions {
                attributes,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let store = Store::open(
        "s3",
        &s3.spec("images"),
        Duration::from_secs(5),
        &ReadPool::new(2),
    )
    .await
    .unwrap();
    let got = store.read("a.jpg", Limits::whole(1 << 20)).await.unwrap();
    let attr = |n: &str| {
        got.attributes
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        attr("location").as_deref(),
        Some("Qingdao harbor"),
        "{:?}",
        got.attributes
    );
    assert_eq!(
        attr("captured-at").as_deref(),
        Some("2026-11-20T08:15:30+08:00")
    );
}

#[tokio::test]
async fn s3_prefix_confines_keys_to_it() {
    let s3 = S3Server::start();
    s3.create_bucket("images");
    let client = s3.client("images");
    client
        .put(
            &"zone-a/x.jpg".into(),
            sample("harbor/quay-east.jpg").into(),
        )
        .await
        .unwrap();
    client
        .put(&"other/y.jpg".into(), sample("harbor/quay-east.jpg").into())
        .await
        .unwrap();
    let spec = StoreSpec::S3 {
        bucket: "images".into(),
        prefix: Some("zone-a".into()),
        options: s3.options(),
    };
    let store = Store::open("s3", &spec, Duration::from_secs(5), &ReadPool::new(2))
        .await
        .unwrap();
    assert!(store.read("x.jpg", Limits::whole(1 << 20)).await.is_ok());
    assert_eq!(
        store
            .read("other/y.jpg", Limits::whole(1 << 20))
            .await
            .unwrap_err()
            .kind(),
        StoreErrorKind::NotFound
    );
}
