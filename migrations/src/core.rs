//! Tables owned by the `core` service.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, boolean, string, string_null, text_null};

use crate::ServiceMigrations;

pub struct Core;

impl ServiceMigrations for Core {
    const TRACKING_TABLE: &'static str = "core_migrations";
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateUsers),
            Box::new(CreateConversations),
            Box::new(IndexPictures),
        ]
    }
}

struct CreateUsers;

impl MigrationName for CreateUsers {
    fn name(&self) -> &str {
        "m20261122_000001_core_users"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateUsers {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // The original's columns, ids as text (`u-` + 32 hex) rather than BYTEA, plus the
        // email a user may log in with. NULL logins and usernames do not collide in UNIQUE.
        m.create_table(
            Table::create()
                .table("user")
                .if_not_exists()
                .col(string("id").primary_key())
                .col(string_null("username").unique_key())
                .col(string("bio").default(""))
                .col(string("profile_pic").default(""))
                .col(string("first_name").default(""))
                .col(string("last_name").default(""))
                .col(string_null("phone_number").unique_key())
                .col(string_null("email").unique_key())
                .col(big_integer("created_at"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("user").if_exists().to_owned())
            .await
    }
}

struct CreateConversations;

impl MigrationName for CreateConversations {
    fn name(&self) -> &str {
        "m20261123_000001_core_conversations"
    }
}

/// A foreign key to `table.id` that goes away with its row, so deleting a conversation or a
/// user leaves no orphan memberships or contacts.
fn cascade_to(
    from: &'static str,
    column: &'static str,
    table: &'static str,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(format!("fk_{from}_{column}"))
        .from(from, column)
        .to(table, "id")
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for CreateConversations {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("conversation")
                .if_not_exists()
                .col(string("id").primary_key())
                .col(text_null("title"))
                .col(text_null("picture"))
                .col(big_integer("created_at"))
                .to_owned(),
        )
        .await?;
        // The original's pin flag lives on the membership, as there.
        m.create_table(
            Table::create()
                .table("member")
                .if_not_exists()
                .col(string("user"))
                .col(string("conversation"))
                .col(boolean("pinned").default(false))
                .col(big_integer("joined_at"))
                .primary_key(Index::create().col("user").col("conversation"))
                .foreign_key(&mut cascade_to("member", "user", "user"))
                .foreign_key(&mut cascade_to("member", "conversation", "conversation"))
                .to_owned(),
        )
        .await?;
        // Member lists and event fan-out go by conversation; the primary key covers by-user.
        m.create_index(
            Index::create()
                .name("idx_member_conversation")
                .table("member")
                .col("conversation")
                .col("user")
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("contact")
                .if_not_exists()
                .col(string("user"))
                .col(string("contact"))
                .col(big_integer("created_at"))
                .primary_key(Index::create().col("user").col("contact"))
                .foreign_key(&mut cascade_to("contact", "user", "user"))
                .foreign_key(&mut cascade_to("contact", "contact", "user"))
                .to_owned(),
        )
        .await?;
        // "Who has this user as a contact" routes a profile update to the right streams.
        m.create_index(
            Index::create()
                .name("idx_contact_contact")
                .table("contact")
                .col("contact")
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in ["contact", "member", "conversation"] {
            m.drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

struct IndexPictures;

impl MigrationName for IndexPictures {
    fn name(&self) -> &str {
        "m20261130_000001_core_picture_indexes"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for IndexPictures {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // pictures asks who shows a picture on every uncached read and for every stored
        // picture in its orphan sweep.
        for (name, table, column) in [
            ("idx_user_profile_pic", "user", "profile_pic"),
            ("idx_conversation_picture", "conversation", "picture"),
        ] {
            m.create_index(
                Index::create()
                    .name(name)
                    .table(table)
                    .col(column)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, table) in [
            ("idx_user_profile_pic", "user"),
            ("idx_conversation_picture", "conversation"),
        ] {
            m.drop_index(Index::drop().name(name).table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
