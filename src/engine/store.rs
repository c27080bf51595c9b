//! Lead storage laid out for millions of leads: a slab of one-cache-line cores, sparse rows of
//! model-dependent numbers (inside the core when they are narrow), lead ids in one byte arena,
//! per-lead tables of remembered event ids, and an open-addressing index of slots.
//!
//! Why not `HashMap<String, LeadState>` with a dense vector of totals: a `String` key costs 24
//! bytes plus a heap block, and the example model has 16 numbers per lead (4 groups, 10 limited
//! rules, ...) of which a typical lead touches two or three. Here a lead costs its 64-byte core
//! (which holds up to two numbers), 8 bytes per number beyond those when it has more than two,
//! its id bytes once, about 11 to 21 bytes of index, and 16 bytes per remembered event id.
//!
//! The per-event work touches a handful of places that are almost never in cache at millions of
//! leads: the index entry, the core, the id bytes, the row and the event-id table. Their
//! addresses depend on each other (index → core → the rest), so [`Store::prefetch_index`],
//! [`Store::prefetch_core`] and [`Store::prefetch_lead`] let a caller that holds a batch of
//! events start those loads for all of them, one level at a time, before applying any: the
//! cache misses of a batch then overlap instead of queueing one after the other.
//!
//! Sparse rows: a lead's `mask` says which columns it has; their values sit in column order in
//! the core when there are at most two, else in a chunk of `popcount(mask)` words in the pool of
//! that size. Adding a column moves the chunk to the next pool; freed chunks are reused.
//!
//! Event ids: a lead remembers the 64-bit hashes of its recent event ids with the lead's clock
//! after each. Up to 8 live in a short list; beyond that in an open-addressing table of the
//! lead's own. Entries the dedup window no longer covers are dropped whenever the list or table
//! is full, before it grows: a lead's clock never goes back, so an entry that has left the
//! window never comes back into it.

use std::hash::BuildHasher;

/// Fixed part of a lead's state: one cache line (64 bytes, aligned), so that reading a lead
/// touches one line, not two (48-byte cores straddled lines: every other one had its flags in
/// a line nobody had prefetched). The line has room for a row of up to [`INLINE`] columns, the
/// common case (a lead touches two or three numbers of the model), which then costs no second
/// line either.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct LeadCore {
    /// The lead's clock: the greatest accepted event time.
    pub tau: i64,
    /// `at` of the lead's previous transition; `i64::MIN` before the first.
    pub last_at: i64,
    /// Columns present in the row.
    mask: u64,
    /// The row when it has at most [`INLINE`] columns.
    inline: [u64; INLINE],
    /// Offset of the lead id in the arena.
    id_off: u32,
    /// Bumped when the slot is freed or reset, so stale timers never match.
    pub gen: u32,
    /// Transitions since the lead entered state (the `n` of transition ids).
    pub transitions: u32,
    /// Index of the row's chunk in the pool of `popcount(mask)` words (rows wider than
    /// [`INLINE`]).
    chunk: u32,
    /// Index of the event-id table's chunk in `id_pools[ids_class - 1]`.
    ids_chunk: u32,
    /// Length of the lead id in bytes, minus one (ids are 1 to 256 bytes).
    id_len_m1: u8,
    /// 0: no remembered event id; else 1 + the class of the table (capacity `1 << class`).
    ids_class: u8,
    flags: u8,
}

/// Columns a row keeps inside its lead's core.
const INLINE: usize = 2;

/// The cores, in pages of [`PAGE`] (256 KiB): growing adds a page and never moves the others.
/// A `Vec` of cache-line-aligned cores would double by allocating anew and copying (the system
/// allocator cannot grow an over-aligned block in place), briefly holding every core twice:
/// at 10M leads, 600 MiB of peak memory for nothing.
#[derive(Default)]
pub(crate) struct Cores {
    pages: Vec<Box<[LeadCore]>>,
    len: usize,
}

const PAGE_BITS: u32 = 12;
const PAGE: usize = 1 << PAGE_BITS;

