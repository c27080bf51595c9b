//! Lead storage laid out for millions of leads: a slab of fixed-size cores, a column of
//! model-dependent numbers, lead ids in one byte arena, and an index of `u32` slots.
//!
//! Why not `HashMap<String, LeadState>`: a `String` key costs 24 bytes plus a heap block, and a
//! per-lead `Vec` of group totals another 24 plus a block. Here a lead costs its 40-byte core,
//! `8 * stride` bytes of columns, its id bytes once, and about 5 to 10 bytes of index.

use hashbrown::HashTable;
use std::hash::BuildHasher;

/// Fixed part of a lead's state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeadCore {
    /// The lead's clock: the greatest accepted event time.
    pub tau: i64,
    /// `at` of the lead's previous transition; `i64::MIN` before the first.
    pub last_at: i64,
    /// Due time of this lead's timer entry in the engine's heap; `i64::MAX` when none.
    pub timer: i64,
    /// Offset of the lead id in the arena.
    pub id_off: u32,
    /// Bumped when the slot is freed, so stale timers and dedup entries never match a new lead.
    pub gen: u32,
    /// Transitions since the lead entered state (the `n` of transition ids).
    pub transitions: u32,
    /// Length of the lead id in bytes (ids are at most 256 bytes).
    pub id_len: u16,
    pub qualified: bool,
    pub live: bool,
}

/// Deterministic hashing: the same input always builds the same tables (reproducible replays
/// and benchmarks), and lead ids are not attacker-chosen keys of a network service here.
pub(crate) type Hasher = foldhash::fast::FixedState;

pub(crate) fn hasher() -> Hasher {
    foldhash::fast::FixedState::with_seed(0x6c65_6164_7363_6f72)
}

/// All leads of one engine.
pub(crate) struct Store {
    hasher: Hasher,
    index: HashTable<u32>,
    pub cores: Vec<LeadCore>,
    /// `stride` numbers per slot (f64 bit patterns, or packed limit windows).
    pub cols: Vec<u64>,
    pub stride: usize,
    /// Initial column values of a new lead.
    init_cols: Vec<u64>,
    arena: Vec<u8>,
    arena_garbage: usize,
    free: Vec<u32>,
    live: usize,
}

impl Store {
    pub fn new(init_cols: Vec<u64>) -> Store {
        Store {
            hasher: hasher(),
            index: HashTable::new(),
            cores: Vec::new(),
            cols: Vec::new(),
            stride: init_cols.len(),
            init_cols,
            arena: Vec::new(),
            arena_garbage: 0,
            free: Vec::new(),
            live: 0,
        }
    }

    /// Leads in state.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn id(&self, slot: u32) -> &str {
        let c = &self.cores[slot as usize];
        let bytes = &self.arena[c.id_off as usize..c.id_off as usize + c.id_len as usize];
        // The arena only ever receives whole `&str`s.
        std::str::from_utf8(bytes).expect("lead ids are UTF-8")
    }

    pub fn find(&self, id: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(id.as_bytes());
        let (cores, arena) = (&self.cores, &self.arena);
        self.index
            .find(hash, |&slot| {
                let c = &cores[slot as usize];
                &arena[c.id_off as usize..c.id_off as usize + c.id_len as usize] == id.as_bytes()
            })
            .copied()
    }

    /// Finds the lead or creates it with clock `tau`. Returns the slot and whether it is new.
    pub fn find_or_insert(&mut self, id: &str, tau: i64) -> (u32, bool) {
        let hash = self.hasher.hash_one(id.as_bytes());
        let (cores, arena) = (&self.cores, &self.arena);
        let found = self
            .index
            .find(hash, |&slot| {
                let c = &cores[slot as usize];
                &arena[c.id_off as usize..c.id_off as usize + c.id_len as usize] == id.as_bytes()
            })
            .copied();
        if let Some(slot) = found {
            return (slot, false);
        }
        let id_off = u32::try_from(self.arena.len()).expect("lead id arena exceeds 4 GiB");
        self.arena.extend_from_slice(id.as_bytes());
        let core = LeadCore {
            tau,
            last_at: i64::MIN,
            timer: i64::MAX,
            id_off,
            gen: 0,
            transitions: 0,
            id_len: u16::try_from(id.len()).expect("lead ids are at most 256 bytes"),
            qualified: false,
            live: true,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                let gen = self.cores[slot as usize].gen;
                self.cores[slot as usize] = LeadCore { gen, ..core };
                let s = slot as usize * self.stride;
                self.cols[s..s + self.stride].copy_from_slice(&self.init_cols);
                slot
            }
            None => {
                let slot = u32::try_from(self.cores.len()).expect("more than 4G leads");
                self.cores.push(core);
                self.cols.extend_from_slice(&self.init_cols);
                slot
            }
        };
        let (cores, arena, hasher) = (&self.cores, &self.arena, &self.hasher);
        self.index.insert_unique(hash, slot, |&s| {
            let c = &cores[s as usize];
            hasher.hash_one(&arena[c.id_off as usize..c.id_off as usize + c.id_len as usize])
        });
        self.live += 1;
        (slot, true)
    }

    /// Removes a lead; its slot is reused with a new generation.
    pub fn remove(&mut self, slot: u32) {
        let hash = self.hasher.hash_one(self.id(slot).as_bytes());
        if let Ok(entry) = self.index.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
        let c = &mut self.cores[slot as usize];
        c.live = false;
        c.gen = c.gen.wrapping_add(1);
        c.timer = i64::MAX;
        self.arena_garbage += c.id_len as usize;
        self.free.push(slot);
        self.live -= 1;
        if self.arena_garbage > 1 << 20 && self.arena_garbage * 2 > self.arena.len() {
            self.compact_arena();
        }
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

    #[inline]
    pub fn col(&self, slot: u32, i: usize) -> u64 {
        self.cols[slot as usize * self.stride + i]
    }

    #[inline]
    pub fn cols_mut(&mut self, slot: u32) -> &mut [u64] {
        let s = slot as usize * self.stride;
        &mut self.cols[s..s + self.stride]
    }

    #[inline]
    pub fn cols_of(&self, slot: u32) -> &[u64] {
        let s = slot as usize * self.stride;
        &self.cols[s..s + self.stride]
    }

    /// Slots of live leads.
    pub fn live_slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.cores.iter().enumerate().filter(|(_, c)| c.live).map(|(i, _)| i as u32)
    }
}
