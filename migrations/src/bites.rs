//! Tables owned by the `bites` service.

use sea_orm_migration::MigrationTrait;

use crate::ServiceMigrations;

pub struct Bites;

impl ServiceMigrations for Bites {
    const TRACKING_TABLE: &'static str = "bites_migrations";
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        Vec::new()
    }
}
