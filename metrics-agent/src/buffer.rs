//! The bounded push buffer: samples in collection order, the oldest
//! dropped first (and counted) when it is full.
//!
//! Every sample has a sequence number; a request covers a prefix and, when
//! it succeeds, everything up to its end is removed, even if part of that
//! prefix was already dropped for space while the request was retried.
//! (Such samples are counted as dropped and, when that retry succeeds, as
//! sent too: the receiver got them, but the agent had given them up.)

use std::collections::VecDeque;

use crate::sample::Point;

#[derive(Debug)]
pub struct Buffer {
    points: VecDeque<Point>,
    /// Sequence number of `points[0]`.
    head: u64,
    capacity: usize,
}

impl Buffer {
    pub fn new(capacity: usize) -> Buffer {
        Buffer {
            points: VecDeque::new(),
            head: 0,
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Appends `points`; returns how many of the oldest were dropped.
    pub fn push(&mut self, points: impl IntoIterator<Item = Point>) -> u64 {
        self.points.extend(points);
        let over = self.points.len().saturating_sub(self.capacity);
        self.points.drain(..over);
        self.head += over as u64;
        over as u64
    }

    /// Up to `max` of the oldest samples and the sequence number just
    /// after them.
    pub fn front(&self, max: usize) -> (impl Iterator<Item = &Point>, usize, u64) {
        let n = self.points.len().min(max);
        (self.points.iter().take(n), n, self.head + n as u64)
    }

    /// Removes every sample before sequence number `end`.
    pub fn ack(&mut self, end: u64) {
        let n = end.saturating_sub(self.head).min(self.points.len() as u64);
        self.points.drain(..n as usize);
        self.head += n;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sample::{Kind, Series};

    fn pts(range: std::ops::Range<i64>) -> Vec<Point> {
        let s = Arc::new(Series {
            name: "m".into(),
            labels: vec![],
            kind: Kind::Gauge,
        });
        range
            .map(|t| Point {
                series: s.clone(),
                value: t as f64,
                timestamp_ms: t,
            })
            .collect()
    }

    fn times(b: &Buffer) -> Vec<i64> {
        b.front(usize::MAX).0.map(|p| p.timestamp_ms).collect()
    }

    #[test]
    fn oldest_are_dropped_first_and_acks_survive_drops() {
        let mut b = Buffer::new(5);
        assert_eq!(b.push(pts(0..3)), 0);
        let (_, n, end) = b.front(2);
        assert_eq!((n, end), (2, 2));
        // While that request is retried, more arrive and push out the oldest.
        assert_eq!(b.push(pts(3..7)), 2);
        assert_eq!(times(&b), vec![2, 3, 4, 5, 6]);
        // The request succeeds: its samples are gone already; nothing else goes.
        b.ack(end);
        assert_eq!(times(&b), vec![2, 3, 4, 5, 6]);
        let (_, n, end) = b.front(3);
        assert_eq!(n, 3);
        b.ack(end);
        assert_eq!(times(&b), vec![5, 6]);
    }
}
