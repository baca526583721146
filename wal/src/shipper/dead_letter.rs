//! Dead letters: records a sink refused for good, where they go, how to re-drive them.

#[allow(unused_imports)]
use super::*;

/// A record that could not be delivered and was set aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The WAL it came from.
    pub wal_id: String,
    /// The consumer whose sink refused it.
    pub consumer: String,
    /// Its sequence number.
    pub seq: u64,
    /// Its append time, µs since the Unix epoch.
    pub ts_us: u64,
    /// Delivery attempts made (0 when it did not even decode).
    pub attempts: u32,
    /// The last reason it was refused.
    pub reason: String,
    /// When it was set aside, ms since the Unix epoch.
    pub dead_lettered_at_ms: u64,
    /// The schema version the record was written with (1 in letters stored before
    /// versions were recorded).
    #[serde(default = "default_schema_version")]
    pub schema_version: u8,
    /// The record's bytes as appended (postcard, without the schema version byte).
    pub payload: Vec<u8>,
}

pub(super) fn default_schema_version() -> u8 {
    crate::schema::DEFAULT_SCHEMA_VERSION
}

impl DeadLetter {
    /// Decodes the record as `T` written at the current version (no upgrade: use
    /// [`decode_with`](Self::decode_with) and the WAL's schema for older versions).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        postcard::from_bytes(&self.payload).map_err(|e| Error::Decode {
            seq: self.seq,
            context: String::new(),
            source: Box::new(e),
        })
    }

    /// Decodes the record through `schema` (upgrading an older version), e.g.
    /// `letter.decode_with::<T>(wal.options().get_schema())`.
    pub fn decode_with<T: DeserializeOwned>(&self, schema: &crate::schema::Schema) -> Result<T> {
        schema.decode(self.seq, self.schema_version, &self.payload)
    }

    /// The record's idempotency key.
    pub fn key(&self) -> IdempotencyKey {
        IdempotencyKey {
            wal_id: self.wal_id.as_str().into(),
            seq: self.seq,
        }
    }
}

/// Where a shipper puts dead letters. `put` and `put_batch` must be durable when they
/// return `Ok`: the checkpoint moves past the records right after.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Stores one dead letter durably.
    async fn put(&self, letter: &DeadLetter) -> Result<()>;

    /// Stores dead letters durably, in order. The shipper hands over every record of a
    /// batch that does not decode at once: implement this with one durable write. The
    /// default calls `put` for each.
    async fn put_batch(&self, letters: &[DeadLetter]) -> Result<()> {
        for l in letters {
            self.put(l).await?;
        }
        Ok(())
    }
}

/// Another WAL as the dead letter: each [`DeadLetter`] is appended to it as a record
/// (read them back with `read_from::<DeadLetter>` or a consumer).
#[async_trait]
impl<D: Storage> DeadLetterStore for Wal<D> {
    async fn put(&self, letter: &DeadLetter) -> Result<()> {
        self.put_batch(std::slice::from_ref(letter)).await
    }

    async fn put_batch(&self, letters: &[DeadLetter]) -> Result<()> {
        if self.options().get_durability() != crate::Durability::Sync {
            self.append_batch(letters).await?;
            return self.flush().await;
        }
        self.append_batch(letters).await.map(|_| ())
    }
}

/// Metadata key prefix of the default dead-letter store.
pub const DEAD_LETTER_PREFIX: &str = "deadletter.";

/// How the default store encodes a value: this magic, then the postcard encoding of a
/// `Vec<DeadLetter>` (payloads as raw bytes). Values without it are one letter as JSON
/// (stores written before batches).
pub const DEAD_LETTER_MAGIC: &[u8] = b"WSPLDL1\n";

pub(super) fn dead_letter_key(consumer: &str, seq: u64) -> String {
    format!("{DEAD_LETTER_PREFIX}{consumer}.{seq:020}")
}

/// The default store: the WAL's own durable metadata area.
pub(super) struct MetaDeadLetters<S: Storage> {
    pub(super) wal: Wal<S>,
}

#[async_trait]
impl<S: Storage> DeadLetterStore for MetaDeadLetters<S> {
    async fn put(&self, letter: &DeadLetter) -> Result<()> {
        put_meta_letters(&self.wal, std::slice::from_ref(letter))
    }

    async fn put_batch(&self, letters: &[DeadLetter]) -> Result<()> {
        // One key, one durable write per consumer in the batch.
        let mut from = 0;
        while from < letters.len() {
            let c = &letters[from].consumer;
            let n = letters[from..]
                .iter()
                .take_while(|l| &l.consumer == c)
                .count();
            put_meta_letters(&self.wal, &letters[from..from + n])?;
            from += n;
        }
        Ok(())
    }
}

/// Writes letters of one consumer under the key of the first one (one durable write).
pub(super) fn put_meta_letters<S: Storage>(wal: &Wal<S>, letters: &[DeadLetter]) -> Result<()> {
    let Some(first) = letters.first() else {
        return Ok(());
    };
    // A retry after a crash stores the same letters under the same key again.
    write_letters(wal, &dead_letter_key(&first.consumer, first.seq), letters)
}

pub(super) fn encode_letters(letters: &[DeadLetter]) -> Result<Vec<u8>> {
    postcard::to_extend(&letters, DEAD_LETTER_MAGIC.to_vec())
        .map_err(|e| Error::Encode(e.to_string()))
}

