//! Small pictures and thumbnails kept in memory, so the downloads a client repeats most (the
//! avatars of a contact list) cost no store read. Content-addressed bytes never change, so
//! nothing is invalidated but what the orphan sweep deletes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use super::store::Size;

/// Larger encodings are streamed from the store, never cached.
pub const MAX_CACHED_OBJECT: u64 = 256 * 1024;

/// A picture's two encodings, by [`slot`].
type Encodings = [Option<Bytes>; 2];

fn slot(size: Size) -> usize {
    match size {
        Size::Full => 0,
        Size::Thumb => 1,
    }
}

#[derive(Default)]
struct Held {
    objects: HashMap<String, Encodings>,
    /// Insertion order: the oldest goes first when the budget is full.
    order: VecDeque<(String, Size)>,
    bytes: usize,
}

pub struct ByteCache {
    budget: usize,
    held: Mutex<Held>,
}

impl ByteCache {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            held: Mutex::default(),
        }
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, name: &str, size: Size) -> Option<Bytes> {
        self.held()
            .objects
            .get(name)
            .and_then(|encodings| encodings[slot(size)].clone())
    }

    pub fn insert(&self, name: &str, size: Size, bytes: Bytes) {
        if bytes.len() > self.budget || bytes.len() as u64 > MAX_CACHED_OBJECT {
            return;
        }
        let mut held = self.held();
        if held
            .objects
            .get(name)
            .is_some_and(|encodings| encodings[slot(size)].is_some())
        {
            return;
        }
        while held.bytes + bytes.len() > self.budget {
            let Some((oldest, oldest_size)) = held.order.pop_front() else {
                break;
            };
            let freed = take(&mut held.objects, &oldest, oldest_size);
            held.bytes -= freed;
        }
        held.bytes += bytes.len();
        held.order.push_back((name.to_owned(), size));
        held.objects.entry(name.to_owned()).or_default()[slot(size)] = Some(bytes);
    }

    pub fn remove(&self, name: &str) {
        let mut held = self.held();
        for size in [Size::Full, Size::Thumb] {
            let freed = take(&mut held.objects, name, size);
            held.bytes -= freed;
        }
        held.order.retain(|(held_name, _)| held_name != name);
    }
}

/// Removes one encoding, and the entry once both are gone; answers the bytes freed.
fn take(objects: &mut HashMap<String, Encodings>, name: &str, size: Size) -> usize {
    let Some(encodings) = objects.get_mut(name) else {
        return 0;
    };
    let freed = encodings[slot(size)].take().map_or(0, |bytes| bytes.len());
    if encodings.iter().all(Option::is_none) {
        objects.remove(name);
    }
    freed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_when_the_budget_is_full() {
        let cache = ByteCache::new(10);
        cache.insert("a", Size::Full, Bytes::from_static(b"aaaa"));
        cache.insert("b", Size::Thumb, Bytes::from_static(b"bbbb"));
        cache.insert("c", Size::Full, Bytes::from_static(b"cccc"));
        assert_eq!(cache.get("a", Size::Full), None);
        assert!(cache.get("b", Size::Thumb).is_some());
        assert!(cache.get("c", Size::Full).is_some());
        cache.remove("b");
        assert_eq!(cache.get("b", Size::Thumb), None);
        // Larger than the whole budget: not kept.
        cache.insert("d", Size::Full, Bytes::from(vec![0; 11]));
        assert_eq!(cache.get("d", Size::Full), None);
    }
}
