//! The relational database: SQLite in the data dir by default (WAL, one file), PostgreSQL when
//! `database.url` is `postgres://…`. Services reach it through sea-orm.

use std::path::Path;
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

use crate::config::DatabaseConfig;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database.url: expected sqlite://… or postgres://…")]
    Url,
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Db(#[from] DbErr),
}

#[derive(Clone)]
pub struct Db {
    connection: DatabaseConnection,
    backend: &'static str,
}

/// The row a primary or unique key selects: `by_key(Entity::find_by_id(id), db)`.
///
/// sea-orm's `one()` binds a `LIMIT ?`, and a bound LIMIT makes SQLite prepare the statement
/// again on every run: 35-45 µs of a 90 µs lookup (`cargo bench --bench core -- orm`). A key
/// matches at most one row, so the statement is run as built, still asking for one row.
pub async fn by_key<E>(
    select: sea_orm::Select<E>,
    db: &impl sea_orm::ConnectionTrait,
) -> Result<Option<E::Model>, sea_orm::DbErr>
where
    E: sea_orm::EntityTrait,
    E::Model: sea_orm::FromQueryResult,
{
    use sea_orm::{FromQueryResult as _, QueryTrait as _};
    let statement = select.build(db.get_database_backend());
    E::Model::find_by_statement(statement).one(db).await
}

/// A pooled connection idle this long is pinged before use (the server may have dropped it).
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(30);

impl Db {
    pub async fn open(config: &DatabaseConfig, data_dir: &Path) -> Result<Self, DbError> {
        let url = if config.url.is_empty() {
            std::fs::create_dir_all(data_dir).map_err(|source| DbError::DataDir {
                path: data_dir.display().to_string(),
                source,
            })?;
            format!("sqlite://{}?mode=rwc", data_dir.join("beep.db").display())
        } else {
            config.url.clone()
        };
        let backend = if url.starts_with("sqlite:") {
            "sqlite"
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            "postgres"
        } else {
            return Err(DbError::Url);
        };
        let mut options = ConnectOptions::new(url);
        options
            // sea-orm would silently use a single connection for SQLite otherwise.
            .max_connections(config.max_connections.max(1))
            .min_connections(1)
            .connect_timeout(Duration::from_secs(config.connect_timeout_secs))
            .acquire_timeout(Duration::from_secs(config.connect_timeout_secs))
            // sea-orm pings a pooled connection before every query by default: one more round
            // trip per query (a thread hop on SQLite, the network on PostgreSQL). A connection
            // that was used moments ago is alive; only one idle for a while is checked.
            .test_before_acquire(false)
            .test_before_acquire_if_idle_for(IDLE_CHECK_AFTER)
            .sqlx_logging(false);
        if backend == "sqlite" {
            options.map_sqlx_sqlite_opts(|sqlite| {
                sqlite
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true)
            });
        }
        let connection = Database::connect(options).await?;
        Ok(Self {
            connection,
            backend,
        })
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.connection
    }

    /// Applies the pending migrations of one service (each has its own tracking table).
    pub async fn migrate(&self, service: &str) -> Result<usize, DbError> {
        Ok(migrations::up(&self.connection, service).await?)
    }

    /// Readiness: does the database answer?
    pub async fn check(&self) -> Result<(), DbError> {
        Ok(self.connection.ping().await?)
    }

    pub async fn close(self) {
        if let Err(err) = self.connection.close().await {
            tracing::warn!(error = %err, "closing the database failed");
        }
    }
}
