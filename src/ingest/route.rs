//! The ingest hot path between decoding and the ring hand-off, I/O free:
//! records of a batch → pushes encoded into one shared buffer. The consumer
//! and the `ingest_decode` benchmark both run exactly this.

use super::batch::{BatchError, Records};
use super::format::{FormatError, RecordFormat, TargetCache};
use crate::fanout::PushBatchBuilder;

/// Pushes encoded into one batch at most: bounds how long the first record
/// of a batch waits for the last one's decoding (~0.3 µs a record).
pub const FLUSH_AT: usize = 256;

/// The pending batch and the native target cache of one fetch task.
#[derive(Debug, Default)]
pub struct Route {
    pub builder: PushBatchBuilder,
    pub targets: TargetCache,
}

/// Why [`Route::encode`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The batch holds `limit` pushes: hand it off, then call again.
    Full,
    /// The record batch has no more records.
    End,
    /// A record could not be parsed; the rest of the record batch is lost.
    Bad(BatchError),
}

impl Route {
    /// Decodes records from `recs` (skipping those below `*cur`) and encodes
    /// their pushes until the pending batch holds `limit` or the records end.
    /// `*cur` becomes the offset after the last record consumed; a malformed
    /// record is passed to `malformed` and skipped.
    #[inline]
    pub fn encode(
        &mut self,
        format: RecordFormat,
        recs: &mut Records,
        cur: &mut i64,
        limit: usize,
        mut malformed: impl FnMut(i64, FormatError),
    ) -> Stop {
        while self.builder.len() < limit {
            let rec = match recs.next_ref() {
                None => return Stop::End,
                Some(Ok(r)) => r,
                Some(Err(e)) => return Stop::Bad(e),
            };
            if rec.offset < *cur {
                continue;
            }
            match format.decode_ref(&rec, &mut self.targets) {
                Ok(p) => self.builder.push(p.target, p.op, p.body),
                Err(e) => malformed(rec.offset, e),
            }
            *cur = rec.offset + 1;
        }
        Stop::Full
    }
}
