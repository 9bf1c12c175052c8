//! Object storage for pictures and other files: a local directory by default, any
//! S3-compatible server when `blobs.url` is `s3://BUCKET`.

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use futures_util::stream::BoxStream;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::{Method, Signer as _};
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, PutOptions,
    PutPayload,
};

use crate::config::BlobsConfig;

#[derive(Debug, thiserror::Error)]
pub enum BlobsError {
    #[error("invalid blob key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("blob storage: {0}")]
    Store(#[from] object_store::Error),
    #[error("blob directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// The same store when it can presign URLs (S3); a local directory cannot.
    signer: Option<Arc<AmazonS3>>,
    backend: &'static str,
}

/// An object's bytes as they arrive from the store, never all in memory at once.
pub type BlobStream = BoxStream<'static, Result<Bytes, BlobsError>>;

/// Listed by the readiness check: empty is the expected answer, proving the store responds.
const PROBE_PREFIX: &str = ".beep-readiness-probe";

impl Blobs {
    pub fn open(config: &BlobsConfig, data_dir: &FsPath) -> Result<Self, BlobsError> {
        if let Some(bucket) = config.url.strip_prefix("s3://") {
            let s3 = &config.s3;
            let mut builder = AmazonS3Builder::new()
                .with_bucket_name(bucket.trim_end_matches('/'))
                .with_region(&s3.region)
                .with_virtual_hosted_style_request(!s3.path_style)
                .with_allow_http(s3.allow_http);
            if !s3.endpoint.is_empty() {
                builder = builder.with_endpoint(&s3.endpoint);
            }
            if !s3.access_key_id.is_empty() {
                builder = builder
                    .with_access_key_id(&s3.access_key_id)
                    .with_secret_access_key(s3.secret_access_key.expose());
            }
            let s3 = Arc::new(builder.build()?);
            return Ok(Self {
                store: Arc::clone(&s3) as Arc<dyn ObjectStore>,
                signer: Some(s3),
                backend: "s3",
            });
        }
        let dir = if config.url.is_empty() {
            data_dir.join("blobs")
        } else {
            config.url.clone().into()
        };
        std::fs::create_dir_all(&dir).map_err(|source| BlobsError::Directory {
            path: dir.display().to_string(),
            source,
        })?;
        let local = LocalFileSystem::new_with_prefix(&dir)?.with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(local),
            signer: None,
            backend: "local",
        })
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The underlying store, for streaming reads and writes.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Parses a key such as `users/u-…/picture`; `..`, empty segments and the like are refused.
    pub fn key(key: &str) -> Result<Path, BlobsError> {
        Path::parse(key).map_err(|err| BlobsError::InvalidKey {
            key: key.to_owned(),
            reason: err.to_string(),
        })
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobsError> {
        self.store
            .put(&Self::key(key)?, PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// [`Self::put`], with the `Content-Type` S3 answers for it (to presigned URLs too). A
    /// local directory keeps no attributes (object_store refuses them there).
    pub async fn put_typed(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &'static str,
    ) -> Result<(), BlobsError> {
        if self.signer.is_none() {
            return self.put(key, bytes).await;
        }
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type.into());
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&Self::key(key)?, PutPayload::from(bytes), options)
            .await?;
        Ok(())
    }

    /// The object's bytes, or `None` when there is no such object.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobsError> {
        match self.store.get(&Self::key(key)?).await {
            Ok(result) => Ok(Some(result.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// The bytes of `range` of the object (all of it when `None`) as a stream, or `None` when
    /// there is no such object.
    pub async fn stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobStream>, BlobsError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        match self.store.get_opts(&Self::key(key)?, options).await {
            Ok(result) => Ok(Some(Box::pin(
                result.into_stream().map_err(BlobsError::from),
            ))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// A URL that lets anyone holding it GET the object for `expires_in`, or `None` when the
    /// store cannot presign (a local directory).
    pub async fn presigned_get(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<Option<String>, BlobsError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let url = signer
            .signed_url(Method::GET, &Self::key(key)?, expires_in)
            .await?;
        Ok(Some(url.to_string()))
    }

    /// Deletes the object; deleting a missing object succeeds on every backend (local
    /// directories would otherwise say NotFound where S3 says nothing).
    pub async fn delete(&self, key: &str) -> Result<(), BlobsError> {
        match self.store.delete(&Self::key(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Readiness: does the store answer (a missing bucket or refused credentials do not)?
    pub async fn check(&self) -> Result<(), BlobsError> {
        // A listing, not a HEAD: S3 servers answer HEAD on a missing bucket with a bare 404,
        // indistinguishable from a missing key.
        match self
            .store
            .list_with_delimiter(Some(&Path::from(PROBE_PREFIX)))
            .await
        {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}
