//! A sparse array of 64-bit words indexed by a 64-bit number, stored in blocks of 512 words
//! (4 KiB) that exist only once something has been written into them: memory grows
//! with the blocks written, not with the range of indexes. Host physical memory keeps its
//! frames here (a block is a frame), and the shadow VMM its reverse map (a word per guest
//! frame).

use rustc_hash::FxHashMap;

/// The words of one block.
pub type Block = Box<[u64; WORDS_PER_BLOCK]>;

/// Words in a block.
pub const WORDS_PER_BLOCK: usize = 512;

/// Blocks below this number are found by index, the rest through a hash map. The low blocks
/// are the busy ones (page-table frames come from the low end of every frame pool; guest frame
/// numbers start at 0), and the limit keeps the index (8 bytes per block number up to the
/// highest one used) small.
const DENSE_BLOCKS: u64 = 1 << 24;

/// Words by index; every word never written reads as zero.
#[derive(Default)]
pub struct SparseWords {
    /// Blocks below [`DENSE_BLOCKS`], by number; grown as higher ones are written.
    dense: Vec<Option<Block>>,
    /// Blocks from [`DENSE_BLOCKS`] up.
    sparse: FxHashMap<u64, Block>,
    /// Blocks with storage.
    count: usize,
}

impl SparseWords {
    /// Block `number`, if it has storage.
    #[inline(always)]
    pub fn block(&self, number: u64) -> Option<&Block> {
        if number < DENSE_BLOCKS {
            usize::try_from(number).ok().and_then(|i| self.dense.get(i)).and_then(Option::as_ref)
        } else {
            self.sparse.get(&number)
        }
    }

    /// Block `number`, given zeroed storage if it had none.
    pub fn block_mut(&mut self, number: u64) -> &mut Block {
        let index = usize::try_from(number).ok().filter(|_| number < DENSE_BLOCKS);
        match index {
            Some(i) => {
                if i >= self.dense.len() {
                    self.dense.resize_with(i + 1, || None);
                }
                let slot = &mut self.dense[i];
                if slot.is_none() {
                    self.count += 1;
                }
                slot.get_or_insert_with(|| Box::new([0; WORDS_PER_BLOCK]))
            }
            None => {
                let count = &mut self.count;
                self.sparse.entry(number).or_insert_with(|| {
                    *count += 1;
                    Box::new([0; WORDS_PER_BLOCK])
                })
            }
        }
    }

    /// Drops block `number`'s storage: its words read as zero again.
    pub fn remove_block(&mut self, number: u64) {
        let removed = if number < DENSE_BLOCKS {
            usize::try_from(number).ok().and_then(|i| self.dense.get_mut(i)).and_then(Option::take).is_some()
        } else {
            self.sparse.remove(&number).is_some()
        };
        if removed {
            self.count -= 1;
        }
    }

    /// How many blocks have storage.
    pub fn blocks(&self) -> usize {
        self.count
    }

    /// Word `index`.
    #[inline(always)]
    pub fn read(&self, index: u64) -> u64 {
        self.block(index / WORDS_PER_BLOCK as u64).map_or(0, |block| block[word_in_block(index)])
    }

    /// Stores word `index`.
    #[inline]
    pub fn write(&mut self, index: u64, value: u64) {
        self.block_mut(index / WORDS_PER_BLOCK as u64)[word_in_block(index)] = value;
    }
}

/// Where word `index` lies in its block.
#[inline]
fn word_in_block(index: u64) -> usize {
    // 511 = WORDS_PER_BLOCK - 1, written out so the cast is seen not to truncate.
    (index & 511) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_in_dense_and_sparse_blocks() {
        let mut words = SparseWords::default();
        let high = DENSE_BLOCKS * WORDS_PER_BLOCK as u64 + 3;
        assert_eq!((words.read(5), words.read(high)), (0, 0));
        words.write(5, 7);
        words.write(high, 9);
        words.write(6, 8);
        assert_eq!((words.read(5), words.read(6), words.read(high), words.read(4)), (7, 8, 9, 0));
        assert_eq!(words.blocks(), 2);
        words.remove_block(0);
        words.remove_block(0);
        assert_eq!((words.read(5), words.blocks()), (0, 1));
        words.remove_block(DENSE_BLOCKS);
        assert_eq!((words.read(high), words.blocks()), (0, 0));
    }
}