/// Decodes a value of the default store (a batch, or one JSON letter of older stores).
pub fn decode_dead_letters(b: &[u8]) -> std::result::Result<Vec<DeadLetter>, String> {
    match b.strip_prefix(DEAD_LETTER_MAGIC) {
        Some(rest) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        None => serde_json::from_slice(b)
            .map(|l| vec![l])
            .map_err(|e| format!("dead letter is not valid JSON: {e}")),
    }
}

pub(super) fn write_letters<S: Storage>(
    wal: &Wal<S>,
    key: &str,
    letters: &[DeadLetter],
) -> Result<()> {
    let io = |op: &'static str| {
        let at = format!("{} {key}", wal.storage().location());
        move |e| Error::io(op, at, e)
    };
    if letters.is_empty() {
        return match wal.storage().remove_meta(key) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove dead letter")(e)),
            _ => Ok(()),
        };
    }
    let bytes = encode_letters(letters)?;
    wal.storage()
        .put_meta(key, &bytes)
        .map_err(io("write dead letter"))
}

/// What [`Wal::redrive_dead_letters`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Redrive {
    /// Dead letters the sink acknowledged (and that were removed).
    pub delivered: u64,
    /// Dead letters still there (refused again, or not decodable as `T`).
    pub remaining: u64,
}

impl<S: Storage> Wal<S> {
    /// The keys of the default store holding `consumer`'s dead letters, sorted, each
    /// with its letters.
    pub(super) fn dead_letter_groups(
        &self,
        consumer: &str,
    ) -> Result<Vec<(String, Vec<DeadLetter>)>> {
        let prefix = format!("{DEAD_LETTER_PREFIX}{consumer}.");
        let loc = self.storage().location();
        let mut keys: Vec<String> = self
            .storage()
            .list_meta(&prefix)
            .map_err(|e| Error::io("list dead letters", loc.clone(), e))?
            .into_iter()
            .filter(|k| {
                let rest = &k[prefix.len()..];
                rest.len() == 20 && rest.bytes().all(|c| c.is_ascii_digit())
            })
            .collect();
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let Some(b) = self
                .storage()
                .get_meta(&k)
                .map_err(|e| Error::io("read dead letter", format!("{loc} {k}"), e))?
            else {
                continue;
            };
            let letters = decode_dead_letters(&b).map_err(|reason| Error::Corrupt {
                segment: format!("{loc}/meta {k}"),
                offset: 0,
                reason,
            })?;
            out.push((k, letters));
        }
        Ok(out)
    }

    /// The dead letters of `consumer` in the default store (the WAL's metadata area),
    /// in sequence order.
    pub fn dead_letters(&self, consumer: &str) -> Result<Vec<DeadLetter>> {
        let mut all: Vec<DeadLetter> = self
            .dead_letter_groups(consumer)?
            .into_iter()
            .flat_map(|(_, l)| l)
            .collect();
        all.sort_by_key(|l| l.seq);
        all.dedup_by_key(|l| l.seq);
        Ok(all)
    }

    /// Removes one dead letter of `consumer` from the default store (an operator's
    /// deliberate decision; nothing else removes one without delivering it).
    pub fn remove_dead_letter(&self, consumer: &str, seq: u64) -> Result<()> {
        for (key, mut letters) in self.dead_letter_groups(consumer)? {
            let before = letters.len();
            letters.retain(|l| l.seq != seq);
            if letters.len() != before {
                write_letters(self, &key, &letters)?;
            }
        }
        Ok(())
    }

    /// Re-drives the dead letters of `consumer` (default store) into `sink`, one record
    /// per batch, in sequence order, with their original idempotency keys. Records are
    /// decoded through the WAL's schema ([`Options::schema`](crate::Options::schema)),
    /// so letters of an older version go through the upgrade deployed since. A record
    /// leaves the dead letter only once the sink acknowledged it; one refused again,
    /// or one that still does not decode as `T`, stays.
    pub async fn redrive_dead_letters<T, K>(&self, consumer: &str, sink: &mut K) -> Result<Redrive>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        K: Sink<T> + ?Sized,
    {
        let mut r = Redrive::default();
        let schema = self.options().get_schema().clone();
        for (key, letters) in self.dead_letter_groups(consumer)? {
            let mut kept = Vec::new();
            for letter in letters {
                let record = match letter.decode_with::<T>(&schema) {
                    Ok(rec) => rec,
                    Err(e) => {
                        tracing::warn!(consumer, seq = letter.seq, error = %e, "re-drive: a dead letter still does not decode");
                        r.remaining += 1;
                        kept.push(letter);
                        continue;
                    }
                };
                let batch = Batch::new(
                    self.id(),
                    consumer,
                    vec![Entry {
                        seq: letter.seq,
                        ts_us: letter.ts_us,
                        record,
                    }],
                );
                match sink.send(&batch).await {
                    Ok(()) => r.delivered += 1,
                    Err(e) => {
                        tracing::warn!(consumer, seq = letter.seq, error = %e, "re-drive: the sink refused a dead letter again");
                        r.remaining += 1;
                        kept.push(letter);
                    }
                }
            }
            write_letters(self, &key, &kept)?;
        }
        Ok(r)
    }
}
