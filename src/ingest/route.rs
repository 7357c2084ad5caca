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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kafka_protocol::records::Compression;

    use super::*;
    use crate::fanout::{PushTarget, PACKET_HEADER_LEN};
    use crate::ingest::batch::Batches;
    use crate::ingest::format::{encode_batch, OutRecord};

    fn records(keys: &[&str]) -> Records {
        let recs: Vec<OutRecord> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| OutRecord::native(k, 1000 + i as u32, Bytes::from(format!("m{i}"))))
            .collect();
        let data = encode_batch(&recs, Compression::None, 0).unwrap();
        let batch = Batches::new(data).next().unwrap().unwrap();
        batch.records().unwrap()
    }

    #[test]
    fn encodes_in_order_skips_below_offset_and_reports_malformed() {
        let mut route = Route::default();
        let mut recs = records(&["room:a", "user:7", "bogus", "all", "room:a"]);
        let mut cur = 1; // offset 0 was delivered before
        let mut bad = Vec::new();
        let stop = route.encode(RecordFormat::Native, &mut recs, &mut cur, 2, |o, e| {
            bad.push((o, e))
        });
        assert_eq!(stop, Stop::Full);
        assert_eq!(cur, 4, "consumed offsets 1..=3");
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, 2);
        let first = route.builder.finish();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].target, PushTarget::Mids([7i64][..].into()));
        assert_eq!(first[1].target, PushTarget::All);
        assert_eq!(first[1].op, 1003);
        assert_eq!(&first[1].packet[PACKET_HEADER_LEN..], b"m3");
        let stop = route.encode(RecordFormat::Native, &mut recs, &mut cur, 2, |_, e| {
            panic!("{e}")
        });
        assert_eq!(stop, Stop::End);
        assert_eq!(cur, 5);
        let second = route.builder.finish();
        assert_eq!(second.len(), 1);
        assert_eq!(&second[0].packet[PACKET_HEADER_LEN..], b"m4");
    }

    #[test]
    fn repeated_keys_share_one_target_and_the_cache_is_bounded() {
        let mut route = Route {
            targets: TargetCache::with_capacity(2),
            ..Route::default()
        };
        let mut recs = records(&["room:a", "room:a", "room:b", "room:c"]);
        let mut cur = 0;
        let stop = route.encode(RecordFormat::Native, &mut recs, &mut cur, 10, |_, e| {
            panic!("{e}")
        });
        assert_eq!(stop, Stop::End);
        let b = route.builder.finish();
        match (&b[0].target, &b[1].target) {
            (PushTarget::Room(x), PushTarget::Room(y)) => assert!(std::sync::Arc::ptr_eq(x, y)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(route.targets.len() <= 2, "cache emptied when full");
        assert_eq!(b[3].target, PushTarget::Room("c".into()));
    }

    #[test]
    fn borrowed_decode_matches_owned_decode() {
        let mut cache = TargetCache::default();
        let mut a = records(&["room:live://1", "conn:k1", "user:42", "all"]);
        let b = a.clone();
        for owned in b {
            let owned = owned.unwrap();
            let borrowed = a.next_ref().unwrap().unwrap();
            assert_eq!(borrowed.offset, owned.offset);
            let d = RecordFormat::Native.decode(&owned).unwrap();
            let r = RecordFormat::Native
                .decode_ref(&borrowed, &mut cache)
                .unwrap();
            assert_eq!((r.target, r.op, r.body), (d.target, d.op, &d.body[..]));
        }
        assert!(a.next_ref().is_none());
    }
}
