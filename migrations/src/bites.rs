//! Tables owned by the `bites` service. The bites themselves live in sled; the database holds
//! the transcript search index.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::ServiceMigrations;

pub struct Bites;

impl ServiceMigrations for Bites {
    const TRACKING_TABLE: &'static str = "bites_migrations";
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateTranscriptSearch)]
    }
}

struct CreateTranscriptSearch;

impl MigrationName for CreateTranscriptSearch {
    fn name(&self) -> &str {
        "m20261130_000002_bites_transcript_search"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateTranscriptSearch {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        // Full-text search that knows word forms ("meeting" finds "meetings"): SQLite's FTS5
        // with the Porter stemmer, PostgreSQL's English text search with a GIN index.
        let statements: &[&str] = match db.get_database_backend() {
            DbBackend::Sqlite => &[
                "CREATE VIRTUAL TABLE IF NOT EXISTS transcript_search USING fts5(\
                 text, conversation UNINDEXED, start UNINDEXED, speaker UNINDEXED, \
                 client UNINDEXED, words UNINDEXED, tokenize = 'porter unicode61')",
            ],
            _ => &[
                "CREATE TABLE IF NOT EXISTS transcript_search (\
                 conversation TEXT NOT NULL, start BIGINT NOT NULL, speaker TEXT NOT NULL, \
                 client TEXT NOT NULL, text TEXT NOT NULL, words TEXT NOT NULL, \
                 document TSVECTOR GENERATED ALWAYS AS (to_tsvector('english', text)) STORED, \
                 PRIMARY KEY (conversation, start, speaker, client))",
                "CREATE INDEX IF NOT EXISTS idx_transcript_search_document \
                 ON transcript_search USING GIN (document)",
                "CREATE INDEX IF NOT EXISTS idx_transcript_search_start \
                 ON transcript_search (start)",
            ],
        };
        for statement in statements {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS transcript_search")
            .await?;
        Ok(())
    }
}
