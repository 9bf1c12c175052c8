//! Tables owned by the `pictures` service.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_integer_null, integer, string};

use crate::ServiceMigrations;

pub struct Pictures;

impl ServiceMigrations for Pictures {
    const TRACKING_TABLE: &'static str = "pictures_migrations";
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreatePictures)]
    }
}

struct CreatePictures;

impl MigrationName for CreatePictures {
    fn name(&self) -> &str {
        "m20261130_000001_pictures"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreatePictures {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One row per stored picture (its name is the hash of its bytes, so one per content),
        // with its thumbnail's size. `orphan_since_ms` is when the sweep first found nobody
        // showing it (set at upload, cleared when core claims it).
        m.create_table(
            Table::create()
                .table("picture")
                .if_not_exists()
                .col(string("name").primary_key())
                .col(integer("width"))
                .col(integer("height"))
                .col(big_integer("bytes"))
                .col(integer("thumb_width"))
                .col(integer("thumb_height"))
                .col(big_integer("thumb_bytes"))
                .col(big_integer("created_at_ms"))
                .col(big_integer_null("orphan_since_ms"))
                .to_owned(),
        )
        .await?;
        // Who uploaded it: uploaders may always read their pictures. No foreign key to core's
        // users: pictures may run apart from core's tables.
        m.create_table(
            Table::create()
                .table("picture_uploader")
                .if_not_exists()
                .col(string("name"))
                .col(string("user"))
                .col(big_integer("at_ms"))
                .primary_key(Index::create().col("name").col("user"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in ["picture_uploader", "picture"] {
            m.drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
