//! A hierarchical timing wheel: a pure data structure, with no threads and no clock.
//!
//! Time is a `u64` count of 1 ms ticks since the wheel was created. The caller converts
//! instants to ticks (rounding up) and tells the wheel how far time has gone with
//! [`Wheel::advance`]; the wheel never reads a clock. `elapsed` is the last tick passed to
//! `advance` (0 at first) and never goes back.
//!
//! # Levels and slots
//!
//! The wheel has [`LEVELS`] (6) levels of [`SLOTS_PER_LEVEL`] (64) slots each. A deadline is
//! read as [`LEVELS`] digits of [`SLOT_BITS`] (6) bits, digit 0 lowest; a slot of level `k`
//! covers `SLOTS_PER_LEVEL^k` ticks (1 ms, 64 ms, ~4.1 s, ~4.4 min, ~4.7 h, ~12.4 days), so
//! level `k` spans `SLOTS_PER_LEVEL^(k+1)` ticks and the whole wheel spans [`WHEEL_SPAN`]
//! (`SLOTS_PER_LEVEL^LEVELS` = 2^[`WHEEL_BITS`] = 2^36 ms ≈ 795 days ≈ 2.18 years).
//!
//! An entry with `deadline > elapsed` goes to level `k = level_for(elapsed, deadline)`, the
//! highest digit in which `deadline` and `elapsed` differ, and to slot
//! `slot_for(deadline, k)`, the deadline's digit `k`. Above digit `k` both agree; in digit
//! `k` the deadline's is larger. So the slot's start (`slot_start`: `elapsed`'s digits above
//! `k`, then the slot, then zeros) lies after `elapsed` and no later than the deadline.
//! Each level keeps a `u64` occupancy bitmap (bit `s` set iff slot `s` is non-empty), so the
//! next occupied slot of a level is one `trailing_zeros`.
//!
//! # Cascading
//!
//! `advance(now)` repeatedly takes the earliest *event* (the start of the next occupied slot
//! of the lowest non-empty level, or the overflow event below); if it is `<= now`, it sets
//! `elapsed` to it and empties that slot. An entry whose deadline is `<= elapsed` expires;
//! any other now agrees with `elapsed` in digit `k` as well, so it is re-placed on a lower
//! level (cascading). A level-0 slot covers one tick, so all its entries expire. Empty slots
//! are never visited: the loop runs once per occupied slot, not once per tick, so a jump of
//! years costs the same as a jump of one tick over the same entries.
//!
//! # Side lists
//!
//! - **Overflow:** an entry whose deadline lies in a later *epoch* (a [`WHEEL_SPAN`]-aligned
//!   block of ticks) than `elapsed` does not fit the wheel (`level_for >= LEVELS`). It goes to
//!   the overflow list with a lower bound `overflow_min` on the list's deadlines. The
//!   overflow event is at `epoch_start(overflow_min)`; then the wheel is empty and the list
//!   is re-placed: what now fits goes to a level, what is due expires, the rest stays and
//!   `overflow_min` is recomputed. Nothing is dropped. The wheel's window is aligned, so an
//!   entry less than [`WHEEL_SPAN`] ahead may still overflow when it crosses an epoch
//!   boundary; that only costs a re-scan of the list once per epoch boundary passed.
//! - **Due:** an entry inserted with `deadline <= elapsed` waits here and expires at the next
//!   `advance`, whatever its `now`; `due_min` is a lower bound on its deadlines.
//! - **Never:** `deadline == NEVER` (`u64::MAX`) means "never fires on its own". Such an entry
//!   is counted by `len`, can be cancelled, and is never returned by `advance` nor reported
//!   by `next_deadline`, even once `elapsed` reaches `u64::MAX`.
//!
//! Every list is intrusive and doubly linked through the slab (`Vec<Entry<T>>`) by index,
//! so unlinking is O(1). Freed slab slots form a free list; each carries a generation,
//! bumped on free, so a stale [`Key`] (entry expired or cancelled, slot reused) matches
//! nothing.
//!
//! # Order
//!
//! The entries one `advance` call expires are sorted by `(deadline, seq)`, `seq` being a
//! per-wheel insertion counter: deadline order, ties in insertion order. Only this batch is
//! sorted. Most of it arrives sorted already: events are taken in tick order and each
//! expires only entries due at its tick, and entries with equal deadlines always share a
//! list (invariants 4 and 6), in insertion order. The due list is in insertion order, not
//! deadline order; `seq` orders its ties.
//!
//! # Invariants
//!
//! Between calls:
//!
//! 1. Every slab entry with `loc != Free` holds a value and is linked in exactly the list its
//!    `loc` names; the others hold none, are on the free list, and `len` counts the former.
//! 2. An entry is on the never list iff its deadline is [`NEVER`].
//! 3. An entry on the due list has `deadline <= elapsed`, and `due_min <= deadline`.
//! 4. An entry in slot `s` of level `k` has `deadline > elapsed`,
//!    `level_for(elapsed, deadline) == k` and `slot_for(deadline, k) == s`. Hence
//!    `elapsed < slot_start(elapsed, k, s) <= deadline`, and in level `k` no slot at or
//!    before `elapsed`'s digit `k` is occupied.
//! 5. Bit `s` of level `k`'s `occupied` is set iff slot `s` of level `k` is non-empty.
//! 6. An entry on the overflow list has a finite deadline in a later epoch than `elapsed`
//!    (`level_for(elapsed, deadline) >= LEVELS`), and `overflow_min <= deadline`.
//! 7. Events are ordered by level: the next slot of level `k` starts before the end of
//!    `elapsed`'s current level-`k+1` slot, which is no later than any slot of a higher
//!    level, and every slot starts before the next epoch, which is no later than the
//!    overflow event. So the first event found scanning up from level 0 is the earliest,
//!    and no entry expires before it (by 4 and 6).
//!
//! `advance` keeps 4 at every step: the event it takes is the earliest, so every other
//! occupied slot starts strictly after the new `elapsed`, and by 4 that keeps it on its
//! level and slot.
//!
//! # Complexity
//!
//! - `insert`: O(1) (amortised: the slab may grow).
//! - `cancel`: O(1).
//! - `next_deadline`: O(`LEVELS`).
//! - `advance`: O(`LEVELS`) per occupied slot it empties, O(1) per entry moved, O(b log b)
//!   to sort the b entries it expires. An entry moves down at most `LEVELS` times; an
//!   overflow entry is also re-scanned once per overflow event, and each overflow event
//!   either moves the earliest overflow entry into the wheel or follows its cancellation.
//!   The cost does not depend on how far `now` jumps.
//! - `len`, `is_empty`: O(1).

