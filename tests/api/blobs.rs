//! Blob storage on a local directory and on S3.

use bytes::Bytes;

use crate::helpers::{TestApp, columns};

#[tokio::test]
async fn blobs_round_trip() {
    for column in columns() {
        let app = TestApp::spawn(column).await;
        let blobs = &app.platform().blobs;
        let picture: Bytes = (0..1_048_576u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        blobs
            .put("users/u-1/picture", picture.clone())
            .await
            .unwrap();
        assert_eq!(
            blobs.get("users/u-1/picture").await.unwrap(),
            Some(picture),
            "{column:?}"
        );
        blobs
            .put("users/u-1/picture", Bytes::from_static(b"replaced"))
            .await
            .unwrap();
        assert_eq!(
            blobs.get("users/u-1/picture").await.unwrap().as_deref(),
            Some(&b"replaced"[..])
        );
        blobs.delete("users/u-1/picture").await.unwrap();
        assert_eq!(
            blobs.get("users/u-1/picture").await.unwrap(),
            None,
            "{column:?}"
        );
        // Deleting what is not there succeeds on every backend.
        blobs.delete("users/u-1/picture").await.unwrap();
        app.stop().await;
    }
}

#[tokio::test]
async fn blob_keys_cannot_escape() {
    let app = TestApp::spawn(crate::helpers::Column::Embedded).await;
    for key in ["../etc/passwd", "a//b", "a/../b", ""] {
        assert!(
            app.platform()
                .blobs
                .put(key, Bytes::from_static(b"x"))
                .await
                .is_err(),
            "{key:?} accepted"
        );
    }
    app.stop().await;
}
