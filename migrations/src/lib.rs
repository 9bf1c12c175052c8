//! Beep's database migrations. Each service has its own migrator and its own tracking table
//! (`<service>_migrations`), so split binaries that share one database never apply or roll back
//! each other's migrations. A service's migrations live in the module named after it.

use std::marker::PhantomData;

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseConnection;

#[cfg(feature = "auth")]
pub mod auth;
#[cfg(feature = "bites")]
pub mod bites;
#[cfg(feature = "core")]
pub mod core;
#[cfg(feature = "heartbeat")]
pub mod heartbeat;
#[cfg(feature = "permissions")]
pub mod permissions;
#[cfg(feature = "pictures")]
pub mod pictures;

/// One service's migrations and the table that records which of them ran.
pub trait ServiceMigrations: Send + Sync + 'static {
    const TRACKING_TABLE: &'static str;
    fn migrations() -> Vec<Box<dyn MigrationTrait>>;
}

/// sea-orm's migrator over one service's migrations.
pub struct Migrator<S>(PhantomData<S>);

impl<S: ServiceMigrations> MigratorTrait for Migrator<S> {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        S::migrations()
    }
    fn migration_table_name() -> DynIden {
        S::TRACKING_TABLE.into_iden()
    }
}

/// Applies the pending migrations of `service`; returns how many were applied.
pub async fn up(db: &DatabaseConnection, service: &str) -> Result<usize, DbErr> {
    match service {
        #[cfg(feature = "auth")]
        "auth" => apply::<auth::Auth>(db).await,
        #[cfg(feature = "core")]
        "core" => apply::<core::Core>(db).await,
        #[cfg(feature = "heartbeat")]
        "heartbeat" => apply::<heartbeat::Heartbeat>(db).await,
        #[cfg(feature = "pictures")]
        "pictures" => apply::<pictures::Pictures>(db).await,
        #[cfg(feature = "permissions")]
        "permissions" => apply::<permissions::Permissions>(db).await,
        #[cfg(feature = "bites")]
        "bites" => apply::<bites::Bites>(db).await,
        other => Err(DbErr::Custom(format!(
            "no migrations compiled in for service {other:?}"
        ))),
    }
}

async fn apply<S: ServiceMigrations>(db: &DatabaseConnection) -> Result<usize, DbErr> {
    let pending = Migrator::<S>::get_pending_migrations(db).await?.len();
    Migrator::<S>::up(db, None).await?;
    Ok(pending)
}
