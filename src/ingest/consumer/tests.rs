use super::*;
use crate::ingest::format::{encode_batch, OutRecord};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::records::Compression;

fn response(parts: &[(i32, i16, Option<Bytes>)]) -> FetchResponse {
    let mut t = FetchableTopicResponse::default();
    t.partitions = parts
        .iter()
        .map(|(p, err, recs)| {
            let mut d = PartitionData::default();
            d.partition_index = *p;
            d.error_code = *err;
            d.records = recs.clone();
            d
        })
        .collect();
    let mut r = FetchResponse::default();
    r.responses = vec![t];
    r
}

#[test]
fn pipelined_fetch_continues_after_whole_batches() {
    let recs: Vec<OutRecord> = (0..3)
        .map(|i| OutRecord::native("all", 1000, Bytes::from(format!("{i}"))))
        .collect();
    let batch = encode_batch(&recs, Compression::None, 0).unwrap();
    let offsets = BTreeMap::from([(0, 0), (1, 7)]);
    let next = pipelined_offsets(
        &response(&[(0, 0, Some(batch)), (1, 0, None)]),
        offsets.clone(),
    );
    assert_eq!(next, Some(BTreeMap::from([(0, 3), (1, 7)])));
    // Any partition error: no pipelining (the error is handled first).
    assert_eq!(
        pipelined_offsets(&response(&[(0, 0, None), (1, 6, None)]), offsets),
        None
    );
}
