//! Prefix caching: the keys and values of prompts already prefilled, kept so that a prompt
//! sharing a prefix with one of them (a system prompt, few-shot examples, the earlier turns of
//! a conversation) copies that prefix's keys and values instead of computing them again.
//!
//! A position's keys and values depend only on the tokens up to it, so a copy is exactly what
//! prefilling would write: answers are the same with and without the cache. Entries are whole
//! prompts; an index maps the hash of every prefix of whole blocks of [`BLOCK`] tokens to the
//! newest entry that holds it, so a lookup finds the longest shared block prefix in one probe
//! per block, verifies the tokens (a hash is never trusted alone) and extends the match token by
//! token. Entries live within a byte budget; the one used longest ago leaves first.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use factory_model::KvCache;

/// Tokens per indexed block: prompts shorter than one block are not kept.
pub const BLOCK: usize = 16;
/// Entries an index slot remembers for one block prefix, newest last.
const PER_PREFIX: usize = 8;

struct Entry {
    tokens: Vec<u32>,
    cache: KvCache,
    /// Its block hashes, to remove them from the index when it leaves.
    hashes: Vec<u64>,
    last_used: u64,
}

/// Prompts' keys and values within a byte budget.
pub struct PrefixCache {
    budget: usize,
    bytes: usize,
    entries: HashMap<u64, Entry>,
    /// Hash of a prefix of whole blocks -> the newest entries holding it.
    index: HashMap<u64, Vec<u64>>,
    next_id: u64,
    clock: u64,
}

/// The hashes of `tokens`' prefixes of 1, 2, ... whole blocks, each chained on the one before.
fn block_hashes(tokens: &[u32]) -> Vec<u64> {
    let mut hashes = Vec::with_capacity(tokens.len() / BLOCK);
    let mut previous = 0u64;
    for block in tokens.chunks_exact(BLOCK) {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        previous.hash(&mut hasher);
        block.hash(&mut hasher);
        previous = hasher.finish();
        hashes.push(previous);
    }
    hashes
}

impl PrefixCache {
    pub fn new(budget: usize) -> Self {
        PrefixCache { budget, bytes: 0, entries: HashMap::new(), index: HashMap::new(), next_id: 0, clock: 0 }
    }

    /// Bytes the kept keys and values take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A cache of `capacity` positions holding the longest prefix of `prompt` that a kept
    /// prompt shares, and that prefix's length; always leaves at least the prompt's last token
    /// to prefill (its logits are the first token's). None when nothing is shared.
    pub fn restore(&mut self, prompt: &[u32], capacity: usize) -> Option<(KvCache, usize)> {
        let usable = prompt.len().saturating_sub(1);
        let hashes = block_hashes(&prompt[..usable]);
        self.clock += 1;
        for (blocks, hash) in hashes.iter().enumerate().rev() {
            let shared = (blocks + 1) * BLOCK;
            let mut best: Option<(u64, usize)> = None;
            for id in self.index.get(hash).into_iter().flatten() {
                let Some(entry) = self.entries.get(id) else { continue };
                if entry.tokens.len() < shared || entry.tokens[..shared] != prompt[..shared] {
                    continue;
                }
                let mut matched = shared;
                while matched < usable && matched < entry.tokens.len() && entry.tokens[matched] == prompt[matched] {
                    matched += 1;
                }
                if best.is_none_or(|(_, most)| matched > most) {
                    best = Some((*id, matched));
                }
            }
            let Some((id, matched)) = best else { continue };
            let entry = self.entries.get_mut(&id)?;
            let restored = entry.cache.prefix(matched, capacity).ok()?;
            entry.last_used = self.clock;
            return Some((restored, matched));
        }
        None
    }

    /// Keeps the keys and values of `prompt`, prefilled into `cache`, unless a kept prompt
    /// already covers it or it does not fit the budget.
    pub fn keep(&mut self, prompt: &[u32], cache: &KvCache) {
        if prompt.len() < BLOCK || self.budget == 0 || cache.len() < prompt.len() {
            return;
        }
        let hashes = block_hashes(prompt);
        let covered = hashes
            .last()
            .and_then(|hash| self.index.get(hash))
            .into_iter()
            .flatten()
            .filter_map(|id| self.entries.get(id))
            .any(|entry| entry.tokens.len() >= prompt.len() && entry.tokens[..prompt.len()] == *prompt);
        if covered {
            return;
        }
        let Ok(kept) = cache.prefix(prompt.len(), prompt.len()) else { return };
        let size = kept.bytes();
        if size > self.budget {
            return;
        }
        while self.bytes + size > self.budget {
            if !self.evict_oldest() {
                return;
            }
        }
        self.clock += 1;
        let id = self.next_id;
        self.next_id += 1;
        for hash in &hashes {
            let ids = self.index.entry(*hash).or_default();
            ids.push(id);
            if ids.len() > PER_PREFIX {
                ids.remove(0);
            }
        }
        self.bytes += size;
        self.entries.insert(id, Entry { tokens: prompt.to_vec(), cache: kept, hashes, last_used: self.clock });
    }

    fn evict_oldest(&mut self) -> bool {
        let Some(oldest) = self.entries.iter().min_by_key(|(_, entry)| entry.last_used).map(|(id, _)| *id) else {
            return false;
        };
        if let Some(entry) = self.entries.remove(&oldest) {
            self.bytes -= entry.cache.bytes();
            for hash in entry.hashes {
                if let Some(ids) = self.index.get_mut(&hash) {
                    ids.retain(|id| *id != oldest);
                    if ids.is_empty() {
                        self.index.remove(&hash);
                    }
                }
            }
        }
        true
    }
}
