//! Tables owned by the `pictures` service.

use sea_orm_migration::MigrationTrait;

use crate::ServiceMigrations;

pub struct Pictures;

impl ServiceMigrations for Pictures {
    const TRACKING_TABLE: &'static str = "pictures_migrations";
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        Vec::new()
    }
}
