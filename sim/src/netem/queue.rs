//! A monotone priority queue (radix heap) for the engine's events.
//!
//! The engine never schedules an event earlier than the last one it took out, which is what a
//! radix heap needs (Ahuja, Mehlhorn, Orlin & Tarjan, 1990): keys go into the bucket of the
//! highest bit in which they differ from the last key taken, pushes are O(1) and each key moves
//! down at most once per bit. On the engine's load it is several times cheaper than a binary
//! heap's sift of every push and pop.

/// Buckets: one for keys equal to the last taken, then one per bit of a `u128`.
const BUCKETS: usize = 129;

use std::cell::Cell;

/// A min-queue of `(key, value)` with monotone keys: every pushed key must be ≥ the last popped.
#[derive(Debug, Clone)]
pub(crate) struct RadixHeap<V> {
    last: u128,
    len: usize,
    buckets: Vec<Vec<(u128, V)>>,
    /// Bit `i − 1` set when bucket `i` (1..=128) is not empty: finds the next bucket in O(1).
    occupied: u128,
    /// The smallest key, when known (peeking scans a bucket; the engine peeks often).
    min: Cell<Option<u128>>,
}

impl<V: Copy> RadixHeap<V> {
    pub(crate) fn new() -> Self {
        Self {
            last: 0,
            len: 0,
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            occupied: 0,
            min: Cell::new(None),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds a key, which must not be below the last popped one.
    pub(crate) fn push(&mut self, key: u128, value: V) {
        assert!(key >= self.last, "radix heap keys must be monotone");
        self.put(key, value);
        self.len += 1;
        if let Some(min) = self.min.get() {
            self.min.set(Some(min.min(key)));
        }
    }

    /// The smallest key, without taking it. Does not move the queue's floor: keys down to the
    /// last *popped* one may still be pushed after a peek.
    pub(crate) fn peek_key(&self) -> Option<u128> {
        if let Some(&(k, _)) = self.buckets[0].last() {
            return Some(k);
        }
        if self.occupied == 0 {
            return None;
        }
        if let Some(min) = self.min.get() {
            return Some(min);
        }
        let i = self.occupied.trailing_zeros() as usize + 1;
        let min = self.buckets[i].iter().map(|&(k, _)| k).min();
        self.min.set(min);
        min
    }

    /// Takes the entry with the smallest key.
    pub(crate) fn pop(&mut self) -> Option<(u128, V)> {
        self.refill();
        let entry = self.buckets[0].pop()?;
        self.len -= 1;
        self.min.set(None);
        Some(entry)
    }

    /// Makes bucket 0 hold the smallest key, if the queue is not empty. Bucket 0 holds only keys
    /// equal to `last`; it is a stack, which is fine because they are all equal.
    fn refill(&mut self) {
        if !self.buckets[0].is_empty() {
            return;
        }
        if self.occupied == 0 {
            return;
        }
        let i = self.occupied.trailing_zeros() as usize + 1;
        self.occupied &= !(1 << (i - 1));
        let mut moving = std::mem::take(&mut self.buckets[i]);
        // The minimum `peek_key` cached (kept by `push`, bucket 0 being empty) is bucket i's;
        // scan only without it. Invariant: bucket i is not empty (its bit was set).
        self.last = self
            .min
            .get()
            .or_else(|| moving.iter().map(|&(k, _)| k).min())
            .unwrap_or(self.last);
        for (k, v) in moving.drain(..) {
            self.put(k, v);
        }
        // Keep the allocation for next time.
        self.buckets[i] = moving;
    }

    fn put(&mut self, key: u128, value: V) {
        let b = bucket(key ^ self.last);
        if b > 0 {
            self.occupied |= 1 << (b - 1);
        }
        self.buckets[b].push((key, value));
    }
}

/// The bucket of a key that differs from the last in `diff`: 0 when equal, else 1 + the index
/// of the highest differing bit.
fn bucket(diff: u128) -> usize {
    if diff == 0 {
        0
    } else {
        128 - diff.leading_zeros() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netem::random::Rng;

    #[test]
    fn pops_in_key_order_under_monotone_pushes() {
        let mut rng = Rng::for_stream(3, &[]);
        let mut heap = RadixHeap::new();
        let mut reference = std::collections::BinaryHeap::new();
        let mut last = 0u128;
        for round in 0..20_000u32 {
            // Push a few keys at or after the last popped, pop one.
            for _ in 0..(rng.next_u64() % 3) {
                let key =
                    last + u128::from(rng.next_u64() % 1_000_000) * (1 << 64) + u128::from(round);
                heap.push(key, round);
                reference.push(std::cmp::Reverse(key));
            }
            if let Some((k, _)) = heap.pop() {
                let std::cmp::Reverse(r) = reference.pop().unwrap();
                assert_eq!(k, r);
                last = k;
            }
        }
        while let Some((k, _)) = heap.pop() {
            assert_eq!(k, reference.pop().unwrap().0);
        }
        assert!(reference.is_empty());
        assert_eq!(heap.len(), 0);
    }
}