impl Cores {
    pub fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, core: LeadCore) {
        if self.len == self.pages.len() * PAGE {
            self.pages.push(vec![core; PAGE].into_boxed_slice());
        }
        let i = self.len;
        self.len += 1;
        self[i] = core;
    }

    fn reserve(&mut self, additional: usize) {
        self.pages.reserve((self.len + additional).div_ceil(PAGE).saturating_sub(self.pages.len()));
    }

    #[inline]
    pub fn get(&self, i: usize) -> Option<&LeadCore> {
        (i < self.len).then(|| &self.pages[i >> PAGE_BITS][i & (PAGE - 1)])
    }

    #[inline]
    fn ptr(&self, i: usize) -> *const LeadCore {
        match self.pages.get(i >> PAGE_BITS) {
            Some(page) => page.as_ptr().wrapping_add(i & (PAGE - 1)),
            None => std::ptr::null(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &LeadCore> + '_ {
        self.pages.iter().flat_map(|p| p.iter()).take(self.len)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut LeadCore> + '_ {
        let len = self.len;
        self.pages.iter_mut().flat_map(|p| p.iter_mut()).take(len)
    }
}

impl std::ops::Index<usize> for Cores {
    type Output = LeadCore;

    #[inline]
    fn index(&self, i: usize) -> &LeadCore {
        debug_assert!(i < self.len);
        &self.pages[i >> PAGE_BITS][i & (PAGE - 1)]
    }
}

impl std::ops::IndexMut<usize> for Cores {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut LeadCore {
        debug_assert!(i < self.len);
        &mut self.pages[i >> PAGE_BITS][i & (PAGE - 1)]
    }
}

const QUALIFIED: u8 = 1;
const LIVE: u8 = 2;
const DIRTY: u8 = 4;

impl LeadCore {
    #[inline]
    pub fn qualified(&self) -> bool {
        self.flags & QUALIFIED != 0
    }

    #[inline]
    pub fn set_qualified(&mut self, q: bool) {
        self.flags = if q { self.flags | QUALIFIED } else { self.flags & !QUALIFIED };
    }

    /// In use (not a freed slot).
    #[inline]
    pub fn live(&self) -> bool {
        self.flags & LIVE != 0
    }

    /// Changed since its state was last written to the changelog (engines with a journal).
    #[inline]
    pub fn dirty(&self) -> bool {
        self.flags & DIRTY != 0
    }

    #[inline]
    pub fn set_dirty(&mut self, d: bool) {
        self.flags = if d { self.flags | DIRTY } else { self.flags & !DIRTY };
    }

    #[inline]
    fn id_len(&self) -> usize {
        self.id_len_m1 as usize + 1
    }
}

/// Deterministic hashing: the same input always builds the same tables (reproducible replays
/// and benchmarks).
pub(crate) type Hasher = foldhash::fast::FixedState;

pub(crate) fn hasher() -> Hasher {
    foldhash::fast::FixedState::with_seed(0x6c65_6164_7363_6f72)
}

/// Asks the CPU to start loading the cache line at `p` (no effect on other architectures).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and has no visible effect, whatever
    // the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Open addressing with linear probing over `u64` entries: the high 32 bits of the lead id's
/// hash (the tag) and the slot + 1 (0 is an empty entry). The home position is the tag's top
/// bits, so an entry's home is known from the entry alone: growing and deleting (backward
/// shift) never rehash an id, and a lookup compares ids only on a tag match.
struct Index {
    entries: Vec<u64>,
    /// `32 - log2(entries.len())`.
    shift: u32,
    len: usize,
}

impl Index {
    const MIN_BITS: u32 = 4;

    fn new() -> Index {
        Index { entries: vec![0; 1 << Self::MIN_BITS], shift: 32 - Self::MIN_BITS, len: 0 }
    }

    #[inline]
    fn tag(hash: u64) -> u32 {
        (hash >> 32) as u32
    }

    #[inline]
    fn home(&self, tag: u32) -> usize {
        (tag >> self.shift) as usize
    }

    #[inline]
    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    /// The slot whose entry has this tag and for which `eq` holds.
    #[inline]
    fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let tag = Self::tag(hash);
        let mut i = self.home(tag);
        loop {
            let e = self.entries[i];
            if e == 0 {
                return None;
            }
            if (e >> 32) as u32 == tag {
                let slot = (e as u32).wrapping_sub(1);
                if eq(slot) {
                    return Some(slot);
                }
            }
            i = (i + 1) & self.mask();
        }
    }

    /// The first slot with this tag, unverified (for prefetching).
    #[inline]
    fn candidate(&self, hash: u64) -> Option<u32> {
        self.find(hash, |_| true)
    }

    fn insert(&mut self, hash: u64, slot: u32) {
        if (self.len + 1) * 4 > self.entries.len() * 3 {
            self.grow();
        }
        self.put(Self::tag(hash), slot);
        self.len += 1;
    }

    fn put(&mut self, tag: u32, slot: u32) {
        let mut i = self.home(tag);
        while self.entries[i] != 0 {
            i = (i + 1) & self.mask();
        }
        self.entries[i] = u64::from(tag) << 32 | u64::from(slot + 1);
    }

    fn grow(&mut self) {
        let old = std::mem::take(&mut self.entries);
        let bits = old.len().trailing_zeros() + 1;
        assert!(bits <= 32, "more than 2^31 leads in one engine");
        self.entries = vec![0; 1 << bits];
        self.shift = 32 - bits;
        for e in old.into_iter().filter(|&e| e != 0) {
            self.put((e >> 32) as u32, (e as u32).wrapping_sub(1));
        }
    }

    /// Removes the entry of `slot` (whose id hashes to `hash`), shifting later entries of the
    /// cluster back so that no lookup stops early at the hole.
    fn remove(&mut self, hash: u64, slot: u32) {
        let want = u64::from(Self::tag(hash)) << 32 | u64::from(slot + 1);
        let mut i = self.home(Self::tag(hash));
        while self.entries[i] != want {
            if self.entries[i] == 0 {
                return;
            }
            i = (i + 1) & self.mask();
        }
        let mask = self.mask();
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let e = self.entries[j];
            if e == 0 {
                break;
            }
            // The entry at j may move to the hole if its home is not cyclically in (hole, j].
            let home = self.home((e >> 32) as u32);
            let in_between = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !in_between {
                self.entries[hole] = e;
                hole = j;
            }
        }
        self.entries[hole] = 0;
        self.len -= 1;
    }

    fn reserve(&mut self, additional: usize) {
        while (self.len + additional) * 4 > self.entries.len() * 3 {
            self.grow();
        }
    }
}

