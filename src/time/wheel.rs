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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const MS_PER_DAY: u64 = 24 * 60 * 60 * 1000;

    /// Advances `wheel` to `now` and returns what expired.
    fn advance(wheel: &mut Wheel<u32>, now: u64) -> Vec<u32> {
        let mut out = Vec::new();
        wheel.advance(now, &mut out);
        wheel.check_invariants();
        out
    }

    #[test]
    fn consts_match_the_docs() {
        assert_eq!(SLOTS_PER_LEVEL, 64);
        assert_eq!(LEVELS, 6);
        assert_eq!(SLOT_BITS, 6);
        assert_eq!(1 << SLOT_BITS, SLOTS_PER_LEVEL);
        assert_eq!(WHEEL_BITS, 36);
        assert_eq!(WHEEL_SPAN, (SLOTS_PER_LEVEL as u64).pow(LEVELS as u32));
        // "≈ 795 days ≈ 2.18 years"
        assert_eq!(WHEEL_SPAN / MS_PER_DAY, 795);
        let years = WHEEL_SPAN as f64 / (365.25 * MS_PER_DAY as f64);
        assert!((2.17..2.19).contains(&years), "{years}");
        // Slot widths: 1 ms, 64 ms, ~4.1 s, ~4.4 min, ~4.7 h, ~12.4 days.
        let widths: Vec<u64> = (0..LEVELS).map(slot_width).collect();
        assert_eq!(widths[0], 1);
        assert_eq!(widths[1], 64);
        let tenths = |w: u64, unit: u64| (w as f64 / unit as f64 * 10.0).round() as u64;
        assert_eq!(tenths(widths[2], 1000), 41);
        assert_eq!(tenths(widths[3], 60_000), 44);
        assert_eq!(tenths(widths[4], 3_600_000), 47);
        assert_eq!(tenths(widths[5], MS_PER_DAY), 124);
        assert_eq!(NEVER, u64::MAX);
    }

    #[test]
    fn level_for_at_boundaries() {
        let cases = [
            (0, 1, 0),
            (0, 63, 0),
            (0, 64, 1),
            (0, 4095, 1),
            (0, 4096, 2),
            (0, 262_143, 2),
            (0, 262_144, 3),
            (0, WHEEL_SPAN - 1, LEVELS - 1),
            (0, WHEEL_SPAN, LEVELS),
            (0, WHEEL_SPAN + 5, LEVELS),
            (0, 10 * WHEEL_SPAN, LEVELS),
            (0, u64::MAX - 1, 10),
            // One tick ahead across a slot boundary is on the level of that boundary.
            (63, 64, 1),
            (4095, 4096, 2),
            (WHEEL_SPAN - 1, WHEEL_SPAN, LEVELS),
            (64, 127, 0),
            (64, 128, 1),
            (WHEEL_SPAN, WHEEL_SPAN + 63, 0),
        ];
        for (elapsed, deadline, level) in cases {
            assert_eq!(
                level_for(elapsed, deadline),
                level,
                "{elapsed} -> {deadline}"
            );
        }
        for level in 0..LEVELS {
            let w = slot_width(level);
            assert_eq!(level_for(0, w * 63), level);
            assert_eq!(level_for(0, w * 64), level + 1);
            if level > 0 {
                assert_eq!(level_for(0, w), level);
                assert_eq!(level_for(0, w - 1), level - 1);
            }
        }
    }

    #[test]
    fn slot_arithmetic() {
        for s in 0..64u64 {
            assert_eq!(slot_for(s, 0), s as usize);
            for level in 1..LEVELS {
                let tick = s * slot_width(level) + 1;
                assert_eq!(slot_for(tick, level), s as usize);
                assert_eq!(slot_for(tick, 0), 1);
            }
        }
        assert_eq!(slot_for(WHEEL_SPAN + 5, 0), 5);
        assert_eq!(slot_for(WHEEL_SPAN, LEVELS - 1), 0);
        assert_eq!(slot_start(0, 0, 5), 5);
        assert_eq!(slot_start(70, 0, 9), 73);
        assert_eq!(slot_start(70, 1, 3), 192);
        assert_eq!(slot_start(5000, 1, 63), 4096 + 63 * 64);
        assert_eq!(
            slot_start(WHEEL_SPAN + 7, LEVELS - 1, 2),
            WHEEL_SPAN + 2 * slot_width(5)
        );
        assert_eq!(slot_start(u64::MAX, 0, 63), u64::MAX);
        assert_eq!(epoch_start(WHEEL_SPAN - 1), 0);
        assert_eq!(epoch_start(WHEEL_SPAN), WHEEL_SPAN);
        assert_eq!(epoch_start(10 * WHEEL_SPAN + 3), 10 * WHEEL_SPAN);
    }

    #[test]
    fn loc_for_edges() {
        assert_eq!(loc_for(0, 0), Loc::Due);
        assert_eq!(loc_for(100, 50), Loc::Due);
        assert_eq!(loc_for(100, 100), Loc::Due);
        assert_eq!(loc_for(0, NEVER), Loc::Never);
        assert_eq!(loc_for(NEVER, NEVER), Loc::Never);
        assert_eq!(loc_for(0, 1), Loc::Slot { level: 0, slot: 1 });
        assert_eq!(loc_for(0, 64), Loc::Slot { level: 1, slot: 1 });
        assert_eq!(loc_for(0, WHEEL_SPAN), Loc::Overflow);
        assert_eq!(loc_for(WHEEL_SPAN - 1, WHEEL_SPAN), Loc::Overflow);
        assert_eq!(loc_for(NEVER - 1, NEVER - 1), Loc::Due);
    }

    /// Each deadline expires exactly at its tick, found by following `next_deadline`.
    fn expires_exactly_at(deadlines: &[u64]) {
        let mut wheel = Wheel::new();
        for (i, &d) in deadlines.iter().enumerate() {
            wheel.insert(d, i as u32);
        }
        wheel.check_invariants();
        let mut order: Vec<usize> = (0..deadlines.len()).collect();
        order.sort_by_key(|&i| (deadlines[i], i));
        let mut fired = Vec::new();
        let mut steps = 0;
        while let Some(t) = wheel.next_deadline() {
            steps += 1;
            assert!(steps < 100 * (deadlines.len() + 1), "stalled");
            let earliest = order[fired.len()];
            assert!(
                t <= deadlines[earliest],
                "next_deadline {t} after a deadline"
            );
            // Nothing fires one tick early.
            if t > 0 && t > wheel.elapsed() {
                assert!(advance(&mut wheel, t - 1).is_empty());
            }
            for v in advance(&mut wheel, t) {
                assert_eq!(deadlines[v as usize], t, "entry {v} fired at {t}");
                fired.push(v as usize);
            }
        }
        assert_eq!(fired, order);
        assert!(wheel.is_empty());
    }

    #[test]
    fn level_boundaries_fire_on_time() {
        let mut deadlines = vec![1, 63, 64, 65, 4095, 4096, 4097];
        for level in 1..=LEVELS {
            let w = slot_width(level);
            deadlines.extend([w - 1, w, w + 1, 63 * w, 63 * w + 7]);
        }
        deadlines.extend([WHEEL_SPAN + 5, 10 * WHEEL_SPAN, 10 * WHEEL_SPAN + 4097]);
        expires_exactly_at(&deadlines);
    }

    #[test]
    fn beyond_the_top_level() {
        expires_exactly_at(&[WHEEL_SPAN + 5]);
        expires_exactly_at(&[10 * WHEEL_SPAN]);
        expires_exactly_at(&[u64::MAX - 1, 3]);

        // One jump of years returns both, in order, and never the NEVER entry.
        let mut wheel = Wheel::new();
        wheel.insert(10 * WHEEL_SPAN, 1);
        wheel.insert(NEVER, 2);
        wheel.insert(WHEEL_SPAN + 5, 0);
        assert_eq!(wheel.next_deadline(), Some(WHEEL_SPAN + 5));
        assert!(advance(&mut wheel, WHEEL_SPAN + 4).is_empty());
        assert_eq!(advance(&mut wheel, 20 * WHEEL_SPAN), vec![0, 1]);
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn deadline_zero_and_past_deadlines_are_never_lost() {
        let mut wheel = Wheel::new();
        wheel.insert(0, 0);
        assert_eq!(wheel.next_deadline(), Some(0));
        assert_eq!(advance(&mut wheel, 0), vec![0]);

        assert!(advance(&mut wheel, 1000).is_empty());
        wheel.insert(500, 1);
        wheel.insert(1000, 2);
        wheel.insert(20, 3);
        wheel.insert(1001, 4);
        assert_eq!(wheel.next_deadline(), Some(20));
        // Time never goes back: 10 is read as 1000, and the due entries fire in order.
        assert_eq!(advance(&mut wheel, 10), vec![3, 1, 2]);
        assert_eq!(wheel.elapsed(), 1000);
        assert_eq!(advance(&mut wheel, 1001), vec![4]);
    }

    #[test]
    fn never_entries_stay_until_cancelled() {
        let mut wheel = Wheel::new();
        let key = wheel.insert(NEVER, 7);
        assert_eq!((wheel.len(), wheel.is_empty()), (1, false));
        assert_eq!(wheel.next_deadline(), None);
        assert!(advance(&mut wheel, NEVER - 1).is_empty());
        assert!(advance(&mut wheel, NEVER).is_empty());
        // At the end of time, finite deadlines are due and NEVER still is not.
        wheel.insert(NEVER - 1, 8);
        wheel.insert(NEVER, 9);
        assert_eq!(wheel.next_deadline(), Some(NEVER - 1));
        assert_eq!(advance(&mut wheel, NEVER), vec![8]);
        assert_eq!(wheel.len(), 2);
        assert_eq!(wheel.cancel(key), Some(7));
        assert_eq!(wheel.cancel(key), None);
        assert_eq!(wheel.len(), 1);
    }

    #[test]
    fn stale_keys_cancel_nothing() {
        let mut wheel = Wheel::new();
        let expired = wheel.insert(5, 0);
        assert_eq!(advance(&mut wheel, 5), vec![0]);
        assert_eq!(wheel.cancel(expired), None);

        // The slot is reused: the old key must not reach the new entry.
        let reused = wheel.insert(10, 1);
        assert_eq!(reused.index, expired.index);
        assert_eq!(wheel.cancel(expired), None);
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.cancel(reused), Some(1));
        assert_eq!(wheel.cancel(reused), None);

        let again = wheel.insert(10, 2);
        assert_eq!(wheel.cancel(reused), None);
        assert_eq!(wheel.cancel(expired), None);
        assert_eq!(advance(&mut wheel, 10), vec![2]);
        assert_eq!(wheel.cancel(again), None);
        assert!(wheel.is_empty());
        wheel.check_invariants();
    }

    #[test]
    fn cancel_from_every_list() {
        let mut wheel = Wheel::new();
        advance(&mut wheel, 100);
        let keys = [
            wheel.insert(50, 0),                   // due
            wheel.insert(101, 1),                  // level 0
            wheel.insert(100 + 4096, 2),           // level 2
            wheel.insert(5 * WHEEL_SPAN, 3),       // overflow
            wheel.insert(NEVER, 4),                // never
            wheel.insert(100 + WHEEL_SPAN / 2, 5), // level 5
        ];
        wheel.check_invariants();
        for (i, key) in keys.into_iter().enumerate().rev() {
            assert_eq!(wheel.cancel(key), Some(i as u32));
            wheel.check_invariants();
        }
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
        assert!(advance(&mut wheel, u64::MAX).is_empty());
    }

    #[test]
    fn ties_fire_in_insertion_order_across_levels() {
        let mut wheel = Wheel::new();
        wheel.insert(5000, 0); // level 2
        wheel.insert(WHEEL_SPAN + 5000, 10); // overflow
        advance(&mut wheel, 4990);
        wheel.insert(5000, 1); // level 0
        wheel.insert(4000, 2); // due
        assert_eq!(advance(&mut wheel, WHEEL_SPAN), vec![2, 0, 1]);
        wheel.insert(WHEEL_SPAN + 5000, 11); // level 2 again
        assert_eq!(advance(&mut wheel, WHEEL_SPAN + 4999), Vec::<u32>::new());
        let mut out = vec![99];
        wheel.advance(5000 + WHEEL_SPAN, &mut out);
        assert_eq!(out, vec![99, 10, 11], "appends, in insertion order");
    }

    #[test]
    fn large_batches_of_ties_keep_insertion_order() {
        // Due entries sit in one list in insertion order, not deadline order; a batch this
        // large is sorted by an algorithm that would scramble ties without `seq`.
        let mut wheel = Wheel::new();
        advance(&mut wheel, 1000);
        let mut want = Vec::new();
        for i in 0..200u32 {
            let d = [900, 100, 500, 100, 900][i as usize % 5];
            wheel.insert(d, i);
            want.push((d, i));
        }
        for i in 200..260u32 {
            wheel.insert(1003, i);
            want.push((1003, i));
        }
        want.sort();
        let want: Vec<u32> = want.into_iter().map(|(_, i)| i).collect();
        assert_eq!(advance(&mut wheel, 2000), want);
    }

    #[test]
    fn many_entries_far_jump() {
        let mut wheel = Wheel::new();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut want = Vec::new();
        for i in 0..5000u32 {
            x = crate::util::xorshift64(x);
            let d = x % (30 * WHEEL_SPAN);
            wheel.insert(d, i);
            want.push((d, i));
        }
        want.sort();
        let got = advance(&mut wheel, u64::MAX - 1);
        assert_eq!(got, want.iter().map(|&(_, i)| i).collect::<Vec<_>>());
        assert!(wheel.is_empty());
    }

    // ---- proptest against a BTreeMap model ----

    #[derive(Clone, Debug)]
    enum When {
        /// `now + 0..200`.
        Small(u64),
        /// `now + ..=10^7`.
        Medium(u64),
        /// `now + ..=10^11`.
        Huge(u64),
        /// `now - ..1000`, saturating.
        Past(u64),
        Never,
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(When),
        Cancel(prop::sample::Index),
        /// `now + step`.
        Step(u64),
        /// `now + jump`.
        Jump(u64),
        /// To an absolute tick, possibly in the past.
        To(u64),
        ToEndOfTime,
        /// Follow `next_deadline` until the earliest entry fires.
        Drain,
    }

    fn when() -> impl Strategy<Value = When> {
        prop_oneof![
            6 => (0u64..200).prop_map(When::Small),
            3 => (0u64..=10_000_000).prop_map(When::Medium),
            3 => (0u64..=100_000_000_000).prop_map(When::Huge),
            1 => (0u64..1000).prop_map(When::Past),
            1 => Just(When::Never),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            12 => when().prop_map(Op::Insert),
            4 => any::<prop::sample::Index>().prop_map(Op::Cancel),
            5 => (0u64..300).prop_map(Op::Step),
            2 => (0u64..=100_000_000_000).prop_map(Op::Jump),
            1 => (0u64..=100_000_000_000).prop_map(Op::To),
            2 => Just(Op::Drain),
            1 => Just(Op::ToEndOfTime),
        ]
    }

    /// Live entries by `(deadline, seq)`, value = seq.
    struct Model {
        now: u64,
        live: BTreeMap<(u64, u64), u32>,
    }

    impl Model {
        fn advance(&mut self, now: u64) -> Vec<u32> {
            self.now = self.now.max(now);
            // NEVER entries never expire, even at `now == u64::MAX`.
            let cut = self.now.min(NEVER - 1) + 1;
            let rest = self.live.split_off(&(cut, 0));
            mem::replace(&mut self.live, rest).into_values().collect()
        }

        fn min_finite(&self) -> Option<(u64, u64)> {
            self.live
                .keys()
                .next()
                .copied()
                .filter(|&(d, _)| d != NEVER)
        }
    }

    fn check(wheel: &Wheel<u32>, model: &Model) -> Result<(), TestCaseError> {
        wheel.check_invariants();
        prop_assert_eq!(wheel.len(), model.live.len());
        prop_assert_eq!(wheel.is_empty(), model.live.is_empty());
        prop_assert_eq!(wheel.elapsed(), model.now);
        match (wheel.next_deadline(), model.min_finite()) {
            (None, None) => {}
            (Some(t), Some((d, _))) => prop_assert!(t <= d, "next_deadline {} > {}", t, d),
            (got, want) => prop_assert!(false, "next_deadline {:?}, min {:?}", got, want),
        }
        Ok(())
    }

    fn advance_both(
        wheel: &mut Wheel<u32>,
        model: &mut Model,
        now: u64,
    ) -> Result<(), TestCaseError> {
        let mut got = Vec::new();
        wheel.advance(now, &mut got);
        prop_assert_eq!(got, model.advance(now), "advance to {}", now);
        Ok(())
    }

    fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut wheel = Wheel::new();
        let mut model = Model {
            now: 0,
            live: BTreeMap::new(),
        };
        let mut keys: Vec<(Key, u64, u64)> = Vec::new();
        let mut seq = 0u64;
        for op in ops {
            let now = model.now;
            match op {
                Op::Insert(when) => {
                    let deadline = match when {
                        When::Small(d) | When::Medium(d) | When::Huge(d) => {
                            now.saturating_add(d).min(NEVER - 1)
                        }
                        When::Past(d) => now.saturating_sub(d),
                        When::Never => NEVER,
                    };
                    let key = wheel.insert(deadline, seq as u32);
                    model.live.insert((deadline, seq), seq as u32);
                    keys.push((key, deadline, seq));
                    seq += 1;
                }
                Op::Cancel(index) => {
                    if !keys.is_empty() {
                        let (key, deadline, s) = keys[index.index(keys.len())];
                        prop_assert_eq!(wheel.cancel(key), model.live.remove(&(deadline, s)));
                    }
                }
                Op::Step(d) | Op::Jump(d) => {
                    advance_both(&mut wheel, &mut model, now.saturating_add(d))?
                }
                Op::To(t) => advance_both(&mut wheel, &mut model, t)?,
                Op::ToEndOfTime => advance_both(&mut wheel, &mut model, u64::MAX)?,
                Op::Drain => {
                    if let Some(min) = model.min_finite() {
                        // Due, overflow, one cascade per level, a stale overflow bound.
                        let mut steps = 0;
                        while model.live.contains_key(&min) {
                            prop_assert!(steps < LEVELS + 3, "stalled before {:?}", min);
                            steps += 1;
                            let t = wheel.next_deadline().expect("an entry can fire");
                            prop_assert!(t <= min.0);
                            advance_both(&mut wheel, &mut model, t)?;
                            check(&wheel, &model)?;
                        }
                    }
                }
            }
            check(&wheel, &model)?;
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn matches_btreemap_model(ops in prop::collection::vec(op(), 1..200)) {
            run(ops)?;
        }
    }
}
