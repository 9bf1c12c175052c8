//! Tables owned by the `permissions` service.

use sea_orm_migration::MigrationTrait;

use crate::ServiceMigrations;

pub struct Permissions;

impl ServiceMigrations for Permissions {
    const TRACKING_TABLE: &'static str = "permissions_migrations";
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        Vec::new()
    }
}
