//! Fair slots: a bounded pool of permits where one key (a subscription)
//! may hold at most its share, both queues first come, first served. Used
//! by write admission (decode slots) and by the query pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Slots with a fair share per key.
#[derive(Debug)]
pub struct Slots {
    total: Arc<Semaphore>,
    per_key: usize,
    keys: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A held slot.
#[derive(Debug)]
pub struct Slot {
    _key: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl Slots {
    pub fn new(total: usize, per_key: usize) -> Slots {
        let total = total.max(1);
        Slots {
            total: Arc::new(Semaphore::new(total)),
            per_key: per_key.clamp(1, total),
            keys: Mutex::default(),
        }
    }

    fn key(&self, key: &str) -> Arc<Semaphore> {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_key)))
            .clone()
    }

    /// Waits up to `wait` for a slot of `key` (its own share first, then
    /// the shared pool; both queues are first come, first served).
    pub async fn acquire(&self, key: &str, wait: Duration) -> Option<Slot> {
        let own = self.key(key);
        let total = self.total.clone();
        tokio::time::timeout(wait, async move {
            let k = own.acquire_owned().await.ok()?;
            let t = total.acquire_owned().await.ok()?;
            Some(Slot { _key: k, _total: t })
        })
        .await
        .ok()
        .flatten()
    }

    /// Forgets a terminated subscription's share.
    pub fn forget(&self, key: &str) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_subscription_cannot_take_every_slot() {
        let slots = Slots::new(4, 2);
        let wait = Duration::from_millis(20);
        let a1 = slots.acquire("a", wait).await.expect("a 1");
        let a2 = slots.acquire("a", wait).await.expect("a 2");
        assert!(slots.acquire("a", wait).await.is_none(), "a's share is 2");
        let b1 = slots.acquire("b", wait).await.expect("b gets a slot");
        let _b2 = slots.acquire("b", wait).await.expect("b gets its share");
        assert!(slots.acquire("c", wait).await.is_none(), "all 4 taken");
        drop(a1);
        let _c = slots.acquire("c", wait).await.expect("freed slot");
        drop((a2, b1));
    }
}
