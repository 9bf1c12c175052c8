//! The transcript search index, in the database: SQLite FTS5 with the Porter stemmer, or
//! PostgreSQL's English full-text search. Both know word forms ("meeting" finds "meetings"),
//! survive restarts, and need nothing beside the database Beep already uses.

use sea_orm::{ConnectionTrait as _, DatabaseConnection, DbBackend, DbErr, Statement, Value};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::engine::{Transcript, Word};
use crate::services::bites::store::BiteId;

/// Marks around a match inside the engine's snippet, replaced by `<mark>` once the rest is
/// escaped: control characters no transcript holds.
const OPEN: char = '\u{1}';
const CLOSE: char = '\u{2}';
/// Longest query accepted, and most words in it.
pub const MAX_QUERY_CHARS: usize = 256;
const MAX_QUERY_WORDS: usize = 16;

/// One bite whose transcript matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Hit {
    pub start: u64,
    /// The speaker and the client they spoke from.
    pub user: String,
    pub client: String,
    /// Part of the transcript around the match, HTML-escaped, matches in `<mark>…</mark>`.
    pub snippet: String,
    /// Milliseconds from the bite's start to its first matching word, when the engine gave
    /// word times: where to start playing.
    pub offset_ms: Option<u64>,
}

pub struct TranscriptIndex {
    db: DatabaseConnection,
}

impl TranscriptIndex {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    fn statement(&self, sql: &str, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(self.backend(), sql, values)
    }

    /// Indexes (or re-indexes) a bite's transcript.
    pub async fn add(&self, bite: &BiteId, transcript: &Transcript) -> Result<(), DbErr> {
        // Serializing strings and integers cannot fail.
        let words = serde_json::to_string(&transcript.words).unwrap_or_default();
        let start = i64::try_from(bite.start).unwrap_or(i64::MAX);
        // The snippet's marks must be the engine's only control characters.
        let text: String = transcript
            .text
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        let values = |with_id: bool| {
            let mut values: Vec<Value> = Vec::new();
            if with_id {
                values.push(row_id(bite).into());
            }
            values.extend([
                text.clone().into(),
                bite.conversation.clone().into(),
                start.into(),
                bite.user.clone().into(),
                bite.client.clone().into(),
                words.clone().into(),
            ]);
            values
        };
        match self.backend() {
            DbBackend::Sqlite => {
                // FTS5 has no unique key: the row id is derived from the bite.
                self.db
                    .execute_raw(self.statement(
                        "DELETE FROM transcript_search WHERE rowid = ?",
                        vec![row_id(bite).into()],
                    ))
                    .await?;
                self.db
                    .execute_raw(self.statement(
                        "INSERT INTO transcript_search \
                         (rowid, text, conversation, start, speaker, client, words) \
                         VALUES (?, ?, ?, ?, ?, ?, ?)",
                        values(true),
                    ))
                    .await?;
            }
            _ => {
                self.db
                    .execute_raw(self.statement(
                        "INSERT INTO transcript_search \
                         (text, conversation, start, speaker, client, words) \
                         VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (conversation, start, speaker, client) \
                         DO UPDATE SET text = EXCLUDED.text, words = EXCLUDED.words",
                        values(false),
                    ))
                    .await?;
            }
        }
        Ok(())
    }

    /// Bites of `conversation` whose transcripts match `query`, newest first, starting before
    /// `before`. `None` when the query holds no word to look for.
    pub async fn search(
        &self,
        conversation: &str,
        query: &str,
        before: u64,
        limit: u64,
    ) -> Result<Option<Vec<Hit>>, DbErr> {
        let words = query_words(query);
        if words.is_empty() {
            return Ok(None);
        }
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let statement = match self.backend() {
            DbBackend::Sqlite => {
                // Each word quoted: FTS5's query syntax never reaches the user's input.
                let matched = words
                    .iter()
                    .map(|word| format!("\"{word}\""))
                    .collect::<Vec<_>>()
                    .join(" ");
                self.statement(
                    "SELECT start, speaker, client, words, \
                     snippet(transcript_search, 0, char(1), char(2), '…', 16) AS snippet \
                     FROM transcript_search \
                     WHERE transcript_search MATCH ? AND conversation = ? AND start < ? \
                     ORDER BY start DESC LIMIT ?",
                    vec![
                        matched.into(),
                        conversation.to_owned().into(),
                        before.into(),
                        limit.into(),
                    ],
                )
            }
            _ => self.statement(
                "SELECT start, speaker, client, words, \
                 ts_headline('english', text, query, $5) AS snippet \
                 FROM transcript_search, plainto_tsquery('english', $1) AS query \
                 WHERE conversation = $2 AND document @@ query AND start < $3 \
                 ORDER BY start DESC LIMIT $4",
                vec![
                    words.join(" ").into(),
                    conversation.to_owned().into(),
                    before.into(),
                    limit.into(),
                    format!("StartSel={OPEN}, StopSel={CLOSE}, MaxWords=24, MinWords=8").into(),
                ],
            ),
        };
        let rows = self.db.query_all_raw(statement).await?;
        let mut hits = Vec::with_capacity(rows.len());
        for row in rows {
            let start: i64 = row.try_get("", "start")?;
            let words: String = row.try_get("", "words")?;
            let snippet: String = row.try_get("", "snippet")?;
            let words: Vec<Word> = serde_json::from_str(&words).unwrap_or_default();
            hits.push(Hit {
                start: u64::try_from(start).unwrap_or_default(),
                user: row.try_get("", "speaker")?,
                client: row.try_get("", "client")?,
                offset_ms: first_match_offset(&snippet, &words),
                snippet: marked(&snippet),
            });
        }
        Ok(Some(hits))
    }