/// Chunks of `k` words.
#[derive(Default)]
struct Pool {
    words: Vec<u64>,
    free: Vec<u32>,
}

/// An empty event-id entry (clocks are never negative: timestamps start at 1970).
const NO_ID: [i64; 2] = [0, i64::MIN];

/// Event-id tables of one class: class `c` holds `1 << c` entries; classes above
/// [`SMALL_CLASSES`] have one more entry in front, a header whose first word is the count.
#[derive(Default)]
struct IdPool {
    entries: Vec<[i64; 2]>,
    free: Vec<u32>,
}

/// Classes 0 to 3 (1 to 8 entries) are short lists, filled from the front; larger ones are
/// open-addressing tables kept at most 3/4 full.
const SMALL_CLASSES: usize = 4;

fn chunk_len(class: usize) -> usize {
    if class < SMALL_CLASSES {
        1 << class
    } else {
        (1 << class) + 1
    }
}

/// All leads of one engine.
pub(crate) struct Store {
    hasher: Hasher,
    index: Index,
    pub cores: Cores,
    /// `pools[k]` holds rows of `k` columns; `pools[0]` is unused.
    pools: Vec<Pool>,
    arena: Vec<u8>,
    arena_garbage: usize,
    free: Vec<u32>,
    id_pools: Vec<IdPool>,
    /// Scratch of [`Store::ids_remember`].
    ids_scratch: Vec<[i64; 2]>,
}