use std::cmp;
use std::mem;

/// Slots per level. A power of two, at most 64 so that a level's occupancy fits a `u64`.
pub(crate) const SLOTS_PER_LEVEL: usize = 64;

/// Number of levels.
pub(crate) const LEVELS: usize = 6;

/// Bits per deadline digit: `log2(SLOTS_PER_LEVEL)`.
const SLOT_BITS: u32 = SLOTS_PER_LEVEL.trailing_zeros();

/// Mask of one digit.
const SLOT_MASK: u64 = SLOTS_PER_LEVEL as u64 - 1;

/// Bits covered by the whole wheel: `SLOT_BITS * LEVELS`.
const WHEEL_BITS: u32 = SLOT_BITS * LEVELS as u32;

/// Ticks covered by the whole wheel, one epoch: `SLOTS_PER_LEVEL^LEVELS`.
pub(crate) const WHEEL_SPAN: u64 = 1 << WHEEL_BITS;

/// The deadline of an entry that never fires on its own.
pub(crate) const NEVER: u64 = u64::MAX;

/// "No entry": the null link of the intrusive lists and the free list.
const NIL: usize = usize::MAX;

const _: () = assert!(SLOTS_PER_LEVEL.is_power_of_two());
const _: () = assert!(SLOTS_PER_LEVEL <= u64::BITS as usize);
const _: () = assert!(LEVELS >= 1);
// Some epoch lies above the wheel, so `level_for` can say "overflow".
const _: () = assert!(WHEEL_BITS < u64::BITS);
// `Loc::Slot` stores the level and slot in a `u8` each.
const _: () = assert!(LEVELS <= 256 && SLOTS_PER_LEVEL <= 256);

