//! Tables owned by the `core` service.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, string, string_null};

use crate::ServiceMigrations;

pub struct Core;

impl ServiceMigrations for Core {
    const TRACKING_TABLE: &'static str = "core_migrations";
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateUsers)]
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
