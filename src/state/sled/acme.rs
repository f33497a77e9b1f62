//! ACME objects in sled: one tree, each object under `kind \0 id`. Replacing an object only
//! if unchanged is sled's compare-and-swap; taking one is an atomic remove. Every change is
//! flushed before it returns.

use super::{storage, SledState};
use crate::state::acme::{AcmeKind, AcmeObject};
use crate::state::records::{decode, encode};
use crate::state::StateError;

fn key(kind: AcmeKind, id: &str) -> Vec<u8> {
    let mut k = kind.name().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

impl SledState {
    /// Stores a new object; false (changing nothing) when (kind, id) is taken.
    pub fn acme_insert(
        &self,
        kind: AcmeKind,
        id: &str,
        object: &AcmeObject,
    ) -> Result<bool, StateError> {
        self.insert_new(&self.acme, key(kind, id), object)
    }

    /// Stores (or replaces) an object.
    pub fn acme_put(
        &self,
        kind: AcmeKind,
        id: &str,
        object: &AcmeObject,
    ) -> Result<(), StateError> {
        self.acme
            .insert(key(kind, id), encode(object)?)
            .map_err(storage)?;
        self.flush()
    }

    /// One object.
    pub fn acme_get(&self, kind: AcmeKind, id: &str) -> Result<Option<AcmeObject>, StateError> {
        let k = key(kind, id);
        self.acme
            .get(&k)
            .map_err(storage)?
            .map(|v| decode(&k, &v))
            .transpose()
    }

    /// Replaces the object with `new` only if its record is still `old`; false otherwise.
    pub fn acme_update(
        &self,
        kind: AcmeKind,
        id: &str,
        old: &serde_json::Value,
        new: &AcmeObject,
    ) -> Result<bool, StateError> {
        let k = key(kind, id);
        let Some(current) = self.acme.get(&k).map_err(storage)? else {
            return Ok(false);
        };
        let stored: AcmeObject = decode(&k, &current)?;
        if &stored.record != old {
            return Ok(false);
        }
        let done = self
            .acme
            .compare_and_swap(&k, Some(current), Some(encode(new)?))
            .map_err(storage)?
            .is_ok();
        self.flush()?;
        Ok(done)
    }

    /// Removes the object and returns it; of any number of callers exactly one gets it.
    pub fn acme_take(&self, kind: AcmeKind, id: &str) -> Result<Option<AcmeObject>, StateError> {
        let k = key(kind, id);
        let taken = self.acme.remove(&k).map_err(storage)?;
        self.flush()?;
        taken.map(|v| decode(&k, &v)).transpose()
    }

    /// Every object of a kind, by id.
    pub fn acme_list(&self, kind: AcmeKind) -> Result<Vec<(String, AcmeObject)>, StateError> {
        let prefix = key(kind, "");
        let mut out = Vec::new();
        for item in self.acme.scan_prefix(&prefix) {
            let (k, v) = item.map_err(storage)?;
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            out.push((id, decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Forgets every object that expired at or before `now` (unix seconds); returns how many.
    pub fn acme_prune(&self, now: i64) -> Result<u64, StateError> {
        let mut pruned = 0;
        for item in self.acme.iter() {
            let (k, v) = item.map_err(storage)?;
            let object: AcmeObject = decode(&k, &v)?;
            if object.expires_at.is_some_and(|e| e <= now)
                && self
                    .acme
                    .compare_and_swap(&k, Some(v), None as Option<&[u8]>)
                    .map_err(storage)?
                    .is_ok()
            {
                pruned += 1;
            }
        }
        self.flush()?;
        Ok(pruned)
    }
}
