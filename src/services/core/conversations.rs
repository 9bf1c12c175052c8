//! Conversations and their members: the tables, and the one place that decides who is a member.

use anyhow::Context as _;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait as _,
    QueryFilter, QueryOrder, QuerySelect, SqlErr, TransactionTrait as _,
};
use serde::{Deserialize, Serialize};

use super::error::CoreError;
use super::users::user;
use crate::platform::clock::Clock;
use crate::platform::db::by_key;
use crate::platform::ids::random_hex128;
use crate::platform::membership::MembershipSource;

pub mod conversation {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "conversation")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub title: Option<String>,
        pub picture: Option<String>,
        pub created_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod member {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "member")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub user: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub conversation: String,
        pub pinned: bool,
        pub joined_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        #[sea_orm(
            belongs_to = "super::conversation::Entity",
            from = "Column::Conversation",
            to = "super::conversation::Column::Id"
        )]
        Conversation,
        #[sea_orm(
            belongs_to = "crate::services::core::users::user::Entity",
            from = "Column::User",
            to = "crate::services::core::users::user::Column::Id"
        )]
        User,
    }

    impl Related<super::conversation::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Conversation.def()
        }
    }

    impl Related<crate::services::core::users::user::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::User.def()
        }
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// A conversation as the original served it: with the caller's own pin flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Conversation)]
pub struct ConversationView {
    pub id: String,
    pub title: Option<String>,
    pub picture: Option<String>,
    pub pinned: bool,
}

impl ConversationView {
    pub fn new(conversation: conversation::Model, pinned: bool) -> Self {
        Self {
            id: conversation.id,
            title: conversation.title,
            picture: conversation.picture,
            pinned,
        }
    }
}

/// A membership as the original's member events carried it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub user: String,
    pub conversation: String,
    pub pinned: bool,
}

/// What `POST`/`PATCH /user/conversation` may set; absent fields are left alone.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct ConversationPatch {
    /// `null` clears it.
    #[serde(default, deserialize_with = "super::users::present")]
    #[schema(value_type = Option<String>, max_length = 256)]
    pub title: Option<Option<String>>,
    /// A picture's stored name (from the pictures service); `null` clears it.
    #[serde(default, deserialize_with = "super::users::present")]
    #[schema(value_type = Option<String>, max_length = 256)]
    pub picture: Option<Option<String>>,
    /// Sent by the original clients for direct messages; the original ignored it too.
    #[serde(default, rename = "dm")]
    pub _dm: Option<bool>,
}

/// The longest title or picture reference accepted.
pub const MAX_TITLE_CHARS: usize = 256;

/// What removing a member did.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// The last member left, so the conversation went with them.
    ConversationDeleted,
}

pub struct Conversations {
    db: DatabaseConnection,
    clock: Clock,
}

/// `c-` + 128 random bits, the original's conversation id form.
pub fn new_conversation_id() -> String {
    format!("c-{}", random_hex128())
}

impl Conversations {
    pub fn new(db: DatabaseConnection, clock: Clock) -> Self {
        Self { db, clock }
    }

    /// Creates a conversation with `creator` as its first member, in one transaction.
    pub async fn create(
        &self,
        creator: &str,
        patch: ConversationPatch,
    ) -> Result<conversation::Model, DbErr> {
        let now = self.clock.now_millis();
        let row = conversation::Model {
            id: new_conversation_id(),
            title: patch.title.flatten(),
            picture: patch.picture.flatten(),
            created_at: now,
        };
        let txn = self.db.begin().await?;
        conversation::Entity::insert(conversation::ActiveModel {
            id: Set(row.id.clone()),
            title: Set(row.title.clone()),
            picture: Set(row.picture.clone()),
            created_at: Set(now),
        })
        .exec_without_returning(&txn)
        .await?;
        member::Entity::insert(new_member(creator, &row.id, now))
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        Ok(row)
    }

