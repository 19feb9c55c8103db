//! Harness shared by the end-to-end tests: helpers that start real
//! processes and inspect what they left on disk.

use schemas::Record;
use shipper::outbox::{Outbox, OutboxError};

/// Every record stored in `outbox`, in seq order, and how many reads on the
/// way quarantined a record.
pub fn read_all(outbox: &Outbox) -> Result<(Vec<Record>, usize), OutboxError> {
    let mut records = Vec::new();
    let mut quarantined = 0;
    let mut after = 0;
    loop {
        let b = outbox.read(after, 50_000, usize::MAX)?;
        quarantined += b.quarantined;
        if b.records.is_empty() && b.last_seq == after {
            return Ok((records, quarantined));
        }
        after = b.last_seq;
        records.extend(b.records);
    }
}
