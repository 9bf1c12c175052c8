//! Last-seen in the database: durable on the embedded SQLite, shared by replicas on PostgreSQL.

use sea_orm::sea_query::{Alias, Expr, ExprTrait as _, OnConflict};
use sea_orm::{ActiveValue::Set, DatabaseConnection, DbErr, EntityTrait, TransactionTrait};

use super::presence::{Ping, Presence};

pub mod last_seen {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "heartbeat_last_seen")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub user: String,
        pub at_ms: i64,
        pub status: String,
        pub visible_at_ms: Option<i64>,
        pub visible_status: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Rows per INSERT: SQLite allows 32,766 bound values, five a row.
const ROWS_PER_STATEMENT: usize = 1_000;

pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    pub async fn load(&self, user: &str) -> Result<Option<Presence>, DbErr> {
        let row = last_seen::Entity::find_by_id(user).one(&self.db).await?;
        Ok(row.map(|row| Presence {
            last: Ping {
                at_ms: row.at_ms,
                status: row.status,
            },
            visible: row
                .visible_at_ms
                .zip(row.visible_status)
                .map(|(at_ms, status)| Ping { at_ms, status }),
        }))
    }

    /// Writes every presence in `batch` (inserted or replaced) in one transaction.
    pub async fn save(&self, batch: &[(String, Presence)]) -> Result<(), DbErr> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin().await?;
        for chunk in batch.chunks(ROWS_PER_STATEMENT) {
            let rows = chunk.iter().map(|(user, presence)| last_seen::ActiveModel {
                user: Set(user.clone()),
                at_ms: Set(presence.last.at_ms),
                status: Set(presence.last.status.clone()),
                visible_at_ms: Set(presence.visible.as_ref().map(|ping| ping.at_ms)),
                visible_status: Set(presence.visible.as_ref().map(|ping| ping.status.clone())),
            });
            last_seen::Entity::insert_many(rows)
                .on_conflict(
                    OnConflict::column(last_seen::Column::User)
                        .update_columns([
                            last_seen::Column::AtMs,
                            last_seen::Column::Status,
                            last_seen::Column::VisibleAtMs,
                            last_seen::Column::VisibleStatus,
                        ])
                        // Replicas flush on their own schedules: an older ping never
                        // replaces a newer one.
                        .action_and_where(
                            Expr::col((last_seen::Entity, last_seen::Column::AtMs))
                                .lt(Expr::col((Alias::new("excluded"), last_seen::Column::AtMs))),
                        )
                        .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await
    }
}
