//! The pictures core shows: who shows which one ([`PictureUsage`], asked by pictures), and the
//! rule that `profile_pic` and a conversation's `picture` hold only names pictures stored.

use std::collections::HashSet;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use std::sync::Arc;

use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, JoinType, QueryFilter, QuerySelect,
    RelationTrait as _,
};

use super::conversations::{conversation, member};
use super::users::user;
use crate::platform::pictures::{
    Claimed, LISTED_CONVERSATIONS, PictureLookupError, PictureUsage, PictureUse, SharedCatalog,
    is_picture_name,
};

/// Answers [`PictureUsage`] from the `user` and `conversation` tables.
pub struct PictureUses {
    db: DatabaseConnection,
}

impl PictureUses {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    async fn is_profile_pic(&self, name: &str) -> Result<bool, sea_orm::DbErr> {
        Ok(user::Entity::find()
            .select_only()
            .column(user::Column::Id)
            .filter(user::Column::ProfilePic.eq(name))
            .into_tuple::<String>()
            .one(&self.db)
            .await?
            .is_some())
    }

    async fn read_shown_to(&self, name: &str, viewer: &str) -> Result<bool, sea_orm::DbErr> {
        if self.is_profile_pic(name).await? {
            return Ok(true);
        }
        Ok(member::Entity::find()
            .select_only()
            .column(member::Column::Conversation)
            .join(JoinType::InnerJoin, member::Relation::Conversation.def())
            .filter(member::Column::User.eq(viewer))
            .filter(conversation::Column::Picture.eq(name))
            .into_tuple::<String>()
            .one(&self.db)
            .await?
            .is_some())
    }

    async fn read(&self, name: &str) -> Result<PictureUse, sea_orm::DbErr> {
        let profile = self.is_profile_pic(name).await?;
        let mut conversations = conversation::Entity::find()
            .select_only()
            .column(conversation::Column::Id)
            .filter(conversation::Column::Picture.eq(name))
            .limit(LISTED_CONVERSATIONS + 1)
            .into_tuple::<String>()
            .all(&self.db)
            .await?;
        let more = conversations.len() as u64 > LISTED_CONVERSATIONS;
        conversations.truncate(LISTED_CONVERSATIONS as usize);
        Ok(PictureUse {
            profile,
            conversations,
            more,
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

    fn shown_to<'a>(
        &'a self,
        name: &'a str,
        user: &'a str,
    ) -> BoxFuture<'a, Result<bool, PictureLookupError>> {
        async move {
            self.read_shown_to(name, user)
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
    #[error("{0} is a picture you neither uploaded nor are shown")]
    NotYours(&'static str),
    #[error(transparent)]
    Lookup(#[from] PictureLookupError),
}

/// Checks picture names before core keeps them. With pictures hosted: only names it stored,
/// which the user uploaded or is already shown (so a name someone kept after leaving a
/// conversation cannot be made everyone's profile picture), claimed so the orphan sweep keeps
/// them. Without it: names of the stored shape.
#[derive(Clone, Default)]
pub struct PictureNames {
    checked: Option<(SharedCatalog, Arc<PictureUses>)>,
}

impl PictureNames {
    pub fn new(catalog: Option<SharedCatalog>, uses: Arc<PictureUses>) -> Self {
        Self {
            checked: catalog.map(|catalog| (catalog, uses)),
        }
    }

    /// May `user` show `name` in `field`? An empty name clears the picture and is always fine.
    pub async fn check(
        &self,
        field: &'static str,
        name: &str,
        user: &str,
    ) -> Result<(), PictureRefused> {
        if name.is_empty() {
            return Ok(());
        }
        if !is_picture_name(name) {
            return Err(PictureRefused::Unknown(field));
        }
        let Some((catalog, uses)) = &self.checked else {
            return Ok(());
        };
        match catalog.claim(name, user).await? {
            Claimed::Unknown => Err(PictureRefused::Unknown(field)),
            Claimed::Uploader => Ok(()),
            Claimed::Stored => {
                let shown = uses
                    .read_shown_to(name, user)
                    .await
                    .map_err(|err| PictureLookupError(err.into()))?;
                if shown {
                    Ok(())
                } else {
                    Err(PictureRefused::NotYours(field))
                }
            }
        }
    }
}
