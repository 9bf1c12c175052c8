//! The pictures core shows: who shows which one ([`PictureUsage`], asked by pictures), and the
//! rule that `profile_pic` and a conversation's `picture` hold only names pictures stored.

use std::collections::HashSet;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};

use super::conversations::conversation;
use super::users::user;
use crate::platform::pictures::{
    PictureLookupError, PictureUsage, PictureUse, SharedCatalog, is_picture_name,
};

/// Answers [`PictureUsage`] from the `user` and `conversation` tables.
pub struct PictureUses {
    db: DatabaseConnection,
}

impl PictureUses {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    async fn read(&self, name: &str) -> Result<PictureUse, sea_orm::DbErr> {
        let profile = user::Entity::find()
            .select_only()
            .column(user::Column::Id)
            .filter(user::Column::ProfilePic.eq(name))
            .into_tuple::<String>()
            .one(&self.db)
            .await?
            .is_some();
        let conversations = conversation::Entity::find()
            .select_only()
            .column(conversation::Column::Id)
            .filter(conversation::Column::Picture.eq(name))
            .into_tuple::<String>()
            .all(&self.db)
            .await?;
        Ok(PictureUse {
            profile,
            conversations,
        })
    }

    async fn read_in_use(&self, names: &[String]) -> Result<HashSet<String>, sea_orm::DbErr> {
        let mut shown: HashSet<String> = user::Entity::find()
            .select_only()
            .column(user::Column::ProfilePic)
            .filter(user::Column::ProfilePic.is_in(names))
            .into_tuple::<String>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect();
        shown.extend(
            conversation::Entity::find()
                .select_only()
                .column(conversation::Column::Picture)
                .filter(conversation::Column::Picture.is_in(names))
                .into_tuple::<String>()
                .all(&self.db)
                .await?,
        );
        Ok(shown)
    }
}

impl PictureUsage for PictureUses {
    fn usage<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<PictureUse, PictureLookupError>> {
        async move {
            self.read(name)
                .await
                .map_err(|err| PictureLookupError(err.into()))
        }
        .boxed()
    }

    fn in_use<'a>(
        &'a self,
        names: &'a [String],
    ) -> BoxFuture<'a, Result<HashSet<String>, PictureLookupError>> {
        async move {
            self.read_in_use(names)
                .await
                .map_err(|err| PictureLookupError(err.into()))
        }
        .boxed()
    }
}

/// Why a picture name is refused.
#[derive(Debug, thiserror::Error)]
pub enum PictureRefused {
    #[error(
        "{0} is not a picture stored here: upload it to /pictures/upload and use the name it answers"
    )]
    Unknown(&'static str),
    #[error(transparent)]
    Lookup(#[from] PictureLookupError),
}

/// Checks picture names before core keeps them: with pictures hosted, only names it stored
/// (and claimed, so its orphan sweep keeps them); without it, names of the stored shape.
#[derive(Clone, Default)]
pub struct PictureNames {
    catalog: Option<SharedCatalog>,
}

impl PictureNames {
    pub fn new(catalog: Option<SharedCatalog>) -> Self {
        Self { catalog }
    }

    /// `field` is named in the refusal. An empty name clears the picture and is always fine.
    pub async fn check(&self, field: &'static str, name: &str) -> Result<(), PictureRefused> {
        if name.is_empty() {
            return Ok(());
        }
        if !is_picture_name(name) {
            return Err(PictureRefused::Unknown(field));
        }
        match &self.catalog {
            Some(catalog) if !catalog.claim(name).await? => Err(PictureRefused::Unknown(field)),
            _ => Ok(()),
        }
    }
}