/// The level an entry with `deadline > elapsed` belongs to: the highest digit in which the
/// two differ. A result `>= LEVELS` means the deadline is in a later epoch (overflow).
/// Meaningless when `deadline <= elapsed`.
fn level_for(elapsed: u64, deadline: u64) -> usize {
    // Setting the digit-0 bits keeps the argument of `leading_zeros` non-zero.
    let diff = (elapsed ^ deadline) | SLOT_MASK;
    let top_bit = u64::BITS - 1 - diff.leading_zeros();
    (top_bit / SLOT_BITS) as usize
}

/// Digit `level` of `deadline`: its slot on that level.
fn slot_for(deadline: u64, level: usize) -> usize {
    ((deadline >> (SLOT_BITS * level as u32)) & SLOT_MASK) as usize
}

#[cfg(all(test, not(loom)))]
/// Ticks covered by one slot of `level`: `SLOTS_PER_LEVEL^level`.
fn slot_width(level: usize) -> u64 {
    1 << (SLOT_BITS * level as u32)
}

/// The first tick of slot `slot` of `level`, in `elapsed`'s current level-`level + 1` slot.
fn slot_start(elapsed: u64, level: usize, slot: usize) -> u64 {
    let above = SLOT_BITS * (level as u32 + 1);
    let base = if above >= u64::BITS {
        0
    } else {
        (elapsed >> above) << above
    };
    base | (slot as u64) << (SLOT_BITS * level as u32)
}

/// The first tick of the epoch (`WHEEL_SPAN`-aligned block) holding `tick`.
fn epoch_start(tick: u64) -> u64 {
    tick & !(WHEEL_SPAN - 1)
}

/// Where an entry lives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Loc {
    /// Not live: on the free list.
    Free,
    /// Due list (invariant 3).
    Due,
    /// A wheel slot (invariant 4).
    Slot { level: u8, slot: u8 },
    /// Overflow list (invariant 6).
    Overflow,
    /// Never list (invariant 2).
    Never,
}

/// Where an entry with `deadline` belongs while the wheel is at `elapsed`.
fn loc_for(elapsed: u64, deadline: u64) -> Loc {
    if deadline == NEVER {
        return Loc::Never;
    }
    if deadline <= elapsed {
        return Loc::Due;
    }
    let level = level_for(elapsed, deadline);
    if level >= LEVELS {
        Loc::Overflow
    } else {
        Loc::Slot {
            level: level as u8,
            slot: slot_for(deadline, level) as u8,
        }
    }
}

/// Names a live entry, for [`Wheel::cancel`]. Stale once the entry expires or is cancelled.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Key {
    index: usize,
    generation: u64,
}

/// One slab slot.
#[derive(Debug)]
struct Entry<T> {
    /// Bumped each time the slot is freed.
    generation: u64,
    deadline: u64,
    /// Insertion order, for ties.
    seq: u64,
    prev: usize,
    /// Next in the entry's list, or in the free list when free.
    next: usize,
    loc: Loc,
    value: Option<T>,
}

/// Head and tail of one intrusive list: a wheel slot or a side list.
#[derive(Clone, Copy, Debug)]
struct Slot {
    head: usize,
    tail: usize,
}

impl Slot {
    const EMPTY: Slot = Slot {
        head: NIL,
        tail: NIL,
    };

    fn is_empty(&self) -> bool {
        self.head == NIL
    }
}

/// One level: [`SLOTS_PER_LEVEL`] slots and their occupancy bitmap (invariant 5).
#[derive(Debug)]
struct Level {
    occupied: u64,
    slots: [Slot; SLOTS_PER_LEVEL],
}

impl Level {
    const EMPTY: Level = Level {
        occupied: 0,
        slots: [Slot::EMPTY; SLOTS_PER_LEVEL],
    };
}

/// Every list of the wheel, apart from the slab they link through.
#[derive(Debug)]
struct Lists {
    levels: [Level; LEVELS],
    due: Slot,
    overflow: Slot,
    never: Slot,
}

