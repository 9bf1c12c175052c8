//! Tables owned by the `auth` service: login sessions, their refresh tokens, blocked users.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_integer_null, string, string_null};

use crate::ServiceMigrations;

pub struct Auth;

impl ServiceMigrations for Auth {
    const TRACKING_TABLE: &'static str = "auth_migrations";
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateSessions)]
    }
}

struct CreateSessions;

impl MigrationName for CreateSessions {
    fn name(&self) -> &str {
        "m20261122_000001_auth_sessions"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateSessions {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Times are Unix milliseconds.
        m.create_table(
            Table::create()
                .table("auth_session")
                .if_not_exists()
                .col(string("id").primary_key())
                .col(string("user_id"))
                .col(string("client_id"))
                .col(big_integer("created_at"))
                .col(big_integer("last_used_at"))
                .col(big_integer("expires_at"))
                .col(big_integer_null("revoked_at"))
                .col(string_null("revoked_reason"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("auth_session_user")
                .table("auth_session")
                .col("user_id")
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("auth_session_revoked")
                .table("auth_session")
                .col("revoked_at")
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("auth_refresh_token")
                .if_not_exists()
                // SHA-256 of the token, hex: the token itself is never stored.
                .col(string("token_hash").primary_key())
                .col(string("session_id"))
                .col(big_integer("issued_at"))
                .col(big_integer("expires_at"))
                .col(big_integer_null("spent_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("auth_refresh_token_session")
                .table("auth_refresh_token")
                .col("session_id")
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("auth_blocked_user")
                .if_not_exists()
                .col(string("user_id").primary_key())
                .col(big_integer("blocked_at"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in ["auth_blocked_user", "auth_refresh_token", "auth_session"] {
            m.drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
