//! One-owner work that someone else may take over if its owner dies: a claim with a
//! lease, built from atomic `increment` and plain `get`/`set` only (compare-and-swap is
//! unusable on Spin's Redis store).
//!
//! Ownership is numbered: attempt `n` is owned by whoever wins `claim:{n}`
//! (`increment == 1`), who then writes `{attempt: n, until}`. While the lease runs,
//! others are told it is held; once it has run out, the next caller may claim `n + 1`.
//! An owner that dies between its claim and its lease record leaves a claim with no
//! record: the first caller to see that notes the time (`seen:{n}`), and after a full
//! lease the next attempt may be claimed. A slow owner learns it was superseded with
//! [`superseded`] (attempt `n + 1` is claimed) before it commits anything.

use serde::{Deserialize, Serialize};

use crate::store::{KeyValue, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    attempt: u32,
    /// Unix seconds; 0 = given up (the next caller may take over at once); `i64::MAX`
    /// = closed for good.
    until: i64,
    /// What the work came to, kept by [`close`]: the lease outlives any other record
    /// of it that a stale writer may overwrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<String>,
}

/// What [`acquire`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// The caller owns attempt `attempt` until `until` (unix seconds).
    Acquired { attempt: u32, until: i64 },
    /// Someone else holds it, for at most `retry_after` more seconds.
    Held { retry_after: i64 },
    /// Closed for good: the work is done, with the result its owner gave [`close`].
    Done { result: Option<String> },
}

impl Record {
    /// What a caller who finds this record (and may not take over) is told.
    fn refusal(self, now: i64) -> Lease {
        if self.until == i64::MAX {
            Lease::Done {
                result: self.result,
            }
        } else {
            Lease::Held {
                retry_after: self.until - now,
            }
        }
    }
}

fn record_key(name: &str) -> String {
    format!("{name}:lease")
}

fn claim_key(name: &str, attempt: u32) -> String {
    format!("{name}:claim:{attempt}")
}

fn seen_key(name: &str, attempt: u32) -> String {
    format!("{name}:seen:{attempt}")
}

fn load(kv: &impl KeyValue, name: &str) -> Result<Option<Record>, StoreError> {
    kv.get(&record_key(name))?
        .map(|bytes| {
            serde_json::from_slice(&bytes)
                .map_err(|e| StoreError(format!("corrupt lease record {name}: {e}")))
        })
        .transpose()
}

/// Takes the lease `name` for `seconds` if nobody holds it (or its holder's time is up).
pub fn acquire(
    kv: &impl KeyValue,
    name: &str,
    now: i64,
    seconds: i64,
) -> Result<Lease, StoreError> {
    let mut attempt = match load(kv, name)? {
        None => 0,
        Some(r) if r.until > now => return Ok(r.refusal(now)),
        Some(r) => r.attempt + 1,
    };
    // Bounded: each step up needs a full lease of silence from an owner.
    for _ in 0..8 {
        if kv.claim(&claim_key(name, attempt))? {
            let until = now + seconds;
            write(
                kv,
                name,
                Record {
                    attempt,
                    until,
                    result: None,
                },
            )?;
            return Ok(Lease::Acquired { attempt, until });
        }
        // Someone claimed this attempt first. Held if their record shows it...
        if let Some(r) = load(kv, name)? {
            if r.attempt >= attempt {
                if r.until > now {
                    return Ok(r.refusal(now));
                }
                attempt = r.attempt + 1;
                continue;
            }
        }
        // ...else they may have died before writing it: wait a lease from first sight.
        let first_seen = first_seen(kv, &seen_key(name, attempt), now)?;
        if now - first_seen < seconds {
            return Ok(Lease::Held {
                retry_after: first_seen + seconds - now,
            });
        }
        attempt += 1;
    }
    Ok(Lease::Held {
        retry_after: seconds,
    })
}

/// The time `key` first recorded (set to `now` if absent). A race between two first
/// sightings keeps the later one: that only postpones a takeover.
pub(crate) fn first_seen(kv: &impl KeyValue, key: &str, now: i64) -> Result<i64, StoreError> {
    let seen = kv
        .get(key)?
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|s| s.parse().ok());
    match seen {
        Some(at) => Ok(at),
        None => {
            kv.set(key, now.to_string().as_bytes())?;
            Ok(now)
        }
    }
}

