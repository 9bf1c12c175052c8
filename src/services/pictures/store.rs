//! Stored pictures: the bytes (picture and thumbnail) in the blob store, one row per picture
//! and one per uploader in the database. A row is written only after its bytes, and an orphan
//! is deleted in three steps (the row marked [`DELETING`], the bytes deleted, the row
//! deleted), so a live row never names missing bytes even when an upload of the same picture
//! races the sweep: an upload waits for a marked row to go, then stores the bytes again.

use std::collections::HashSet;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use sea_orm::ExprTrait as _;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::process::Processed;
use crate::platform::blobs::{Blobs, BlobsError};
use crate::platform::clock::Clock;
use crate::platform::db::by_key;
use crate::platform::pictures::{Claimed, PictureCatalog, PictureLookupError, is_picture_name};

pub mod picture {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "picture")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub width: i32,
        pub height: i32,
        pub bytes: i64,
        pub thumb_width: i32,
        pub thumb_height: i32,
        pub thumb_bytes: i64,
        pub created_at_ms: i64,
        pub orphan_since_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod uploader {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "picture_uploader")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub user: String,
        pub at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] DbErr),
    #[error(transparent)]
    Blobs(#[from] BlobsError),
    #[error(transparent)]
    Lookup(#[from] PictureLookupError),
}

/// Which of a picture's two encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Size {
    Full,
    Thumb,
}

/// A stored picture as a download needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPicture {
    pub name: String,
    pub bytes: u64,
    pub thumb_bytes: u64,
    pub uploaders: HashSet<String>,
}

impl StoredPicture {
    pub fn length(&self, size: Size) -> u64 {
        match size {
            Size::Full => self.bytes,
            Size::Thumb => self.thumb_bytes,
        }
    }
}

/// The blob key of a picture's encoding: spread over 256 directories by the hash's first byte.
pub fn blob_key(name: &str, size: Size) -> String {
    let fan_out = name.get(..2).unwrap_or("00");
    match (size, name.split_once('.')) {
        (Size::Thumb, Some((hash, extension))) => {
            format!("pictures/{fan_out}/{hash}-thumb.{extension}")
        }
        _ => format!("pictures/{fan_out}/{name}"),
    }
}

pub struct PictureStore {
    db: DatabaseConnection,
    blobs: Blobs,
    clock: Clock,
}

/// What the orphan sweep did in one pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub checked: usize,
    pub deleted: usize,
}

/// Rows read per sweep step (and names per `in_use` question).
const SWEEP_BATCH: u64 = 500;

/// `orphan_since_ms` of a picture whose bytes the sweep is deleting: not found, not claimable.
const DELETING: i64 = -1;

/// How often, and how long, an upload waits for the sweep to finish deleting its picture.
const DELETION_WAIT: std::time::Duration = std::time::Duration::from_millis(50);
const DELETION_WAITS: usize = 100;