impl Lists {
    fn get_mut(&mut self, loc: Loc) -> &mut Slot {
        match loc {
            Loc::Due => &mut self.due,
            Loc::Slot { level, slot } => &mut self.levels[level as usize].slots[slot as usize],
            Loc::Overflow => &mut self.overflow,
            Loc::Never => &mut self.never,
            Loc::Free => unreachable!("a free entry is on no list"),
        }
    }
}

/// Something `advance` must do at a tick.
#[derive(Clone, Copy, Debug)]
enum Event {
    /// Empty slot `slot` of level `level`: expire or cascade its entries.
    Slot { level: usize, slot: usize },
    /// Re-place the overflow list.
    Overflow,
}

/// A hierarchical timing wheel of entries `T`; see the module docs.
#[derive(Debug)]
pub struct Wheel<T> {
    /// The last tick `advance` moved to.
    elapsed: u64,
    /// The slab.
    entries: Vec<Entry<T>>,
    /// Head of the free list through `Entry::next`.
    free: usize,
    /// Live entries (invariant 1).
    len: usize,
    /// The next insertion's `seq`.
    next_seq: u64,
    lists: Lists,
    /// Lower bound on the due list's deadlines (invariant 3); `NEVER` when it is empty.
    due_min: u64,
    /// Lower bound on the overflow list's deadlines (invariant 6); `NEVER` when it is empty.
    overflow_min: u64,
    /// Scratch for `advance`: `(deadline, seq, value)` of the entries expiring in one call.
    batch: Vec<(u64, u64, T)>,
}

impl<T> Default for Wheel<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Wheel<T> {
    /// An empty wheel at tick 0.
    pub(crate) fn new() -> Wheel<T> {
        Wheel {
            elapsed: 0,
            entries: Vec::new(),
            free: NIL,
            len: 0,
            next_seq: 0,
            lists: Lists {
                levels: [Level::EMPTY; LEVELS],
                due: Slot::EMPTY,
                overflow: Slot::EMPTY,
                never: Slot::EMPTY,
            },
            due_min: NEVER,
            overflow_min: NEVER,
            batch: Vec::new(),
        }
    }

    /// The last tick `advance` moved to.
    pub fn elapsed(&self) -> u64 {
        self.elapsed
    }

    /// Live entries, including those with deadline [`NEVER`].
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no live entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `entry`, due at tick `deadline`. A deadline `<= elapsed` is due at the next
    /// `advance`; [`NEVER`] never fires on its own. O(1).
    pub fn insert(&mut self, deadline: u64, entry: T) -> Key {
        let seq = self.next_seq;
        self.next_seq += 1;
        let fresh = Entry {
            generation: 0,
            deadline,
            seq,
            prev: NIL,
            next: NIL,
            loc: Loc::Free,
            value: Some(entry),
        };
        let index = if self.free == NIL {
            self.entries.push(fresh);
            self.entries.len() - 1
        } else {
            let index = self.free;
            let slot = &mut self.entries[index];
            debug_assert_eq!(slot.loc, Loc::Free);
            self.free = slot.next;
            *slot = Entry {
                generation: slot.generation,
                ..fresh
            };
            index
        };
        self.len += 1;
        self.place(index);
        Key {
            index,
            generation: self.entries[index].generation,
        }
    }

    /// Removes the entry `key` names and returns it; `None` if the key is stale. O(1).
    pub fn cancel(&mut self, key: Key) -> Option<T> {
        let entry = self.entries.get(key.index)?;
        if entry.generation != key.generation || entry.loc == Loc::Free {
            return None;
        }
        self.unlink(key.index);
        Some(self.release(key.index))
    }

    /// A tick before which nothing expires and at which `advance` makes progress (expires
    /// an entry or cascades one down). It is the exact deadline for a level-0 entry and may
    /// be earlier otherwise (the start of the next occupied slot, or a lower bound of the
    /// due or overflow list), and earlier than `elapsed` when an entry was inserted already
    /// due. `None` when no entry can fire. O(`LEVELS`).
    pub fn next_deadline(&self) -> Option<u64> {
        if !self.lists.due.is_empty() {
            return Some(self.due_min);
        }
        match self.next_event()? {
            // Any tick up to the lower bound does: advancing there reaches the event.
            (_, Event::Overflow) => Some(self.overflow_min),
            (tick, Event::Slot { .. }) => Some(tick),
        }
    }

