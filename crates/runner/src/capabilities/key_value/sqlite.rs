//! Spin's default key-value backend: one SQLite table shared by every store label,
//! counters as 8-byte little-endian integers.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use super::backend::KvError;

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<rusqlite::Connection>>,
    label: String,
}

impl SqliteStore {
    pub fn open(path: &Path, label: &str) -> Result<SqliteStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let conn = rusqlite::Connection::open(path)
            .with_context(|| format!("opening SQLite store {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Several runners (replicas) may open the same file at once; switching the
        // journal mode is not covered by the busy timeout, so retry it for a while.
        let mut attempts = 0;
        loop {
            match conn.execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE IF NOT EXISTS spin_key_value (
                     store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                     PRIMARY KEY (store, key));",
            ) {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy && attempts < 100 =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                result => {
                    result
                        .with_context(|| format!("setting up SQLite store {}", path.display()))?;
                    break;
                }
            }
        }
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            label: label.to_owned(),
        })
    }

    /// Runs `f` on the connection off the async runtime's threads.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection, &str) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, KvError> {
        let conn = self.conn.clone();
        let label = self.label.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn, &label)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("sqlite: {e}"))
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let key = key.to_owned();
        self.with(move |c, label| get_row(c, label, &key)).await
    }

    pub async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.with(move |c, label| put_row(c, label, &key, &value))
            .await
    }

    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        let key = key.to_owned();
        self.with(move |c, label| delete_row(c, label, &key)).await
    }

    pub async fn keys(&self) -> Result<Vec<String>, KvError> {
        self.with(|c, label| {
            let mut stmt = c.prepare("SELECT key FROM spin_key_value WHERE store = ?1")?;
            let keys = stmt
                .query_map([label], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>();
            keys
        })
        .await
    }

    pub async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        let key = key.to_owned();
        self.with(move |c, label| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let current = match get_row(&tx, label, &key)? {
                None => 0,
                Some(bytes) => i64::from_le_bytes(bytes.as_slice().try_into().map_err(|_| {
                    rusqlite::Error::InvalidColumnType(
                        0,
                        "8-byte counter".into(),
                        rusqlite::types::Type::Blob,
                    )
                })?),
            };
            let next = current
                .checked_add(delta)
                .ok_or(rusqlite::Error::IntegralValueOutOfRange(0, delta))?;
            put_row(&tx, label, &key, &next.to_le_bytes())?;
            tx.commit()?;
            Ok(next)
        })
        .await
    }

    /// As Spin's SQLite backend: only the keys that exist come back (a missing key has
    /// no entry at all, rather than `none`).
    pub async fn get_many(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, KvError> {
        self.with(move |c, label| {
            let mut found = Vec::new();
            for key in keys {
                if let Some(value) = get_row(c, label, &key)? {
                    found.push((key, Some(value)));
                }
            }
            Ok(found)
        })
        .await
    }

    /// All or nothing, in one transaction, as Spin's SQLite backend writes them.
    pub async fn set_many(&self, key_values: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        self.with(move |c, label| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for (key, value) in &key_values {
                put_row(&tx, label, key, value)?;
            }
            tx.commit()
        })
        .await
    }

    /// One transaction, as Spin's single `DELETE ... IN` statement.
    pub async fn delete_many(&self, keys: Vec<String>) -> Result<(), KvError> {
        self.with(move |c, label| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for key in &keys {
                delete_row(&tx, label, key)?;
            }
            tx.commit()
        })
        .await
    }

    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, KvError> {
        let (key, expected, value) = (key.to_owned(), expected.map(<[u8]>::to_vec), value.to_vec());
        self.with(move |c, label| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if get_row(&tx, label, &key)? != expected {
                return Ok(false);
            }
            put_row(&tx, label, &key, &value)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }
}

fn get_row(c: &rusqlite::Connection, label: &str, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    use rusqlite::OptionalExtension;
    c.query_row(
        "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2",
        rusqlite::params![label, key],
        |row| row.get(0),
    )
    .optional()
}

fn put_row(c: &rusqlite::Connection, label: &str, key: &str, value: &[u8]) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
        rusqlite::params![label, key, value],
    )
    .map(drop)
}

fn delete_row(c: &rusqlite::Connection, label: &str, key: &str) -> rusqlite::Result<()> {
    c.execute(
        "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2",
        rusqlite::params![label, key],
    )
    .map(drop)
}