impl Store {
    /// A store for rows of at most `columns` (<= 64) columns.
    pub fn new(columns: usize) -> Store {
        assert!(columns <= 64, "at most 64 columns");
        Store {
            hasher: hasher(),
            index: Index::new(),
            cores: Cores::default(),
            pools: (0..=columns).map(|_| Pool::default()).collect(),
            arena: Vec::new(),
            arena_garbage: 0,
            free: Vec::new(),
            id_pools: Vec::new(),
            ids_scratch: Vec::new(),
        }
    }

    /// Room for `additional` more leads (ids assumed about 16 bytes).
    pub fn reserve(&mut self, additional: usize) {
        self.index.reserve(additional);
        self.cores.reserve(additional);
        self.arena.reserve(additional * 16);
    }

    /// The hash the index is keyed by.
    #[inline]
    pub fn hash(&self, id: &str) -> u64 {
        self.hash_bytes(id.as_bytes())
    }

    /// [`Store::hash`] of an id's bytes (whether or not they are UTF-8).
    #[inline]
    pub fn hash_bytes(&self, id: &[u8]) -> u64 {
        self.hasher.hash_one(id)
    }

    #[inline]
    fn id_bytes(&self, c: &LeadCore) -> &[u8] {
        &self.arena[c.id_off as usize..c.id_off as usize + c.id_len()]
    }

    pub fn id(&self, slot: u32) -> &str {
        // The arena only ever receives whole `&str`s.
        std::str::from_utf8(self.id_bytes(&self.cores[slot as usize])).expect("lead ids are UTF-8")
    }

    pub fn find(&self, id: &str) -> Option<u32> {
        self.find_hashed(id, self.hash(id))
    }

    /// [`Store::find`] with the id's [`Store::hash`] already computed.
    #[inline]
    pub fn find_hashed(&self, id: &str, hash: u64) -> Option<u32> {
        self.index.find(hash, |slot| self.id_bytes(&self.cores[slot as usize]) == id.as_bytes())
    }

    /// Finds the lead or creates it with clock `tau`. Returns the slot and whether it is new.
    pub fn find_or_insert(&mut self, id: &str, tau: i64) -> (u32, bool) {
        self.find_or_insert_hashed(id, self.hash(id), tau)
    }

    /// [`Store::find_or_insert`] with the id's [`Store::hash`] already computed.
    pub fn find_or_insert_hashed(&mut self, id: &str, hash: u64, tau: i64) -> (u32, bool) {
        match self.find_hashed(id, hash) {
            Some(slot) => (slot, false),
            None => (self.insert_hashed(id, hash, tau), true),
        }
    }

