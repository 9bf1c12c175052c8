//! Tables owned by the `heartbeat` service.

use sea_orm_migration::MigrationTrait;

use crate::ServiceMigrations;

pub struct Heartbeat;

impl ServiceMigrations for Heartbeat {
    const TRACKING_TABLE: &'static str = "heartbeat_migrations";
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        Vec::new()
    }
}
