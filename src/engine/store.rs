//! Lead storage laid out for millions of leads: a slab of 48-byte cores, sparse rows of
//! model-dependent numbers, lead ids in one byte arena, and an index of `u32` slots.
//!
//! Why not `HashMap<String, LeadState>` with a dense vector of totals: a `String` key costs 24
//! bytes plus a heap block, and the example model has 16 numbers per lead (4 groups, 10 limited
//! rules, ...) of which a typical lead touches two or three. Here a lead costs its core, 8 bytes
//! per number it actually has, its id bytes once, and about 5 to 10 bytes of index.
//!
//! Sparse rows: a lead's `mask` says which columns it has; their values sit in a chunk of
//! `popcount(mask)` words in the pool of that size, in column order. Adding a column moves the
//! chunk to the next pool (rare: once per column per lead); freed chunks are reused.

use hashbrown::HashTable;
use std::hash::BuildHasher;

/// Fixed part of a lead's state: 48 bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeadCore {
    /// The lead's clock: the greatest accepted event time.
    pub tau: i64,
    /// `at` of the lead's previous transition; `i64::MIN` before the first.
    pub last_at: i64,
    /// Columns present in the row.
    mask: u64,
    /// Offset of the lead id in the arena.
    id_off: u32,
    /// Bumped when the slot is freed or reset, so stale timers and dedup entries never match.
    pub gen: u32,
    /// Transitions since the lead entered state (the `n` of transition ids).
    pub transitions: u32,
    /// Index of the row's chunk in the pool of `popcount(mask)` words.
    chunk: u32,
    /// Length of the lead id in bytes (ids are at most 256 bytes).
    id_len: u16,
    pub qualified: bool,
    pub live: bool,
    /// Changed since its state was last written to the changelog (engines with a journal).
    pub dirty: bool,
}

/// Deterministic hashing: the same input always builds the same tables (reproducible replays
/// and benchmarks).
pub(crate) type Hasher = foldhash::fast::FixedState;

pub(crate) fn hasher() -> Hasher {
    foldhash::fast::FixedState::with_seed(0x6c65_6164_7363_6f72)
}

/// Chunks of `k` words.
#[derive(Default)]
struct Pool {
    words: Vec<u64>,
    free: Vec<u32>,
}

/// All leads of one engine.
pub(crate) struct Store {
    hasher: Hasher,
    index: HashTable<u32>,
    pub cores: Vec<LeadCore>,
    /// `pools[k]` holds rows of `k` columns; `pools[0]` is unused.
    pools: Vec<Pool>,
    arena: Vec<u8>,
    arena_garbage: usize,
    free: Vec<u32>,
}

impl Store {
    /// A store for rows of at most `columns` (<= 64) columns.
    pub fn new(columns: usize) -> Store {
        assert!(columns <= 64, "at most 64 columns");
        Store {
            hasher: hasher(),
            index: HashTable::new(),
            cores: Vec::new(),
            pools: (0..=columns).map(|_| Pool::default()).collect(),
            arena: Vec::new(),
            arena_garbage: 0,
            free: Vec::new(),
        }
    }

    /// Room for `additional` more leads (ids assumed about 16 bytes).
    pub fn reserve(&mut self, additional: usize) {
        let (cores, arena, hasher) = (&self.cores, &self.arena, &self.hasher);
        self.index.reserve(additional, |&s| {
            let c = &cores[s as usize];
            hasher.hash_one(&arena[c.id_off as usize..c.id_off as usize + c.id_len as usize])
        });
        self.cores.reserve(additional);
        self.arena.reserve(additional * 16);
    }

    fn id_bytes(&self, c: &LeadCore) -> &[u8] {
        &self.arena[c.id_off as usize..c.id_off as usize + c.id_len as usize]
    }

    pub fn id(&self, slot: u32) -> &str {
        // The arena only ever receives whole `&str`s.
        std::str::from_utf8(self.id_bytes(&self.cores[slot as usize])).expect("lead ids are UTF-8")
    }

    pub fn find(&self, id: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(id.as_bytes());
        self.index.find(hash, |&slot| self.id_bytes(&self.cores[slot as usize]) == id.as_bytes()).copied()
    }

