//! Probing an S3 tier against a real S3 server (moto, over HTTP): HeadBucket tells a missing
//! bucket, refused credentials and an endpoint nobody answers on apart, and the usage listing
//! adds up the tier's prefix only, stopping at its page limit on a large tier.

use std::net::{Ipv4Addr, TcpListener};

use aigc_storage::testing::MotoServer;
use aigc_storage::{Error, S3Config, S3Credentials, S3Tier, Usage};

#[tokio::test]
async fn usage_adds_up_the_prefix_and_says_when_it_stopped_early() {
    let server = MotoServer::start().unwrap();
    server.create_bucket("usage").await;
    let client = server.client().await;
    for (key, body) in [
        ("tier/a.bin", vec![1u8; 100]),
        ("tier/nested/b.bin", vec![2u8; 20]),
        ("tier/nested/c.bin", vec![3u8; 3]),
        ("tier/folder/", Vec::new()),
        ("elsewhere/d.bin", vec![4u8; 1000]),
    ] {
        client
            .put_object()
            .bucket("usage")
            .key(key)
            .body(body.into())
            .send()
            .await
            .unwrap();
    }
    let tier = S3Tier::new(&server.config(None), "usage", "tier")
        .await
        .unwrap();
    tier.head_bucket().await.unwrap();
    assert_eq!(
        tier.usage(1000, 10).await.unwrap(),
        Usage {
            bytes: 123,
            objects: 3,
            complete: true
        }
    );
    // Two keys a page, one page: a lower bound, and said to be one.
    let partial = tier.usage(2, 1).await.unwrap();
    assert!(!partial.complete, "{partial:?}");
    assert!(partial.objects < 3, "{partial:?}");
    // Exactly as many pages as the listing needs is complete.
    assert!(tier.usage(2, 2).await.unwrap().complete);

    let empty = S3Tier::new(&server.config(None), "usage", "nothing-here/")
        .await
        .unwrap();
    assert_eq!(
        empty.usage(1000, 10).await.unwrap(),
        Usage {
            bytes: 0,
            objects: 0,
            complete: true
        }
    );
}

#[tokio::test]
async fn head_bucket_tells_missing_buckets_refused_keys_and_silent_endpoints_apart() {
    let server = MotoServer::start_with_user().unwrap();
    server.create_bucket("present").await;
    let good = S3Tier::new(&server.config(None), "present", "")
        .await
        .unwrap();
    good.head_bucket().await.unwrap();

    let missing = S3Tier::new(&server.config(None), "absent", "")
        .await
        .unwrap();
    let err = missing.head_bucket().await.unwrap_err();
    assert!(matches!(err, Error::TierNotFound { .. }), "{err}");
    assert!(err.to_string().contains("\"absent\""), "{err}");

    let wrong = S3Config {
        credentials: S3Credentials::Static {
            access_key_id: server.access_key().to_owned(),
            secret_access_key: "not-the-secret".into(),
            session_token: None,
        },
        ..server.config(None)
    };
    let tier = S3Tier::new(&wrong, "present", "").await.unwrap();
    for err in [
        tier.head_bucket().await.unwrap_err(),
        tier.usage(1000, 1).await.unwrap_err(),
    ] {
        assert!(matches!(err, Error::AccessDenied { .. }), "{err}");
    }

    // A loopback port nobody listens on.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let silent = S3Config {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..server.config(None)
    };
    let tier = S3Tier::new(&silent, "present", "").await.unwrap();
    let err = tier.head_bucket().await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}
