//! Tables owned by the `auth` service.

use sea_orm_migration::MigrationTrait;

use crate::ServiceMigrations;

pub struct Auth;

impl ServiceMigrations for Auth {
    const TRACKING_TABLE: &'static str = "auth_migrations";
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        Vec::new()
    }
}
