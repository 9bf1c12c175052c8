//! Login sessions and their refresh tokens.
//!
//! A session is one login of one client; every access token carries its id (`sid`). Each
//! refresh token is single use: spending it issues the next one of the same session. Presenting
//! a spent one means two parties hold the session's tokens, so the whole session is revoked.

use sea_orm::sea_query::{Expr, SimpleExpr};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};
use sha2::{Digest as _, Sha256};

use crate::platform::clock::Clock;
use crate::platform::db::by_key;
use crate::platform::ids::{hex, random_hex128};

pub mod session {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "auth_session")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub user_id: String,
        pub client_id: String,
        pub created_at: i64,
        pub last_used_at: i64,
        pub expires_at: i64,
        pub revoked_at: Option<i64>,
        pub revoked_reason: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod refresh_token {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "auth_refresh_token")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub token_hash: String,
        pub session_id: String,
        pub issued_at: i64,
        pub expires_at: i64,
        pub spent_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod blocked_user {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "auth_blocked_user")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: String,
        pub blocked_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Why a refresh token was refused.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("unknown refresh token")]
    Unknown,
    #[error("the refresh token has expired")]
    Expired,
    #[error("the session has been revoked")]
    Revoked,
    /// A spent token came back: the session is compromised.
    #[error("the refresh token was already used")]
    Reused { session_id: String, user_id: String },
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// A session and the refresh token just issued for it (shown once, stored hashed).
pub struct Issued {
    pub session: session::Model,
    pub refresh_token: String,
}

/// Session ids are the `sid` claim; the longest list a user gets back.
const MAX_LISTED_SESSIONS: u64 = 200;

#[derive(Clone)]
pub struct Sessions {
    db: DatabaseConnection,
    refresh_ttl_ms: i64,
    clock: Clock,
}

impl Sessions {
    pub fn new(db: DatabaseConnection, refresh_ttl_secs: u64, clock: Clock) -> Self {
        let refresh_ttl_ms =
            i64::try_from(refresh_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        Self {
            db,
            refresh_ttl_ms,
            clock,
        }
    }

    /// Opens a session for a fresh login.
    pub async fn open(&self, user_id: &str, client_id: &str) -> Result<Issued, DbErr> {
        let now = self.clock.now_millis();
        let session_id = random_hex128();
        let (refresh_token, refresh_row) = self.new_refresh_token(&session_id, now);
        let session = session::Model {
            id: session_id,
            user_id: user_id.to_owned(),
            client_id: client_id.to_owned(),
            created_at: now,
            last_used_at: now,
            expires_at: refresh_row.expires_at,
            revoked_at: None,
            revoked_reason: None,
        };
        let txn = self.db.begin().await?;
        session::Entity::insert(session::ActiveModel::from(session.clone()))
            .exec_without_returning(&txn)
            .await?;
        refresh_token::Entity::insert(refresh_token::ActiveModel::from(refresh_row))
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        Ok(Issued {
            session,
            refresh_token,
        })
    }

    fn new_refresh_token(&self, session_id: &str, now: i64) -> (String, refresh_token::Model) {
        let token = format!("{}{}", random_hex128(), random_hex128());
        let row = refresh_token::Model {
            token_hash: token_hash(&token),
            session_id: session_id.to_owned(),
            issued_at: now,
            expires_at: now.saturating_add(self.refresh_ttl_ms),
            spent_at: None,
        };
        (token, row)
    }

    /// Spends `presented` and issues the session's next refresh token.
    pub async fn refresh(&self, presented: &str) -> Result<Issued, RefreshError> {
        let hash = token_hash(presented);
        let now = self.clock.now_millis();
        // The conditional update is the single-use guarantee: of two concurrent refreshes with
        // one token, exactly one changes the row.
        let spent = refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::SpentAt, Expr::value(now))
            .filter(refresh_token::Column::TokenHash.eq(&hash))
            .filter(refresh_token::Column::SpentAt.is_null())
            .exec(&self.db)
            .await?
            .rows_affected;
        let token = by_key(refresh_token::Entity::find_by_id(hash), &self.db)
            .await?
            .ok_or(RefreshError::Unknown)?;
        let session = self
            .find(&token.session_id)
            .await?
            .ok_or(RefreshError::Unknown)?;
        if spent == 0 {
            return Err(RefreshError::Reused {
                session_id: session.id,
                user_id: session.user_id,
            });
        }
        if session.revoked_at.is_some() {
            return Err(RefreshError::Revoked);
        }
        if token.expires_at <= now {
            return Err(RefreshError::Expired);
        }
        let (refresh_token, next) = self.new_refresh_token(&session.id, now);
        let expires_at = next.expires_at;
        let txn = self.db.begin().await?;
        refresh_token::Entity::insert(refresh_token::ActiveModel::from(next))
            .exec_without_returning(&txn)
            .await?;
        session::Entity::update_many()
            .col_expr(session::Column::LastUsedAt, Expr::value(now))
            .col_expr(session::Column::ExpiresAt, Expr::value(expires_at))
            .filter(session::Column::Id.eq(&session.id))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(Issued {
            session: session::Model {
                last_used_at: now,
                expires_at,
                ..session
            },
            refresh_token,
        })
    }