    /// Removes one bite's transcript.
    pub async fn remove(&self, bite: &BiteId) -> Result<(), DbErr> {
        let statement = match self.backend() {
            DbBackend::Sqlite => self.statement(
                "DELETE FROM transcript_search WHERE rowid = ?",
                vec![row_id(bite).into()],
            ),
            _ => self.statement(
                "DELETE FROM transcript_search \
                 WHERE conversation = $1 AND start = $2 AND speaker = $3 AND client = $4",
                vec![
                    bite.conversation.clone().into(),
                    i64::try_from(bite.start).unwrap_or(i64::MAX).into(),
                    bite.user.clone().into(),
                    bite.client.clone().into(),
                ],
            ),
        };
        self.db.execute_raw(statement).await?;
        Ok(())
    }

    pub async fn delete_conversation(&self, conversation: &str) -> Result<(), DbErr> {
        let sql = match self.backend() {
            DbBackend::Sqlite => "DELETE FROM transcript_search WHERE conversation = ?",
            _ => "DELETE FROM transcript_search WHERE conversation = $1",
        };
        self.db
            .execute_raw(self.statement(sql, vec![conversation.to_owned().into()]))
            .await?;
        Ok(())
    }

    pub async fn delete_started_before(&self, cutoff: u64) -> Result<(), DbErr> {
        let sql = match self.backend() {
            DbBackend::Sqlite => "DELETE FROM transcript_search WHERE start < ?",
            _ => "DELETE FROM transcript_search WHERE start < $1",
        };
        let cutoff = i64::try_from(cutoff).unwrap_or(i64::MAX);
        self.db
            .execute_raw(self.statement(sql, vec![cutoff.into()]))
            .await?;
        Ok(())
    }
}

/// A stable row id for a bite (FTS5 rows are addressed by it).
fn row_id(bite: &BiteId) -> i64 {
    let mut hasher = Sha256::new();
    for part in [
        bite.conversation.as_bytes(),
        &bite.start.to_be_bytes(),
        bite.user.as_bytes(),
        b"/",
        bite.client.as_bytes(),
    ] {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// The words of a query, letters and digits only, at most 16.
fn query_words(query: &str) -> Vec<String> {
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .take(MAX_QUERY_WORDS)
        .map(str::to_lowercase)
        .collect()
}

fn normalised(word: &str) -> String {
    word.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The engine's snippet, HTML-escaped, its marks as `<mark>`.
fn marked(snippet: &str) -> String {
    let mut out = String::with_capacity(snippet.len() + 16);
    for c in snippet.chars() {
        match c {
            OPEN => out.push_str("<mark>"),
            CLOSE => out.push_str("</mark>"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// When the first marked word of the snippet is spoken, from the transcript's word times.
fn first_match_offset(snippet: &str, words: &[Word]) -> Option<u64> {
    let (_, rest) = snippet.split_once(OPEN)?;
    let (first, _) = rest.split_once(CLOSE)?;
    let first = normalised(first.split_whitespace().next()?);
    words
        .iter()
        .find(|word| normalised(&word.word) == first)
        .map(|word| word.start_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_keep_only_words() {
        assert_eq!(
            query_words("\"budget\" OR NEAR(x) -- meeting's*"),
            vec!["budget", "or", "near", "x", "meeting", "s"]
        );
        assert!(query_words("  *** \"\" ").is_empty());
    }

    #[test]
    fn snippets_are_escaped_and_marked_and_offsets_found() {
        let snippet = "the <b>quarterly\u{1}Budget\u{2}</b> & plan";
        assert_eq!(
            marked(snippet),
            "the &lt;b&gt;quarterly<mark>Budget</mark>&lt;/b&gt; &amp; plan"
        );
        let words = vec![
            Word {
                word: "the".into(),
                start_ms: 0,
                end_ms: 100,
            },
            Word {
                word: "budget,".into(),
                start_ms: 900,
                end_ms: 1300,
            },
        ];
        assert_eq!(first_match_offset(snippet, &words), Some(900));
        assert_eq!(first_match_offset("no marks", &words), None);
    }
}