    /// Finds the lead or creates it with clock `tau`. Returns the slot and whether it is new.
    pub fn find_or_insert(&mut self, id: &str, tau: i64) -> (u32, bool) {
        let hash = self.hasher.hash_one(id.as_bytes());
        if let Some(&slot) = self.index.find(hash, |&slot| self.id_bytes(&self.cores[slot as usize]) == id.as_bytes()) {
            return (slot, false);
        }
        let id_off = u32::try_from(self.arena.len()).expect("lead id arena exceeds 4 GiB");
        self.arena.extend_from_slice(id.as_bytes());
        let core = LeadCore {
            tau,
            last_at: i64::MIN,
            mask: 0,
            id_off,
            gen: 0,
            transitions: 0,
            chunk: 0,
            id_len: u16::try_from(id.len()).expect("lead ids are at most 256 bytes"),
            qualified: false,
            live: true,
            dirty: false,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                let gen = self.cores[slot as usize].gen;
                self.cores[slot as usize] = LeadCore { gen, ..core };
                slot
            }
            None => {
                let slot = u32::try_from(self.cores.len()).expect("more than 4G leads");
                self.cores.push(core);
                slot
            }
        };
        let (cores, arena, hasher) = (&self.cores, &self.arena, &self.hasher);
        self.index.insert_unique(hash, slot, |&s| {
            let c = &cores[s as usize];
            hasher.hash_one(&arena[c.id_off as usize..c.id_off as usize + c.id_len as usize])
        });
        (slot, true)
    }

    /// Clears a lead's state in place, as if it had just entered with clock `tau`: a lead that
    /// was forgotten and comes back starts afresh. Returns the new generation.
    pub fn reset(&mut self, slot: u32, tau: i64) {
        self.free_row(slot);
        let c = &mut self.cores[slot as usize];
        c.gen = c.gen.wrapping_add(1);
        c.tau = tau;
        c.last_at = i64::MIN;
        c.transitions = 0;
        c.qualified = false;
    }

    /// Removes a lead; its slot is reused with a new generation.
    pub fn remove(&mut self, slot: u32) {
        let hash = self.hasher.hash_one(self.id(slot).as_bytes());
        if let Ok(entry) = self.index.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
        self.free_row(slot);
        let c = &mut self.cores[slot as usize];
        c.live = false;
        c.gen = c.gen.wrapping_add(1);
        self.arena_garbage += c.id_len as usize;
        self.free.push(slot);
        if self.arena_garbage > 1 << 20 && self.arena_garbage * 2 > self.arena.len() {
            self.compact_arena();
        }
    }

    fn free_row(&mut self, slot: u32) {
        let c = &mut self.cores[slot as usize];
        let k = c.mask.count_ones() as usize;
        if k > 0 {
            self.pools[k].free.push(c.chunk);
        }
        c.mask = 0;
        c.chunk = 0;
    }

    /// Rewrites the arena without the ids of removed leads.
    fn compact_arena(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.arena_garbage);
        for c in self.cores.iter_mut().filter(|c| c.live) {
            let off = arena.len() as u32;
            arena.extend_from_slice(&self.arena[c.id_off as usize..c.id_off as usize + c.id_len as usize]);
            c.id_off = off;
        }
        self.arena = arena;
        self.arena_garbage = 0;
    }

    /// The row: which columns are present, and their values in column order.
    #[inline]
    pub fn row(&self, slot: u32) -> (u64, &[u64]) {
        let c = &self.cores[slot as usize];
        let k = c.mask.count_ones() as usize;
        let start = c.chunk as usize * k;
        (c.mask, &self.pools[k].words[start..start + k])
    }

    #[inline]
    pub fn row_mut(&mut self, slot: u32) -> (u64, &mut [u64]) {
        let c = &self.cores[slot as usize];
        let k = c.mask.count_ones() as usize;
        let start = c.chunk as usize * k;
        (c.mask, &mut self.pools[k].words[start..start + k])
    }

    /// The value of column `col`, or `default` when the row does not have it.
    #[inline]
    pub fn get(&self, slot: u32, col: usize, default: u64) -> u64 {
        let (mask, words) = self.row(slot);
        if mask & (1 << col) == 0 {
            return default;
        }
        words[(mask & ((1u64 << col) - 1)).count_ones() as usize]
    }

    /// Sets column `col`, adding it to the row if needed.
    #[inline]
    pub fn set(&mut self, slot: u32, col: usize, value: u64) {
        let mask = self.cores[slot as usize].mask;
        let rank = (mask & ((1u64 << col) - 1)).count_ones() as usize;
        if mask & (1 << col) != 0 {
            self.row_mut(slot).1[rank] = value;
            return;
        }
        // Move the row to the pool one word wider, inserting the new column at its rank.
        let k = mask.count_ones() as usize;
        let old_chunk = self.cores[slot as usize].chunk as usize;
        let mut row = [0u64; 64];
        row[..k].copy_from_slice(&self.pools[k].words[old_chunk * k..old_chunk * k + k]);
        row.copy_within(rank..k, rank + 1);
        row[rank] = value;
        if k > 0 {
            self.pools[k].free.push(old_chunk as u32);
        }
        let pool = &mut self.pools[k + 1];
        let chunk = match pool.free.pop() {
            Some(chunk) => {
                pool.words[chunk as usize * (k + 1)..(chunk as usize + 1) * (k + 1)].copy_from_slice(&row[..k + 1]);
                chunk
            }
            None => {
                let chunk = u32::try_from(pool.words.len() / (k + 1)).expect("more than 4G rows");
                pool.words.extend_from_slice(&row[..k + 1]);
                chunk
            }
        };
        let c = &mut self.cores[slot as usize];
        c.mask = mask | 1 << col;
        c.chunk = chunk;
    }

    /// Slots of live leads.
    pub fn live_slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.cores.iter().enumerate().filter(|(_, c)| c.live).map(|(i, _)| i as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_rows_keep_values_in_column_order() {
        let mut s = Store::new(8);
        let (a, new) = s.find_or_insert("a", 5);
        assert!(new);
        let (b, _) = s.find_or_insert("b", 7);
        assert_eq!(s.get(a, 3, 99), 99);
        s.set(a, 5, 50);
        s.set(a, 1, 10);
        s.set(b, 2, 20);
        s.set(a, 3, 30);
        s.set(a, 3, 31);
        assert_eq!(s.row(a), (0b10_1010, &[10, 31, 50][..]));
        assert_eq!(s.get(b, 2, 0), 20);
        assert_eq!(s.find_or_insert("a", 0), (a, false));
        s.remove(a);
        assert_eq!(s.find("a"), None);
        assert_eq!(s.find("b"), Some(b));
        let (c, new) = s.find_or_insert("c", 1);
        assert!(new && c == a, "slot reused");
        assert_eq!(s.row(c).0, 0, "a reused slot starts empty");
        assert_eq!(s.id(c), "c");
        assert_eq!(std::mem::size_of::<LeadCore>(), 48);
    }
}