impl PictureStore {
    pub fn new(db: DatabaseConnection, blobs: Blobs, clock: Clock) -> Self {
        Self { db, blobs, clock }
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// A live picture's row (not one being deleted).
    async fn row(&self, name: &str) -> Result<Option<picture::Model>, DbErr> {
        Ok(by_key(picture::Entity::find_by_id(name), &self.db)
            .await?
            .filter(|row| row.orphan_since_ms != Some(DELETING)))
    }

    pub async fn find(&self, name: &str) -> Result<Option<StoredPicture>, DbErr> {
        let Some(row) = self.row(name).await? else {
            return Ok(None);
        };
        let uploaders = uploader::Entity::find()
            .select_only()
            .column(uploader::Column::User)
            .filter(uploader::Column::Name.eq(name))
            .into_tuple::<String>()
            .all(&self.db)
            .await?;
        Ok(Some(StoredPicture {
            name: row.name,
            bytes: u64::try_from(row.bytes).unwrap_or_default(),
            thumb_bytes: u64::try_from(row.thumb_bytes).unwrap_or_default(),
            uploaders: uploaders.into_iter().collect(),
        }))
    }

    /// Stores `processed` for `user`. The same content stored before is not written again;
    /// `user` becomes one of its uploaders either way.
    pub async fn save(&self, processed: Processed, user: &str) -> Result<(), StoreError> {
        let name = processed.name.clone();
        let full = Bytes::from(processed.full.bytes);
        let thumb = Bytes::from(processed.thumb.bytes);
        let length = |bytes: &Bytes| i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        let side = |side: u32| i32::try_from(side).unwrap_or(i32::MAX);
        for _ in 0..DELETION_WAITS {
            let now = self.clock.now_millis();
            let found = by_key(picture::Entity::find_by_id(&name), &self.db).await?;
            match found.map(|row| row.orphan_since_ms) {
                Some(Some(DELETING)) => tokio::time::sleep(DELETION_WAIT).await,
                Some(_) => {
                    // Uploaded again: its grace period starts again, unless it is in use.
                    picture::Entity::update_many()
                        .col_expr(picture::Column::OrphanSinceMs, Expr::value(now))
                        .filter(picture::Column::Name.eq(&name))
                        .filter(picture::Column::OrphanSinceMs.gte(0))
                        .exec(&self.db)
                        .await?;
                    self.add_uploader(&name, user, now).await?;
                    // A sweep that marked it meanwhile deletes its bytes: store them again.
                    if self.row(&name).await?.is_some() {
                        return Ok(());
                    }
                }
                // Its bytes go first; a fresh row is not the sweep's for a grace period, so the
                // next turn finds it live and adds the uploader.
                None => {
                    let row = picture::ActiveModel {
                        name: Set(name.clone()),
                        width: Set(side(processed.full.width)),
                        height: Set(side(processed.full.height)),
                        bytes: Set(length(&full)),
                        thumb_width: Set(side(processed.thumb.width)),
                        thumb_height: Set(side(processed.thumb.height)),
                        thumb_bytes: Set(length(&thumb)),
                        created_at_ms: Set(now),
                        orphan_since_ms: Set(Some(now)),
                    };
                    let content_type = processed.format.content_type();
                    self.blobs
                        .put_typed(&blob_key(&name, Size::Thumb), thumb.clone(), content_type)
                        .await?;
                    self.blobs
                        .put_typed(&blob_key(&name, Size::Full), full.clone(), content_type)
                        .await?;
                    // A concurrent upload of the same content wrote the same bytes and row.
                    picture::Entity::insert(row)
                        .on_conflict(
                            OnConflict::column(picture::Column::Name)
                                .do_nothing()
                                .to_owned(),
                        )
                        .exec_without_returning(&self.db)
                        .await?;
                }
            }
        }
        Err(StoreError::Db(DbErr::Custom(format!(
            "picture {name} kept being deleted while it was stored"
        ))))
    }

    async fn add_uploader(&self, name: &str, user: &str, now: i64) -> Result<(), DbErr> {
        uploader::Entity::insert(uploader::ActiveModel {
            name: Set(name.to_owned()),
            user: Set(user.to_owned()),
            at_ms: Set(now),
        })
        .on_conflict(
            OnConflict::columns([uploader::Column::Name, uploader::Column::User])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// Marks `name` in use (unless the sweep is deleting it) and says whether `user`
    /// uploaded it.
    async fn mark_in_use(&self, name: &str, user: &str) -> Result<Claimed, DbErr> {
        if !is_picture_name(name) {
            return Ok(Claimed::Unknown);
        }
        let updated = picture::Entity::update_many()
            .col_expr(
                picture::Column::OrphanSinceMs,
                Expr::value(Option::<i64>::None),
            )
            .filter(picture::Column::Name.eq(name))
            .filter(
                picture::Column::OrphanSinceMs
                    .is_null()
                    .or(picture::Column::OrphanSinceMs.gte(0)),
            )
            .exec(&self.db)
            .await?;
        if updated.rows_affected == 0 {
            return Ok(Claimed::Unknown);
        }
        let uploaded = by_key(
            uploader::Entity::find_by_id((name.to_owned(), user.to_owned())),
            &self.db,
        )
        .await?
        .is_some();
        Ok(if uploaded {
            Claimed::Uploader
        } else {
            Claimed::Stored
        })
    }

    /// One pass of the orphan sweep over every stored picture: a picture `shown` does not
    /// list is marked orphan, one orphan since before `grace_ms` ago is deleted, one shown is
    /// unmarked. `deleted` is called with each deleted name.
    pub async fn sweep<F, Fut>(
        &self,
        grace_ms: i64,
        shown: F,
        mut deleted: impl FnMut(&str),
    ) -> Result<Swept, StoreError>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: Future<Output = Result<HashSet<String>, PictureLookupError>>,
    {
        let mut swept = Swept::default();
        let mut after = String::new();
        loop {
            let rows: Vec<(String, Option<i64>)> = picture::Entity::find()
                .select_only()
                .column(picture::Column::Name)
                .column(picture::Column::OrphanSinceMs)
                .filter(picture::Column::Name.gt(&after))
                .order_by_asc(picture::Column::Name)
                .limit(SWEEP_BATCH)
                .into_tuple()
                .all(&self.db)
                .await?;
            let Some((last, _)) = rows.last() else {
                return Ok(swept);
            };
            after = last.clone();
            swept.checked += rows.len();
            let names: Vec<String> = rows.iter().map(|(name, _)| name.clone()).collect();
            let in_use = shown(names).await?;
            let now = self.clock.now_millis();
            for (name, orphan_since) in rows {
                let due = match (in_use.contains(&name), orphan_since) {
                    // A deletion a stopped sweep left half done.
                    (_, Some(DELETING)) => Some(DELETING),
                    (true, Some(_)) => {
                        self.set_orphan_since(&name, None).await?;
                        None
                    }
                    (false, None) => {
                        self.set_orphan_since(&name, Some(now)).await?;
                        None
                    }
                    (false, Some(since)) if now - since >= grace_ms => Some(since),
                    _ => None,
                };
                if let Some(since) = due
                    && self.delete_orphan(&name, since).await?
                {
                    swept.deleted += 1;
                    deleted(&name);
                }
            }
        }
    }

    async fn set_orphan_since(&self, name: &str, since: Option<i64>) -> Result<(), DbErr> {
        picture::Entity::update_many()
            .col_expr(picture::Column::OrphanSinceMs, Expr::value(since))
            .filter(picture::Column::Name.eq(name))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Deletes `name` if it is still orphan since `since`: a claim in between (which clears
    /// the mark) or a new upload (which moves it) keeps it. Marked first, so neither can
    /// revive it while its bytes go.
    async fn delete_orphan(&self, name: &str, since: i64) -> Result<bool, StoreError> {
        let marked = picture::Entity::update_many()
            .col_expr(picture::Column::OrphanSinceMs, Expr::value(DELETING))
            .filter(picture::Column::Name.eq(name))
            .filter(picture::Column::OrphanSinceMs.eq(since))
            .exec(&self.db)
            .await?;
        if marked.rows_affected == 0 {
            return Ok(false);
        }
        for size in [Size::Full, Size::Thumb] {
            self.blobs.delete(&blob_key(name, size)).await?;
        }
        uploader::Entity::delete_many()
            .filter(uploader::Column::Name.eq(name))
            .exec(&self.db)
            .await?;
        picture::Entity::delete_by_id(name).exec(&self.db).await?;
        Ok(true)
    }
}

impl PictureCatalog for PictureStore {
    fn claim<'a>(
        &'a self,
        name: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Claimed, PictureLookupError>> {
        async move {
            self.mark_in_use(name, user)
                .await
                .map_err(|err| PictureLookupError(err.into()))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fan_out_by_the_first_byte_of_the_hash() {
        let name = "ab23456789abcdef0123456789abcdef.jpg";
        assert_eq!(
            blob_key(name, Size::Full),
            "pictures/ab/ab23456789abcdef0123456789abcdef.jpg"
        );
        assert_eq!(
            blob_key(name, Size::Thumb),
            "pictures/ab/ab23456789abcdef0123456789abcdef-thumb.jpg"
        );
    }
}
