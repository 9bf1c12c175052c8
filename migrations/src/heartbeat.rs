//! Tables owned by the `heartbeat` service.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_integer_null, string, string_null};

use crate::ServiceMigrations;

pub struct Heartbeat;

impl ServiceMigrations for Heartbeat {
    const TRACKING_TABLE: &'static str = "heartbeat_migrations";
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateLastSeen)]
    }
}

struct CreateLastSeen;

impl MigrationName for CreateLastSeen {
    fn name(&self) -> &str {
        "m20261130_000001_heartbeat_last_seen"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateLastSeen {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Each user's last ping, and the last one others may see (an invisible ping is stored
        // but not shown). No foreign key: heartbeat may run apart from core's tables.
        m.create_table(
            Table::create()
                .table("heartbeat_last_seen")
                .if_not_exists()
                .col(string("user").primary_key())
                .col(big_integer("at_ms"))
                .col(string("status"))
                .col(big_integer_null("visible_at_ms"))
                .col(string_null("visible_status"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table("heartbeat_last_seen")
                .if_exists()
                .to_owned(),
        )
        .await
    }
}