    pub async fn find(&self, session_id: &str) -> Result<Option<session::Model>, DbErr> {
        by_key(session::Entity::find_by_id(session_id), &self.db).await
    }

    /// Marks a session revoked; returns whether it was live.
    pub async fn revoke(&self, session_id: &str, reason: &str) -> Result<bool, DbErr> {
        let changed = self
            .revoke_where(session::Column::Id.eq(session_id), reason)
            .await?;
        Ok(changed == 1)
    }

    /// Revokes every live session of `user_id`; returns their ids.
    pub async fn revoke_user(&self, user_id: &str, reason: &str) -> Result<Vec<String>, DbErr> {
        let live: Vec<String> = session::Entity::find()
            .select_only()
            .column(session::Column::Id)
            .filter(session::Column::UserId.eq(user_id))
            .filter(session::Column::RevokedAt.is_null())
            .into_tuple()
            .all(&self.db)
            .await?;
        if !live.is_empty() {
            self.revoke_where(
                session::Column::Id.is_in(live.iter().map(String::as_str)),
                reason,
            )
            .await?;
        }
        Ok(live)
    }

    /// Marks the still-live sessions matching `which` revoked; returns how many.
    async fn revoke_where(&self, which: SimpleExpr, reason: &str) -> Result<u64, DbErr> {
        Ok(session::Entity::update_many()
            .col_expr(
                session::Column::RevokedAt,
                Expr::value(self.clock.now_millis()),
            )
            .col_expr(session::Column::RevokedReason, Expr::value(reason))
            .filter(which)
            .filter(session::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?
            .rows_affected)
    }

    /// The live sessions of `user_id`, most recently used first.
    pub async fn list(&self, user_id: &str) -> Result<Vec<session::Model>, DbErr> {
        session::Entity::find()
            .filter(session::Column::UserId.eq(user_id))
            .filter(session::Column::RevokedAt.is_null())
            .filter(session::Column::ExpiresAt.gt(self.clock.now_millis()))
            .order_by_desc(session::Column::LastUsedAt)
            .limit(MAX_LISTED_SESSIONS)
            .all(&self.db)
            .await
    }

    /// Sessions revoked at or after `since` (Unix ms), as `(id, user_id, revoked_at)`.
    pub async fn revoked_since(&self, since: i64) -> Result<Vec<(String, String, i64)>, DbErr> {
        session::Entity::find()
            .select_only()
            .column(session::Column::Id)
            .column(session::Column::UserId)
            .column(session::Column::RevokedAt)
            .filter(session::Column::RevokedAt.gte(since))
            .into_tuple()
            .all(&self.db)
            .await
    }

    pub async fn block(&self, user_id: &str) -> Result<(), DbErr> {
        let row = blocked_user::ActiveModel {
            user_id: Set(user_id.to_owned()),
            blocked_at: Set(self.clock.now_millis()),
        };
        blocked_user::Entity::insert(row)
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(blocked_user::Column::UserId)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Returns whether the user was blocked.
    pub async fn unblock(&self, user_id: &str) -> Result<bool, DbErr> {
        let removed = blocked_user::Entity::delete_by_id(user_id)
            .exec(&self.db)
            .await?
            .rows_affected;
        Ok(removed == 1)
    }

    pub async fn is_blocked(&self, user_id: &str) -> Result<bool, DbErr> {
        Ok(by_key(blocked_user::Entity::find_by_id(user_id), &self.db)
            .await?
            .is_some())
    }
}

/// Refresh tokens are stored as their SHA-256: 256 random bits need no slow hash.
fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}
