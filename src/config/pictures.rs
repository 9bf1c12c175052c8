//! `[pictures]`.

use serde::{Deserialize, Serialize};

use super::{BlobsConfig, ConfigError};

/// How downloads are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PictureServing {
    /// Beep streams the bytes (any blob store).
    Stream,
    /// A `302` to a short-lived presigned URL: the bytes never pass through Beep (S3 only).
    Redirect,
}

/// Picture upload, processing, serving and clean-up.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PicturesConfig {
    /// Largest upload accepted, in bytes; a larger body is refused with 413 while it streams.
    pub max_upload_bytes: usize,
    /// Largest width or height an upload may declare, checked from its header before decoding.
    pub max_input_side: u32,
    /// Largest pixel area an upload may declare (decompression bombs), checked the same way.
    /// Decoding one upload takes at most 4 bytes for each of these pixels (200 MB at the
    /// default); a 16-bit or grey picture must fit that too, so its largest area is smaller.
    pub max_input_pixels: u64,
    /// Stored pictures are scaled down to this longest side (never up).
    pub max_side: u32,
    /// Longest side of the thumbnail served with `?size=thumb`.
    pub thumb_side: u32,
    /// JPEG quality of stored pictures (1-100).
    pub jpeg_quality: u8,
    /// Uploads decoded and encoded at once, off the async workers; 0 means one per CPU.
    pub concurrent_uploads: usize,
    /// An upload's whole body must arrive within this (a slow client holds an upload slot).
    pub upload_timeout_secs: u64,
    /// Uploads in progress at once (receiving or waiting to be processed); past it, 503
    /// `pictures_busy` with `Retry-After`. Bounds memory to about this many bodies.
    pub uploads_in_flight: usize,
    /// A picture nobody shows (no profile, no conversation) for this long is deleted.
    pub orphan_grace_secs: u64,
    /// How often the orphan sweep runs.
    pub gc_interval_secs: u64,
    /// `stream` (default) or `redirect` (S3 blobs only).
    pub serve: PictureServing,
    /// Lifetime of a presigned URL in `redirect` mode.
    pub redirect_ttl_secs: u64,
    /// How long who-shows-which-picture answers are cached; changes announced by core clear
    /// them sooner.
    pub access_cache_ttl_secs: u64,
    /// Bytes of small pictures and thumbnails kept in memory for downloads.
    pub memory_cache_bytes: usize,
}

impl Default for PicturesConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 10_000_000,
            max_input_side: 12_000,
            max_input_pixels: 50_000_000,
            max_side: 2048,
            thumb_side: 256,
            jpeg_quality: 82,
            concurrent_uploads: 0,
            upload_timeout_secs: 60,
            uploads_in_flight: 16,
            orphan_grace_secs: 86_400,
            gc_interval_secs: 600,
            serve: PictureServing::Stream,
            redirect_ttl_secs: 300,
            access_cache_ttl_secs: 60,
            memory_cache_bytes: 32 << 20,
        }
    }
}

impl PicturesConfig {
    pub(super) fn validate(&self, blobs: &BlobsConfig) -> Result<(), ConfigError> {
        let invalid = |message: &str| Err(ConfigError::Invalid(format!("pictures.{message}")));
        if self.serve == PictureServing::Redirect && !blobs.url.starts_with("s3://") {
            return invalid("serve = \"redirect\" needs S3 blobs (blobs.url = \"s3://BUCKET\")");
        }
        // S3 refuses presigned URLs valid for more than 7 days.
        if !(1..=7 * 86_400).contains(&self.redirect_ttl_secs) {
            return invalid("redirect_ttl_secs must be between 1 and 604800");
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return invalid("jpeg_quality must be between 1 and 100");
        }
        if self.thumb_side == 0 || self.max_side < self.thumb_side {
            return invalid("thumb_side must be at least 1 and at most max_side");
        }
        if self.max_upload_bytes == 0 || self.uploads_in_flight == 0 || self.gc_interval_secs == 0 {
            return invalid(
                "max_upload_bytes, uploads_in_flight and gc_interval_secs must be above 0",
            );
        }
        // The encoder takes 16-bit sides.
        if self.max_side > u32::from(u16::MAX) {
            return invalid("max_side must be at most 65535");
        }
        Ok(())
    }
}
