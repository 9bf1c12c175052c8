//! Tables owned by the `core` service.

use sea_orm_migration::MigrationTrait;

use crate::ServiceMigrations;

pub struct Core;

impl ServiceMigrations for Core {
    const TRACKING_TABLE: &'static str = "core_migrations";
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        Vec::new()
    }
}
