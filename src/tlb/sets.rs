//! Which set of a set-associative structure a key falls in: the key modulo the number of
//! sets, by a mask when that number is a power of two (the usual case), since a division on
//! every lookup is measurable.

/// The sets of a set-associative structure of `ways` slots per set, laid out one set after
/// another.
#[derive(Clone, Copy, Debug)]
pub struct SetLayout {
    count: usize,
    ways: usize,
    /// `count - 1` when `count` is a power of two.
    mask: Option<u64>,
}

impl SetLayout {
    /// `count` sets of `ways` slots (at least one of each).
    pub fn new(count: usize, ways: usize) -> Self {
        let (count, ways) = (count.max(1), ways.max(1));
        Self { count, ways, mask: count.is_power_of_two().then(|| count as u64 - 1) }
    }

    /// Slots in all.
    pub fn slots(self) -> usize {
        self.count * self.ways
    }

    /// Slots per set.
    #[inline]
    pub fn ways(self) -> usize {
        self.ways
    }

    /// The first slot of the set `key` falls in (set = key mod sets).
    #[inline]
    pub fn first_slot(self, key: u64) -> usize {
        let set = match self.mask {
            Some(mask) => key & mask,
            None => key % self.count as u64,
        };
        usize::try_from(set).unwrap_or(0) * self.ways
    }
}

/// Puts `value` first in `set`, moving the slots before `way` one place down over slot `way`
/// (the entry being replaced or promoted): the LRU order of a set kept most recent first. One
/// block move; the slice's general rotation costs several times as much.
#[inline]
pub fn make_most_recent<T: Copy>(set: &mut [T], way: usize, value: T) {
    set.copy_within(..way, 1);
    set[0] = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_recent_first_shifts_only_the_slots_before_the_way() {
        let mut set = [1, 2, 3, 4, 5];
        make_most_recent(&mut set, 3, 9);
        assert_eq!(set, [9, 1, 2, 3, 5]);
        make_most_recent(&mut set, 0, 7);
        assert_eq!(set, [7, 1, 2, 3, 5]);
        make_most_recent(&mut set, 4, 3);
        assert_eq!(set, [3, 7, 1, 2, 3]);
    }

    #[test]
    fn sets_are_chosen_modulo_their_number() {
        let pow2 = SetLayout::new(16, 4);
        assert_eq!((pow2.first_slot(17), pow2.slots()), (4, 64));
        let other = SetLayout::new(15, 4);
        assert_eq!((other.first_slot(17), other.first_slot(14)), (8, 56));
    }
}