fn write(kv: &impl KeyValue, name: &str, record: Record) -> Result<(), StoreError> {
    kv.set(
        &record_key(name),
        &serde_json::to_vec(&record).unwrap_or_default(),
    )
}

/// Gives up attempt `attempt` so the next caller takes over at once (after a failure
/// that left nothing to finish). Does nothing if someone has already taken over.
pub fn give_up(kv: &impl KeyValue, name: &str, attempt: u32) -> Result<(), StoreError> {
    if superseded(kv, name, attempt)? {
        return Ok(());
    }
    write(
        kv,
        name,
        Record {
            attempt,
            until: 0,
            result: None,
        },
    )
}

/// Closes the lease for good: the work is done and must never be taken over (an email
/// sent, or refused for ever). Later callers of [`acquire`] get `result` back.
pub fn close(kv: &impl KeyValue, name: &str, attempt: u32, result: &str) -> Result<(), StoreError> {
    let record = Record {
        attempt,
        until: i64::MAX,
        result: Some(result.to_owned()),
    };
    write(kv, name, record)
}

/// Whether someone has taken over from attempt `attempt` (claimed the next one). An
/// owner checks this before it commits, so a slow owner and its successor do not both
/// commit. (Between this check and the commit is the one window left open.)
pub fn superseded(kv: &impl KeyValue, name: &str, attempt: u32) -> Result<bool, StoreError> {
    Ok(kv.counter(&claim_key(name, attempt + 1))? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_store::{CounterEncoding, MemoryStore};

    #[test]
    fn one_owner_until_the_lease_runs_out() {
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        assert_eq!(
            acquire(&kv, "l", 100, 30).unwrap(),
            Lease::Acquired {
                attempt: 0,
                until: 130
            }
        );
        assert_eq!(
            acquire(&kv, "l", 110, 30).unwrap(),
            Lease::Held { retry_after: 20 }
        );
        assert!(!superseded(&kv, "l", 0).unwrap());
        assert_eq!(
            acquire(&kv, "l", 130, 30).unwrap(),
            Lease::Acquired {
                attempt: 1,
                until: 160
            }
        );
        assert!(superseded(&kv, "l", 0).unwrap());
        // The old owner giving up now changes nothing.
        give_up(&kv, "l", 0).unwrap();
        assert_eq!(
            acquire(&kv, "l", 131, 30).unwrap(),
            Lease::Held { retry_after: 29 }
        );
    }

    #[test]
    fn a_closed_lease_is_never_taken_over() {
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        acquire(&kv, "l", 0, 30).unwrap();
        close(&kv, "l", 0, "sent").unwrap();
        assert_eq!(
            acquire(&kv, "l", 1_000_000_000, 30).unwrap(),
            Lease::Done {
                result: Some("sent".into())
            }
        );
    }

    #[test]
    fn giving_up_hands_over_at_once() {
        let kv = MemoryStore::new(CounterEncoding::LittleEndian8);
        acquire(&kv, "l", 0, 30).unwrap();
        give_up(&kv, "l", 0).unwrap();
        assert_eq!(
            acquire(&kv, "l", 1, 30).unwrap(),
            Lease::Acquired {
                attempt: 1,
                until: 31
            }
        );
    }

    #[test]
    fn an_owner_that_died_before_its_record_is_taken_over_after_a_lease() {
        let kv = MemoryStore::new(CounterEncoding::AsciiDecimal);
        // The claim of attempt 0 exists, its record never does.
        assert!(kv.claim(&claim_key("l", 0)).unwrap());
        assert_eq!(
            acquire(&kv, "l", 1_000, 30).unwrap(),
            Lease::Held { retry_after: 30 }
        );
        assert_eq!(
            acquire(&kv, "l", 1_020, 30).unwrap(),
            Lease::Held { retry_after: 10 }
        );
        assert_eq!(
            acquire(&kv, "l", 1_030, 30).unwrap(),
            Lease::Acquired {
                attempt: 1,
                until: 1_060
            }
        );
    }

    #[test]
    fn concurrent_takers_get_one_owner() {
        let kv = std::sync::Arc::new(MemoryStore::new(CounterEncoding::AsciiDecimal));
        let owners: usize = (0..16)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    matches!(acquire(&*kv, "l", 5, 30), Ok(Lease::Acquired { .. }))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| usize::from(t.join().unwrap()))
            .sum();
        assert_eq!(owners, 1);
    }
}
