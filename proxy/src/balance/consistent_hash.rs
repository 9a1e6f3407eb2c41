//! `consistent_hash`: Maglev hashing (Eisenbud et al., NSDI 2016). Every endpoint fills a
//! prime-sized lookup table following its own permutation; a request's key indexes the
//! table. Removing one of N endpoints moves about 1/N of the keys (those it owned, plus a
//! few percent of churn), and lookup is one array read. The table is built when the
//! endpoint set changes, never on the request path.

/// Table size: a prime far above any endpoint count we expect (Maglev wants M ≫ N for even
/// shares); 65537 entries of u32 is 256 KiB per hashing service.
const TABLE_SIZE: u64 = 65_537;

/// FNV-1a followed by a SplitMix64 finalizer: stable across runs and builds (unlike std's
/// `DefaultHasher`, which promises neither), and well mixed in every bit.
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(hash)
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The Maglev lookup table: entry → index into the endpoint set.
pub(crate) struct Table {
    entries: Box<[u32]>,
}

impl Table {
    /// Builds the table for endpoints named by `ids` (stable names, so a key keeps its
    /// endpoint when others come and go). Empty for no endpoints.
    pub(crate) fn build<'a>(ids: impl ExactSizeIterator<Item = &'a str>) -> Table {
        let m = TABLE_SIZE;
        let permutations: Vec<(u64, u64)> = ids
            .map(|id| {
                let h = hash_bytes(id.as_bytes());
                let offset = h % m;
                let skip = mix(h ^ 0x5bd1_e995) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        if permutations.is_empty() {
            return Table {
                entries: Box::new([]),
            };
        }
        let mut entries = vec![u32::MAX; m as usize];
        let mut next = vec![0u64; permutations.len()];
        let mut filled = 0u64;
        'fill: loop {
            for (index, (offset, skip)) in permutations.iter().enumerate() {
                let mut slot = (offset + next[index] * skip) % m;
                while entries[slot as usize] != u32::MAX {
                    next[index] += 1;
                    slot = (offset + next[index] * skip) % m;
                }
                entries[slot as usize] = index as u32;
                next[index] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Table {
            entries: entries.into_boxed_slice(),
        }
    }

    /// The endpoint owning `key`; if `ok` refuses it (tried already, ejected, unhealthy),
    /// the next owner along a fixed probe sequence, so a retry of the same key, or every
    /// key of an ejected endpoint, also lands consistently.
    pub(crate) fn pick(&self, key: u64, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        let m = self.entries.len() as u64;
        if m == 0 {
            return None;
        }
        let mut probe = key;
        for _ in 0..m {
            let index = self.entries[(probe % m) as usize] as usize;
            if ok(index) {
                return Some(index);
            }
            probe = mix(probe);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{testing::untried, Tried};

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn owner(table: &Table, ids: &[String], key: u64) -> String {
        ids[table.pick(key, &untried(&Tried::default())).unwrap()].clone()
    }

    #[test]
    fn same_key_same_endpoint() {
        let names = ids(5);
        let a = Table::build(names.iter().map(String::as_str));
        let b = Table::build(names.iter().map(String::as_str));
        for key in 0..1000u64 {
            let key = hash_bytes(&key.to_le_bytes());
            assert_eq!(owner(&a, &names, key), owner(&b, &names, key));
        }
    }

    #[test]
    fn shares_are_even() {
        let names = ids(10);
        let table = Table::build(names.iter().map(String::as_str));
        let mut counts = [0usize; 10];
        for key in 0..100_000u64 {
            counts[table
                .pick(hash_bytes(&key.to_le_bytes()), &untried(&Tried::default()))
                .unwrap()] += 1;
        }
        for count in counts {
            assert!((8_500..11_500).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        let names = ids(10);
        let before = Table::build(names.iter().map(String::as_str));
        let fewer: Vec<String> = names.iter().filter(|n| *n != &names[3]).cloned().collect();
        let after = Table::build(fewer.iter().map(String::as_str));
        let keys = 100_000u64;
        let mut moved = 0;
        for key in 0..keys {
            let key = hash_bytes(&key.to_le_bytes());
            let was = owner(&before, &names, key);
            let now = owner(&after, &fewer, key);
            if was != now {
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        // 1/N = 10% must move (the removed endpoint's keys); Maglev adds a little churn.
        assert!((0.09..0.13).contains(&share), "moved {share}");
    }

    #[test]
    fn tried_owner_is_skipped() {
        let names = ids(3);
        let table = Table::build(names.iter().map(String::as_str));
        let key = hash_bytes(b"user-42");
        let first = table.pick(key, &untried(&Tried::default())).unwrap();
        let mut tried = Tried::default();
        tried.insert(first);
        let second = table.pick(key, &untried(&tried)).unwrap();
        assert_ne!(first, second);
        assert_eq!(table.pick(key, &untried(&tried)), Some(second));
        tried.insert(second);
        tried.insert(3 - first - second);
        assert_eq!(table.pick(key, &untried(&tried)), None);
    }

    #[test]
    fn empty_table_picks_nothing() {
        let table = Table::build(std::iter::empty());
        assert_eq!(table.pick(1, &untried(&Tried::default())), None);
    }
}
