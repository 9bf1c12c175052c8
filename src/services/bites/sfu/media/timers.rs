//! Every connection's next deadline in one heap, so a media thread asks only the connections
//! that are due (not every connection on every loop) and sleeps until the earliest.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use super::demux::ConnectionId;

#[derive(Default)]
pub struct Timers {
    /// Deadlines as set, newest and stale alike; a stale one is skipped when it comes up.
    heap: BinaryHeap<Reverse<(Instant, ConnectionId)>>,
    /// Each connection's current deadline.
    current: HashMap<ConnectionId, Instant>,
}

impl Timers {
    /// `connection`'s next deadline (replacing the one it had); `None` clears it.
    pub fn set(&mut self, connection: ConnectionId, at: Option<Instant>) {
        match at {
            Some(at) => {
                if self.current.insert(connection, at) != Some(at) {
                    self.heap.push(Reverse((at, connection)));
                }
            }
            None => {
                self.current.remove(&connection);
            }
        }
        // Stale entries are dropped as they surface; a heap far larger than the live set
        // (deadlines moved often without coming due) is rebuilt.
        if self.heap.len() > 64 + 4 * self.current.len() {
            self.heap = self
                .current
                .iter()
                .map(|(connection, at)| Reverse((*at, *connection)))
                .collect();
        }
    }

    /// Whether `connection` has a deadline.
    pub fn contains(&self, connection: ConnectionId) -> bool {
        self.current.contains_key(&connection)
    }

    /// The earliest deadline.
    pub fn earliest(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, connection))) = self.heap.peek().copied() {
            if self.current.get(&connection) == Some(&at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Takes the connections whose deadline is at or before `now` into `due` (each once);
    /// their deadlines are cleared until set again.
    pub fn take_due(&mut self, now: Instant, due: &mut Vec<ConnectionId>) {
        while let Some(Reverse((at, connection))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if self.current.get(&connection) == Some(&at) {
                self.current.remove(&connection);
                due.push(connection);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_due_connections_come_out_once_at_their_latest_deadline() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut timers = Timers::default();
        timers.set(1, Some(at(30)));
        timers.set(2, Some(at(10)));
        timers.set(3, Some(at(20)));
        timers.set(2, Some(at(50))); // moved later: its 10 ms entry is stale
        timers.set(3, None);
        assert_eq!(timers.earliest(), Some(at(30)));
        let mut due = Vec::new();
        timers.take_due(at(29), &mut due);
        assert!(due.is_empty());
        timers.take_due(at(60), &mut due);
        assert_eq!(due, vec![1, 2]);
        assert_eq!(timers.earliest(), None);
        assert!(timers.is_empty());
    }

    #[test]
    fn the_heap_stays_near_the_live_set() {
        let start = Instant::now();
        let mut timers = Timers::default();
        for round in 0..10_000u64 {
            timers.set(round % 10, Some(start + Duration::from_micros(round)));
        }
        assert_eq!(timers.len(), 10);
        assert!(timers.heap.len() <= 64 + 40);
        let mut due = Vec::new();
        timers.take_due(start + Duration::from_secs(1), &mut due);
        due.sort_unstable();
        assert_eq!(due, (0..10).collect::<Vec<_>>());
    }
}