    /// Moves time to `now` (or leaves it, if `now < elapsed`) and appends every entry with
    /// deadline `<= now` to `expired`, ordered by deadline, ties in insertion order.
    pub fn advance(&mut self, now: u64, expired: &mut Vec<T>) {
        let now = cmp::max(now, self.elapsed);
        debug_assert!(self.batch.is_empty());

        let mut index = self.take_list(Loc::Due);
        while index != NIL {
            let next = self.entries[index].next;
            self.expire(index);
            index = next;
        }

        while let Some((tick, event)) = self.next_event() {
            if tick > now {
                break;
            }
            debug_assert!(
                tick > self.elapsed,
                "event {tick} at or before {}",
                self.elapsed
            );
            self.elapsed = tick;
            self.process(event);
        }
        self.elapsed = now;

        // `seq` is unique, so an unstable sort is deterministic.
        self.batch
            .sort_unstable_by_key(|&(deadline, seq, _)| (deadline, seq));
        expired.extend(self.batch.drain(..).map(|(_, _, value)| value));
    }

    /// The earliest event (invariant 7), ignoring the due list.
    fn next_event(&self) -> Option<(u64, Event)> {
        for (level, lvl) in self.lists.levels.iter().enumerate() {
            if lvl.occupied != 0 {
                debug_assert_eq!(
                    lvl.occupied & ((2 << slot_for(self.elapsed, level)) - 1),
                    0,
                    "a slot at or before elapsed is occupied (invariant 4)"
                );
                let slot = lvl.occupied.trailing_zeros() as usize;
                let tick = slot_start(self.elapsed, level, slot);
                return Some((tick, Event::Slot { level, slot }));
            }
        }
        if !self.lists.overflow.is_empty() {
            let tick = epoch_start(self.overflow_min);
            debug_assert!(tick > self.elapsed, "overflow event not in a later epoch");
            return Some((tick, Event::Overflow));
        }
        None
    }

    /// Handles `event`, which is due at `elapsed`.
    fn process(&mut self, event: Event) {
        let loc = match event {
            Event::Slot { level, slot } => Loc::Slot {
                level: level as u8,
                slot: slot as u8,
            },
            Event::Overflow => Loc::Overflow,
        };
        let mut index = self.take_list(loc);
        while index != NIL {
            let next = self.entries[index].next;
            if self.entries[index].deadline <= self.elapsed {
                self.expire(index);
            } else {
                self.place(index);
                if let (Event::Slot { level, .. }, Loc::Slot { level: to, .. }) =
                    (event, self.entries[index].loc)
                {
                    debug_assert!((to as usize) < level, "cascading must go down");
                }
            }
            index = next;
        }
    }

    /// Links the unlinked live entry `index` where its deadline belongs now.
    fn place(&mut self, index: usize) {
        let deadline = self.entries[index].deadline;
        let loc = loc_for(self.elapsed, deadline);
        match loc {
            Loc::Due => self.due_min = cmp::min(self.due_min, deadline),
            Loc::Overflow => self.overflow_min = cmp::min(self.overflow_min, deadline),
            _ => {}
        }
        let entry = &mut self.entries[index];
        entry.loc = loc;
        entry.next = NIL;
        let list = self.lists.get_mut(loc);
        entry.prev = list.tail;
        let old_tail = mem::replace(&mut list.tail, index);
        if old_tail == NIL {
            list.head = index;
        } else {
            self.entries[old_tail].next = index;
        }
        if let Loc::Slot { level, slot } = loc {
            self.lists.levels[level as usize].occupied |= 1 << slot;
        }
    }

    /// Unlinks the live entry `index` from its list.
    fn unlink(&mut self, index: usize) {
        let Entry {
            prev, next, loc, ..
        } = self.entries[index];
        let list = self.lists.get_mut(loc);
        if prev == NIL {
            list.head = next;
        } else {
            self.entries[prev].next = next;
        }
        if next == NIL {
            list.tail = prev;
        } else {
            self.entries[next].prev = prev;
        }
        if list.is_empty() {
            self.mark_empty(loc);
        }
    }

