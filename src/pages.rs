//! [`Pages`]: a slab (values under stable `usize` keys, vacated keys reused) whose storage
//! grows page by page and is never reallocated.
//!
//! A nursery keeps one slot per live child. In a `Vec`-backed slab, growing to N slots
//! requests about 2N slots over its doublings and copies each one about once; here growing
//! requests N slots (rounded up to a page) and copies none. Pages double from 4 slots up to
//! 1024, then stay at 1024, so a nursery with a few children holds a few slots.

/// Slots in the first page.
const FIRST: usize = 4;
/// Pages after this many double no more.
const DOUBLINGS: u32 = 8;
/// Slots in each page after the doubling ones.
const LAST: usize = FIRST << DOUBLINGS;
/// Keys held by the doubling pages together.
const DOUBLED: usize = FIRST * ((1 << (DOUBLINGS + 1)) - 1);

enum Entry<T> {
    Occupied(T),
    /// A vacant slot, and the next vacant key (`usize::MAX`: none).
    Vacant(usize),
}

/// A slab in pages (see the module docs).
pub(crate) struct Pages<T> {
    pages: Vec<Box<[Entry<T>]>>,
    /// The first vacant key of the free list (`usize::MAX`: none).
    free: usize,
    /// Keys ever handed out: the next new key.
    used: usize,
    len: usize,
}

impl<T> Pages<T> {
    pub(crate) const fn new() -> Self {
        Pages {
            pages: Vec::new(),
            free: usize::MAX,
            used: 0,
            len: 0,
        }
    }

    /// The page and index of `key`.
    #[inline]
    fn locate(key: usize) -> (usize, usize) {
        if key < DOUBLED {
            // Page p starts at FIRST * (2^p - 1).
            let page = (key / FIRST + 1).ilog2() as usize;
            (page, key - FIRST * ((1 << page) - 1))
        } else {
            let rest = key - DOUBLED;
            (DOUBLINGS as usize + 1 + rest / LAST, rest % LAST)
        }
    }

    fn page_len(page: usize) -> usize {
        if page <= DOUBLINGS as usize {
            FIRST << page
        } else {
            LAST
        }
    }

    fn entry_mut(&mut self, key: usize) -> Option<&mut Entry<T>> {
        let (page, index) = Self::locate(key);
        self.pages.get_mut(page).map(|page| &mut page[index])
    }

    /// The key the next [`insert`](Self::insert) will use.
    pub(crate) fn next_key(&self) -> usize {
        if self.free != usize::MAX {
            self.free
        } else {
            self.used
        }
    }

    /// Stores `value`; returns its key.
    pub(crate) fn insert(&mut self, value: T) -> usize {
        let key = self.next_key();
        let (page, index) = Self::locate(key);
        if page == self.pages.len() {
            let len = Self::page_len(page);
            self.pages
                .push((0..len).map(|_| Entry::Vacant(usize::MAX)).collect());
        }
        let entry = &mut self.pages[page][index];
        if key == self.used {
            self.used += 1;
        } else {
            let Entry::Vacant(next) = *entry else {
                unreachable!("the free list holds vacant slots")
            };
            self.free = next;
        }
        *entry = Entry::Occupied(value);
        self.len += 1;
        key
    }

    /// Takes the value under `key`, if any.
    pub(crate) fn try_remove(&mut self, key: usize) -> Option<T> {
        let free = self.free;
        let entry = self.entry_mut(key)?;
        if let Entry::Vacant(_) = entry {
            return None;
        }
        let Entry::Occupied(value) = std::mem::replace(entry, Entry::Vacant(free)) else {
            unreachable!("checked above")
        };
        self.free = key;
        self.len -= 1;
        Some(value)
    }

    /// The value under `key`, if any.
    #[inline]
    pub(crate) fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        match self.entry_mut(key)? {
            Entry::Occupied(value) => Some(value),
            Entry::Vacant(_) => None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes every value out, in key order, leaving the pages empty.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> + use<T> {
        let Pages { pages, used, .. } = std::mem::take(self);
        pages
            .into_iter()
            .flat_map(|page| page.into_vec())
            .take(used)
            .filter_map(|entry| match entry {
                Entry::Occupied(value) => Some(value),
                Entry::Vacant(_) => None,
            })
    }

    /// The values with their keys, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.pages
            .iter()
            .flat_map(|page| page.iter())
            .take(self.used)
            .enumerate()
            .filter_map(|(key, entry)| match entry {
                Entry::Occupied(value) => Some((key, value)),
                Entry::Vacant(_) => None,
            })
    }
}

impl<T> Default for Pages<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_locate_keys_contiguously() {
        let mut expected = (0, 0);
        for key in 0..(DOUBLED + 3 * LAST) {
            assert_eq!(Pages::<()>::locate(key), expected, "key {key}");
            expected.1 += 1;
            if expected.1 == Pages::<()>::page_len(expected.0) {
                expected = (expected.0 + 1, 0);
            }
        }
    }

    #[test]
    fn pages_insert_remove_reuse() {
        let mut pages = Pages::new();
        let keys: Vec<usize> = (0..5000).map(|i| pages.insert(i)).collect();
        assert_eq!(keys, (0..5000).collect::<Vec<_>>());
        assert_eq!(pages.len(), 5000);
        for key in (0..5000).step_by(3) {
            assert_eq!(pages.try_remove(key), Some(key));
            assert_eq!(pages.try_remove(key), None);
        }
        assert_eq!(pages.len(), 5000 - 1667);
        let iterated: Vec<usize> = pages
            .iter()
            .map(|(key, &value)| {
                assert_eq!(key, value);
                key
            })
            .collect();
        assert_eq!(
            iterated,
            (0..5000).filter(|k| k % 3 != 0).collect::<Vec<_>>()
        );
        // Vacated keys are reused before new ones.
        let reused = pages.insert(7);
        assert_eq!(reused % 3, 0);
        assert!(reused < 5000);
        assert_eq!(pages.try_remove(usize::MAX / 2), None);
        assert_eq!(pages.get_mut(reused), Some(&mut 7));
        assert_eq!(pages.get_mut(3), None);
        assert_eq!(pages.get_mut(usize::MAX / 2), None);
        assert!(!pages.is_empty());
        let drained: Vec<usize> = pages.drain().collect();
        assert_eq!(drained.len(), 5000 - 1667 + 1);
        assert!(pages.is_empty());
        assert_eq!(pages.insert(1), 0, "drained pages start over");
    }
}