    /// Adds a lead the caller knows is not in the store, with clock `tau`; returns its slot.
    pub fn insert_hashed(&mut self, id: &str, hash: u64, tau: i64) -> u32 {
        debug_assert!(self.find_hashed(id, hash).is_none(), "lead already in the store");
        assert!((1..=256).contains(&id.len()), "lead ids are 1 to 256 bytes");
        let id_off = u32::try_from(self.arena.len()).expect("lead id arena exceeds 4 GiB");
        self.arena.extend_from_slice(id.as_bytes());
        let core = LeadCore {
            tau,
            last_at: i64::MIN,
            mask: 0,
            inline: [0; INLINE],
            id_off,
            gen: 0,
            transitions: 0,
            chunk: 0,
            ids_chunk: 0,
            id_len_m1: (id.len() - 1) as u8,
            ids_class: 0,
            flags: LIVE,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                let gen = self.cores[slot as usize].gen;
                self.cores[slot as usize] = LeadCore { gen, ..core };
                slot
            }
            None => {
                let slot = u32::try_from(self.cores.len()).expect("more than 4G leads");
                assert!(slot < u32::MAX, "more than 4G leads");
                self.cores.push(core);
                slot
            }
        };
        self.index.insert(hash, slot);
        slot
    }

    /// Clears a lead's state in place, as if it had just entered with clock `tau`: a lead that
    /// was forgotten and comes back starts afresh.
    pub fn reset(&mut self, slot: u32, tau: i64) {
        self.free_row(slot);
        self.ids_clear(slot);
        let c = &mut self.cores[slot as usize];
        c.gen = c.gen.wrapping_add(1);
        c.tau = tau;
        c.last_at = i64::MIN;
        c.transitions = 0;
        c.set_qualified(false);
    }

    /// Removes a lead; its slot is reused with a new generation.
    pub fn remove(&mut self, slot: u32) {
        let hash = self.hash(self.id(slot));
        self.index.remove(hash, slot);
        self.free_row(slot);
        self.ids_clear(slot);
        let c = &mut self.cores[slot as usize];
        c.flags = 0;
        c.gen = c.gen.wrapping_add(1);
        self.arena_garbage += c.id_len();
        self.free.push(slot);
        if self.arena_garbage > 1 << 20 && self.arena_garbage * 2 > self.arena.len() {
            self.compact_arena();
        }
    }

    fn free_row(&mut self, slot: u32) {
        let c = &mut self.cores[slot as usize];
        let k = c.mask.count_ones() as usize;
        if k > INLINE {
            self.pools[k].free.push(c.chunk);
        }
        c.mask = 0;
        c.chunk = 0;
    }

    /// Rewrites the arena without the ids of removed leads.
    fn compact_arena(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.arena_garbage);
        for c in self.cores.iter_mut().filter(|c| c.live()) {
            let off = arena.len() as u32;
            arena.extend_from_slice(&self.arena[c.id_off as usize..c.id_off as usize + c.id_len()]);
            c.id_off = off;
        }
        self.arena = arena;
        self.arena_garbage = 0;
    }

    // -----------------------------------------------------------------------------------------
    // Prefetching (see the module documentation)

    /// Level 1: the index entries where a lookup of `hash` starts.
    #[inline]
    pub fn prefetch_index(&self, hash: u64) {
        let i = self.index.home(Index::tag(hash));
        prefetch(self.index.entries.as_ptr().wrapping_add(i));
    }

    /// Level 2 (once level 1 has arrived): the core of the slot the index points to, if any.
    /// Returns that slot (unverified: the tag may belong to another lead).
    #[inline]
    pub fn prefetch_core(&self, hash: u64) -> Option<u32> {
        let slot = self.index.candidate(hash)?;
        prefetch(self.cores.ptr(slot as usize));
        Some(slot)
    }

    /// Level 2 for a known slot.
    #[inline]
    pub fn prefetch_slot(&self, slot: u32) {
        prefetch(self.cores.ptr(slot as usize));
    }

    /// Level 3 (once level 2 has arrived): the lead's id bytes, its row, and where its event-id
    /// table would hold `id_hash`.
    #[inline]
    pub fn prefetch_lead(&self, slot: u32, id_hash: Option<u64>) {
        let Some(c) = self.cores.get(slot as usize) else { return };
        prefetch(self.arena.as_ptr().wrapping_add(c.id_off as usize));
        let k = c.mask.count_ones() as usize;
        if k > INLINE {
            prefetch(self.pools[k].words.as_ptr().wrapping_add(c.chunk as usize * k));
        }
        if c.ids_class > 0 {
            let class = c.ids_class as usize - 1;
            let start = c.ids_chunk as usize * chunk_len(class);
            let entries = self.id_pools[class].entries.as_ptr();
            // A small table is one or two lines from its start; a large one is read at its
            // header (the count) and where `id_hash` probes.
            prefetch(entries.wrapping_add(start));
            if let (Some(h), true) = (id_hash, class >= SMALL_CLASSES) {
                prefetch(entries.wrapping_add(start + 1 + (h >> (64 - class)) as usize));
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Rows

    /// The row: which columns are present, and their values in column order.
    #[inline]
    pub fn row(&self, slot: u32) -> (u64, &[u64]) {
        let c = &self.cores[slot as usize];
        let k = c.mask.count_ones() as usize;
        if k <= INLINE {
            return (c.mask, &c.inline[..k]);
        }
        let start = c.chunk as usize * k;
        (c.mask, &self.pools[k].words[start..start + k])
    }

    #[inline]
    pub fn row_mut(&mut self, slot: u32) -> (u64, &mut [u64]) {
        let c = &mut self.cores[slot as usize];
        let k = c.mask.count_ones() as usize;
        if k <= INLINE {
            return (c.mask, &mut c.inline[..k]);
        }
        let start = c.chunk as usize * k;
        (c.mask, &mut self.pools[k].words[start..start + k])
    }

    /// Copies the row into `dense` (indexed by column; absent columns are left as they are) and
    /// returns its mask.
    #[inline]
    pub fn load_row(&self, slot: u32, dense: &mut [u64; 64]) -> u64 {
        let (mask, words) = self.row(slot);
        let mut m = mask;
        for &w in words {
            dense[m.trailing_zeros() as usize] = w;
            m &= m - 1;
        }
        mask
    }

    /// Writes the columns `mask` of `dense` back as the lead's row (moving it to another pool
    /// when the set of columns changed).
    #[inline]
    pub fn store_row(&mut self, slot: u32, mask: u64, dense: &[u64; 64]) {
        let old = self.cores[slot as usize].mask;
        if mask != old {
            let k_old = old.count_ones() as usize;
            if k_old > INLINE {
                let chunk = self.cores[slot as usize].chunk;
                self.pools[k_old].free.push(chunk);
            }
            let k = mask.count_ones() as usize;
            let chunk = if k <= INLINE {
                0
            } else {
                let pool = &mut self.pools[k];
                match pool.free.pop() {
                    Some(chunk) => chunk,
                    None => {
                        let chunk = u32::try_from(pool.words.len() / k).expect("more than 4G rows");
                        pool.words.resize(pool.words.len() + k, 0);
                        chunk
                    }
                }
            };
            let c = &mut self.cores[slot as usize];
            c.mask = mask;
            c.chunk = chunk;
        }
        let (_, words) = self.row_mut(slot);
        let mut m = mask;
        for w in words {
            *w = dense[m.trailing_zeros() as usize];
            m &= m - 1;
        }
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
    pub fn set(&mut self, slot: u32, col: usize, value: u64) {
        let mut dense = [0u64; 64];
        let mask = self.load_row(slot, &mut dense);
        dense[col] = value;
        self.store_row(slot, mask | 1 << col, &dense);
    }

    /// Removes column `col` from the row.
    pub fn unset(&mut self, slot: u32, col: usize) {
        let mut dense = [0u64; 64];
        let mask = self.load_row(slot, &mut dense);
        if mask & (1 << col) != 0 {
            self.store_row(slot, mask & !(1 << col), &dense);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Remembered event ids

    fn ids_table(&self, slot: u32) -> Option<(usize, &[[i64; 2]])> {
        let c = &self.cores[slot as usize];
        if c.ids_class == 0 {
            return None;
        }
        let class = c.ids_class as usize - 1;
        let len = chunk_len(class);
        let start = c.ids_chunk as usize * len;
        Some((class, &self.id_pools[class].entries[start..start + len]))
    }

    /// The clock remembered with `id_hash` for this lead, if any (it may be outside the window:
    /// the caller compares).
    #[inline]
    pub fn ids_get(&self, slot: u32, id_hash: u64) -> Option<i64> {
        let (class, t) = self.ids_table(slot)?;
        let key = id_hash as i64;
        if class < SMALL_CLASSES {
            return t.iter().take_while(|e| e[1] != i64::MIN).find(|e| e[0] == key).map(|e| e[1]);
        }
        let mask = (1usize << class) - 1;
        let mut i = (id_hash >> (64 - class)) as usize;
        loop {
            let e = t[1 + i];
            if e[1] == i64::MIN {
                return None;
            }
            if e[0] == key {
                return Some(e[1]);
            }
            i = (i + 1) & mask;
        }
    }

    /// Remembers `id_hash` with `clock` (replacing the clock it had); entries older than
    /// `oldest` may be dropped to make room.
    pub fn ids_remember(&mut self, slot: u32, id_hash: u64, clock: i64, oldest: i64) {
        let key = id_hash as i64;
        let c = self.cores[slot as usize];
        if c.ids_class == 0 {
            let chunk = self.ids_alloc(0);
            let c = &mut self.cores[slot as usize];
            c.ids_class = 1;
            c.ids_chunk = chunk;
            self.id_pools[0].entries[chunk as usize] = [key, clock];
            return;
        }
        let class = c.ids_class as usize - 1;
        let len = chunk_len(class);
        let start = c.ids_chunk as usize * len;
        let t = &mut self.id_pools[class].entries[start..start + len];
        if class < SMALL_CLASSES {
            let mut n = 0;
            while n < t.len() && t[n][1] != i64::MIN {
                if t[n][0] == key {
                    t[n][1] = clock;
                    return;
                }
                n += 1;
            }
            if n < t.len() {
                t[n] = [key, clock];
                return;
            }
        } else {
            let mask = (1usize << class) - 1;
            let mut i = (id_hash >> (64 - class)) as usize;
            loop {
                let e = &mut t[1 + i];
                if e[1] == i64::MIN {
                    break;
                }
                if e[0] == key {
                    e[1] = clock;
                    return;
                }
                i = (i + 1) & mask;
            }
            let count = t[0][0] as usize;
            if (count + 1) * 4 <= (1 << class) * 3 {
                t[1 + i] = [key, clock];
                t[0][0] += 1;
                return;
            }
        }
        // Full: keep what the window still covers, plus the new entry, in a table that fits.
        let mut live = std::mem::take(&mut self.ids_scratch);
        live.clear();
        live.extend(self.ids_entries(slot).filter(|e| e[1] >= oldest));
        live.push([key, clock]);
        self.ids_build(slot, &live);
        self.ids_scratch = live;
    }

    /// Every remembered entry of the lead (hash as `i64`, clock), in no particular order.
    pub fn ids_entries(&self, slot: u32) -> impl Iterator<Item = [i64; 2]> + '_ {
        let t = self.ids_table(slot).map_or(&[][..], |(class, t)| if class < SMALL_CLASSES { t } else { &t[1..] });
        t.iter().copied().filter(|e| e[1] != i64::MIN)
    }

    /// Replaces the lead's remembered ids with `entries` (distinct hashes).
    pub fn ids_build(&mut self, slot: u32, entries: &[[i64; 2]]) {
        self.ids_clear(slot);
        if entries.is_empty() {
            return;
        }
        let n = entries.len();
        let class = if n <= 1 << (SMALL_CLASSES - 1) {
            n.next_power_of_two().trailing_zeros() as usize
        } else {
            // At most half full after a rebuild, so it takes as many inserts again before the next.
            (n * 2).next_power_of_two().trailing_zeros().max(SMALL_CLASSES as u32) as usize
        };
        let chunk = self.ids_alloc(class);
        let len = chunk_len(class);
        let start = chunk as usize * len;
        let t = &mut self.id_pools[class].entries[start..start + len];
        if class < SMALL_CLASSES {
            t[..n].copy_from_slice(entries);
        } else {
            let mask = (1usize << class) - 1;
            for e in entries {
                let mut i = ((e[0] as u64) >> (64 - class)) as usize;
                while t[1 + i][1] != i64::MIN {
                    i = (i + 1) & mask;
                }
                t[1 + i] = *e;
            }
            t[0] = [n as i64, 0];
        }
        let c = &mut self.cores[slot as usize];
        c.ids_class = class as u8 + 1;
        c.ids_chunk = chunk;
    }

    fn ids_alloc(&mut self, class: usize) -> u32 {
        if self.id_pools.len() <= class {
            self.id_pools.resize_with(class + 1, IdPool::default);
        }
        let len = chunk_len(class);
        let pool = &mut self.id_pools[class];
        let chunk = match pool.free.pop() {
            Some(chunk) => chunk,
            None => {
                let chunk = u32::try_from(pool.entries.len() / len).expect("more than 4G event-id tables");
                pool.entries.resize(pool.entries.len() + len, NO_ID);
                chunk
            }
        };
        let start = chunk as usize * len;
        pool.entries[start..start + len].fill(NO_ID);
        if class >= SMALL_CLASSES {
            pool.entries[start] = [0, 0];
        }
        chunk
    }

    /// Forgets every remembered id of the lead.
    pub fn ids_clear(&mut self, slot: u32) {
        let c = &mut self.cores[slot as usize];
        if c.ids_class > 0 {
            let class = c.ids_class as usize - 1;
            self.id_pools[class].free.push(c.ids_chunk);
            c.ids_class = 0;
            c.ids_chunk = 0;
        }
    }

    /// Slots of live leads.
    pub fn live_slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.cores.iter().enumerate().filter(|(_, c)| c.live()).map(|(i, _)| i as u32)
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
        s.unset(a, 3);
        assert_eq!(s.row(a), (0b10_0010, &[10, 50][..]));
        assert_eq!(s.find_or_insert("a", 0), (a, false));
        s.remove(a);
        assert_eq!(s.find("a"), None);
        assert_eq!(s.find("b"), Some(b));
        let (c, new) = s.find_or_insert("c", 1);
        assert!(new && c == a, "slot reused");
        assert_eq!(s.row(c).0, 0, "a reused slot starts empty");
        assert_eq!(s.id(c), "c");
        assert_eq!((std::mem::size_of::<LeadCore>(), std::mem::align_of::<LeadCore>()), (64, 64));
    }

    /// The index against a `HashMap`, through inserts, lookups and removals (backward shift)
    /// across many growths; colliding tags are forced with a hash that keeps only a few bits.
    #[test]
    fn index_agrees_with_a_map() {
        for spread in [u64::MAX, 0xff00_0000_0000_0000, 0x0000_0003_0000_0000] {
            let mut index = Index::new();
            let mut model = std::collections::HashMap::new();
            let h = |k: u64| k.wrapping_mul(0x9e37_79b9_7f4a_7c15) & spread;
            let mut x = 1u64;
            for step in 0..20_000u32 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let key = (x >> 40) % 3000;
                if x & 3 == 0 {
                    if let Some(slot) = model.remove(&key) {
                        index.remove(h(key), slot);
                    }
                } else if let std::collections::hash_map::Entry::Vacant(e) = model.entry(key) {
                    e.insert(step);
                    index.insert(h(key), step);
                }
                let probe = (x >> 20) % 3000;
                let want = model.get(&probe).copied();
                let got = index.find(h(probe), |slot| model.get(&probe) == Some(&slot));
                assert_eq!(got, want, "key {probe} at step {step}");
                assert_eq!(index.len, model.len());
            }
            for (k, &slot) in &model {
                assert_eq!(index.find(h(*k), |s| s == slot), Some(slot));
            }
        }
    }

    /// Event ids against a map, through the short lists, the tables and their rebuilds: what
    /// the window covers is always found with its newest clock.
    #[test]
    fn event_ids_remember_within_the_window() {
        let mut s = Store::new(4);
        let (slot, _) = s.find_or_insert("lead", 0);
        let mut model: std::collections::HashMap<u64, i64> = std::collections::HashMap::new();
        let window = 500;
        for clock in 0..5_000i64 {
            let id = ((clock as u64).wrapping_mul(0x2545_f491_4f6c_dd1d) >> 3) % 700;
            let h = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let oldest = clock - window;
            s.ids_remember(slot, h, clock, oldest);
            model.insert(h, clock);
            for (&k, &c) in &model {
                if c >= oldest {
                    assert_eq!(s.ids_get(slot, k), Some(c), "id {k:x} at clock {clock}");
                }
            }
            let kept = s.ids_entries(slot).count();
            let live = model.values().filter(|&&c| c >= oldest).count();
            assert!(kept >= live && kept <= 4 * live.max(4) + 8, "{kept} kept for {live} live");
        }
        s.ids_clear(slot);
        assert_eq!(s.ids_entries(slot).count(), 0);
        assert_eq!(s.ids_get(slot, 1), None);
    }
}