    /// `user`'s conversations with their pin flags, ordered by id, after the cursor `after`.
    pub async fn list_for(
        &self,
        user: &str,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<ConversationView>, DbErr> {
        let mut query = member::Entity::find().filter(member::Column::User.eq(user));
        if let Some(after) = after {
            query = query.filter(member::Column::Conversation.gt(after));
        }
        let rows = query
            .order_by_asc(member::Column::Conversation)
            .limit(limit)
            .find_also_related(conversation::Entity)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(membership, conversation)| {
                conversation.map(|c| ConversationView::new(c, membership.pinned))
            })
            .collect())
    }

    /// The conversation as `user` sees it, if `user` is a member.
    pub async fn get_for(&self, user: &str, id: &str) -> Result<ConversationView, CoreError> {
        // At most one row, read without `one()`'s bound LIMIT (see `by_key`).
        let found = member::Entity::find_by_id((user.to_owned(), id.to_owned()))
            .find_also_related(conversation::Entity)
            .all(&self.db)
            .await?
            .pop();
        match found {
            Some((membership, Some(conversation))) => {
                Ok(ConversationView::new(conversation, membership.pinned))
            }
            _ => Err(self.why_not(id).await),
        }
    }

    /// Succeeds if `user` is a member of `id`, else says why not.
    pub async fn check_member(&self, user: &str, id: &str) -> Result<(), CoreError> {
        if self.is_member_now(user, id).await? {
            Ok(())
        } else {
            Err(self.why_not(id).await)
        }
    }

    async fn is_member_now(&self, user: &str, id: &str) -> Result<bool, DbErr> {
        Ok(member::Entity::find()
            .filter(member::Column::User.eq(user))
            .filter(member::Column::Conversation.eq(id))
            .count(&self.db)
            .await?
            > 0)
    }

    async fn why_not(&self, id: &str) -> CoreError {
        match conversation::Entity::find_by_id(id).count(&self.db).await {
            Ok(0) => CoreError::ConversationNotFound,
            Ok(_) => CoreError::NotAMember,
            Err(err) => CoreError::from(err),
        }
    }

    /// Applies `patch` to a conversation `user` belongs to.
    /// Applies `patch` to `current`, the conversation as its member just read it.
    pub async fn update(
        &self,
        current: ConversationView,
        patch: ConversationPatch,
    ) -> Result<ConversationView, CoreError> {
        if patch.title.is_none() && patch.picture.is_none() {
            return Ok(current);
        }
        let mut update =
            conversation::Entity::update_many().filter(conversation::Column::Id.eq(&current.id));
        if let Some(title) = &patch.title {
            update = update.col_expr(conversation::Column::Title, Expr::value(title.clone()));
        }
        if let Some(picture) = &patch.picture {
            update = update.col_expr(conversation::Column::Picture, Expr::value(picture.clone()));
        }
        update.exec(&self.db).await?;
        Ok(ConversationView {
            title: patch.title.unwrap_or(current.title),
            picture: patch.picture.unwrap_or(current.picture),
            ..current
        })
    }

    /// Deletes a conversation `user` belongs to with every membership; answers who the
    /// members were.
    pub async fn delete(&self, user: &str, id: &str) -> Result<Vec<String>, CoreError> {
        self.check_member(user, id).await?;
        let txn = self.db.begin().await?;
        let members = member_ids(&txn, id).await?;
        // The memberships go with it (ON DELETE CASCADE).
        conversation::Entity::delete_by_id(id).exec(&txn).await?;
        txn.commit().await?;
        Ok(members)
    }

    pub async fn set_pinned(&self, user: &str, id: &str, pinned: bool) -> Result<(), CoreError> {
        let changed = member::Entity::update_many()
            .col_expr(member::Column::Pinned, Expr::value(pinned))
            .filter(member::Column::User.eq(user))
            .filter(member::Column::Conversation.eq(id))
            .exec(&self.db)
            .await?
            .rows_affected;
        if changed == 0 {
            return Err(self.why_not(id).await);
        }
        Ok(())
    }

    /// Adds `new_member` (an existing user) to a conversation `by` belongs to.
    pub async fn add_member(&self, by: &str, id: &str, new_member: &str) -> Result<(), CoreError> {
        self.check_member(by, id).await?;
        match member::Entity::insert(self::new_member(new_member, id, self.clock.now_millis()))
            .exec_without_returning(&self.db)
            .await
        {
            Ok(_) => Ok(()),
            Err(err) => Err(match err.sql_err() {
                Some(SqlErr::UniqueConstraintViolation(_)) => CoreError::AlreadyAMember,
                // The conversation went in the meantime (the user was checked by the caller).
                Some(SqlErr::ForeignKeyConstraintViolation(_)) => CoreError::ConversationNotFound,
                _ => CoreError::from(err),
            }),
        }
    }

    /// The members of a conversation `user` belongs to, except `user`, after the cursor.
    pub async fn members(
        &self,
        user: &str,
        id: &str,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<user::Model>, CoreError> {
        self.check_member(user, id).await?;
        let mut query = member::Entity::find()
            .filter(member::Column::Conversation.eq(id))
            .filter(member::Column::User.ne(user));
        if let Some(after) = after {
            query = query.filter(member::Column::User.gt(after));
        }
        let rows = query
            .order_by_asc(member::Column::User)
            .limit(limit)
            .find_also_related(user::Entity)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().filter_map(|(_, found)| found).collect())
    }

    /// Removes `member` from a conversation `by` belongs to (`by == member` is leaving). The
    /// last member leaving deletes the conversation, so nothing is left without members.
    pub async fn remove_member(
        &self,
        by: &str,
        id: &str,
        member: &str,
    ) -> Result<Removal, CoreError> {
        self.check_member(by, id).await?;
        let txn = self.db.begin().await?;
        let removed = member::Entity::delete_many()
            .filter(member::Column::User.eq(member))
            .filter(member::Column::Conversation.eq(id))
            .exec(&txn)
            .await?
            .rows_affected;
        if removed == 0 {
            return Err(CoreError::MemberNotFound);
        }
        let remaining = member::Entity::find()
            .filter(member::Column::Conversation.eq(id))
            .count(&txn)
            .await?;
        let removal = if remaining == 0 {
            conversation::Entity::delete_by_id(id).exec(&txn).await?;
            Removal::ConversationDeleted
        } else {
            Removal::Removed
        };
        txn.commit().await?;
        Ok(removal)
    }

    /// Every member of a conversation with their pin flags (for routing events).
    pub async fn memberships(&self, id: &str) -> Result<Vec<member::Model>, DbErr> {
        member::Entity::find()
            .filter(member::Column::Conversation.eq(id))
            .all(&self.db)
            .await
    }

    pub async fn find(&self, id: &str) -> Result<Option<conversation::Model>, DbErr> {
        by_key(conversation::Entity::find_by_id(id), &self.db).await
    }
}

async fn member_ids(db: &impl sea_orm::ConnectionTrait, id: &str) -> Result<Vec<String>, DbErr> {
    member::Entity::find()
        .select_only()
        .column(member::Column::User)
        .filter(member::Column::Conversation.eq(id))
        .into_tuple::<String>()
        .all(db)
        .await
}

fn new_member(user: &str, conversation: &str, now: i64) -> member::ActiveModel {
    member::ActiveModel {
        user: Set(user.to_owned()),
        conversation: Set(conversation.to_owned()),
        pinned: Set(false),
        joined_at: Set(now),
    }
}

impl MembershipSource for Conversations {
    fn is_member<'a>(
        &'a self,
        user: &'a str,
        conversation: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<bool>> {
        async move {
            self.is_member_now(user, conversation)
                .await
                .context("reading a membership")
        }
        .boxed()
    }
}