    /// Bookkeeping for a list that just became empty: its occupancy bit, or the lower
    /// bound kept for the due and overflow lists.
    fn mark_empty(&mut self, loc: Loc) {
        match loc {
            Loc::Slot { level, slot } => {
                self.lists.levels[level as usize].occupied &= !(1 << slot);
            }
            Loc::Due => self.due_min = NEVER,
            Loc::Overflow => self.overflow_min = NEVER,
            _ => {}
        }
    }

    /// Empties the list `loc` and returns its old head; the entries keep their `next` links.
    fn take_list(&mut self, loc: Loc) -> usize {
        let head = mem::replace(self.lists.get_mut(loc), Slot::EMPTY).head;
        self.mark_empty(loc);
        head
    }

    /// Moves the unlinked live entry `index` into the batch and frees its slot.
    fn expire(&mut self, index: usize) {
        let (deadline, seq) = (self.entries[index].deadline, self.entries[index].seq);
        let value = self.release(index);
        self.batch.push((deadline, seq, value));
    }

    /// Frees the unlinked live entry `index` and returns its value.
    fn release(&mut self, index: usize) -> T {
        let entry = &mut self.entries[index];
        let value = entry.value.take().expect("a live entry holds a value");
        entry.generation = entry.generation.wrapping_add(1);
        entry.loc = Loc::Free;
        entry.prev = NIL;
        entry.next = self.free;
        self.free = index;
        self.len -= 1;
        value
    }

    /// Checks invariants 1 to 6 by walking every list. O(entries).
    #[cfg(all(test, not(loom)))]
    fn check_invariants(&self) {
        let mut seen = vec![false; self.entries.len()];
        let mut live = 0;
        let mut walk = |list: &Slot, loc: Loc| {
            let mut prev = NIL;
            let mut index = list.head;
            while index != NIL {
                let entry = &self.entries[index];
                assert!(!seen[index], "entry {index} linked twice");
                seen[index] = true;
                live += 1;
                assert_eq!(entry.loc, loc);
                assert_eq!(entry.prev, prev);
                assert!(entry.value.is_some());
                prev = index;
                index = entry.next;
            }
            assert_eq!(list.tail, prev);
        };
        walk(&self.lists.due, Loc::Due);
        walk(&self.lists.overflow, Loc::Overflow);
        walk(&self.lists.never, Loc::Never);
        for (level, lvl) in self.lists.levels.iter().enumerate() {
            for (slot, list) in lvl.slots.iter().enumerate() {
                assert_eq!(lvl.occupied >> slot & 1 == 1, !list.is_empty());
                walk(
                    list,
                    Loc::Slot {
                        level: level as u8,
                        slot: slot as u8,
                    },
                );
            }
        }
        assert_eq!(live, self.len);

        let mut free = 0;
        let mut index = self.free;
        while index != NIL {
            assert!(!seen[index], "entry {index} both live and free");
            seen[index] = true;
            assert_eq!(self.entries[index].loc, Loc::Free);
            assert!(self.entries[index].value.is_none());
            free += 1;
            index = self.entries[index].next;
        }
        assert_eq!(live + free, self.entries.len());

        for entry in &self.entries {
            let d = entry.deadline;
            match entry.loc {
                Loc::Free => {}
                Loc::Never => assert_eq!(d, NEVER),
                Loc::Due => {
                    assert!(d != NEVER && d <= self.elapsed);
                    assert!(self.due_min <= d);
                }
                Loc::Slot { level, slot } => {
                    assert!(d != NEVER && d > self.elapsed);
                    assert_eq!(level_for(self.elapsed, d), level as usize);
                    assert_eq!(slot_for(d, level as usize), slot as usize);
                }
                Loc::Overflow => {
                    assert!(d != NEVER && d > self.elapsed);
                    assert!(level_for(self.elapsed, d) >= LEVELS);
                    assert!(self.overflow_min <= d);
                }
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
