use super::*;
use crate::ingest::format::{encode_batch, OutRecord};
use bytes::BytesMut;
use kafka_protocol::records::Compression;

fn recs(n: usize) -> Vec<OutRecord> {
    (0..n)
        .map(|i| {
            OutRecord::native(
                &format!("room:r{i}"),
                1000 + i as u32,
                Bytes::from(format!("body-{i}")),
            )
        })
        .collect()
}

fn with_base_offset(batch: Bytes, base: i64) -> Bytes {
    let mut b = BytesMut::from(&batch[..]);
    b[0..8].copy_from_slice(&base.to_be_bytes());
    b.freeze()
}

#[test]
fn decodes_every_codec() {
    for c in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let data = encode_batch(&recs(20), c, 1_700_000_000_000).unwrap();
        let batches: Vec<_> = Batches::new(data).collect();
        assert_eq!(batches.len(), 1, "{c:?}");
        let b = batches[0].as_ref().unwrap();
        b.verify_crc().unwrap();
        assert_eq!(b.header.records_count, 20);
        let out: Vec<RawRecord> = b.records().unwrap().map(Result::unwrap).collect();
        assert_eq!(out.len(), 20, "{c:?}");
        for (i, r) in out.iter().enumerate() {
            assert_eq!(r.offset, i as i64);
            assert_eq!(r.timestamp, 1_700_000_000_000);
            assert_eq!(r.key(), Some(format!("room:r{i}").as_bytes()));
            assert_eq!(r.value().as_deref(), Some(format!("body-{i}").as_bytes()));
            assert_eq!(r.value_bytes(), Some(format!("body-{i}").as_bytes()));
            let op = (1000 + i).to_string();
            assert_eq!(r.header(b"op"), Some(Some(op.as_bytes())));
            assert_eq!(r.header(b"nope"), None);
        }
    }
}

#[test]
fn several_batches_and_a_cut_trailing_one() {
    let a = with_base_offset(encode_batch(&recs(3), Compression::None, 0).unwrap(), 10);
    let b = with_base_offset(encode_batch(&recs(2), Compression::Zstd, 0).unwrap(), 13);
    let mut all = BytesMut::new();
    all.extend_from_slice(&a);
    all.extend_from_slice(&b);
    all.extend_from_slice(&a[..a.len() - 5]);
    let all = all.freeze();
    let offsets: Vec<i64> = Batches::new(all.clone())
        .flat_map(|b| b.unwrap().records().unwrap())
        .map(|r| r.unwrap().offset)
        .collect();
    assert_eq!(offsets, vec![10, 11, 12, 13, 14]);
    assert_eq!(next_offset_after(&all), Some(15));
    assert_eq!(next_offset_after(&Bytes::new()), None);
}

#[test]
fn corrupted_batch_fails_crc() {
    let data = encode_batch(&recs(3), Compression::None, 0).unwrap();
    let mut bad = BytesMut::from(&data[..]);
    let n = bad.len();
    bad[n - 2] ^= 0xff;
    let b = Batches::new(bad.freeze()).next().unwrap().unwrap();
    assert!(matches!(b.verify_crc(), Err(BatchError::Crc { .. })));
}

#[test]
fn old_magic_is_skipped_with_its_length() {
    let data = encode_batch(&recs(1), Compression::None, 0).unwrap();
    let mut old = BytesMut::from(&data[..]);
    old[MAGIC_AT] = 1;
    old.extend_from_slice(&with_base_offset(data, 1));
    let mut it = Batches::new(old.freeze());
    assert_eq!(it.next().unwrap().unwrap_err().error, BatchError::Magic(1));
    assert_eq!(it.next().unwrap().unwrap().header.base_offset, 1);
    assert!(it.next().is_none());
}

#[test]
fn garbage_records_section_errors_without_panic() {
    let data = encode_batch(&recs(4), Compression::None, 0).unwrap();
    for cut in BATCH_HEADER_LEN..data.len() {
        // Claim the full length but hand over a shorter records section by
        // rewriting the batch length: every prefix must decode or error.
        let mut b = BytesMut::from(&data[..cut]);
        let len = (cut - 12) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        if let Some(Ok(batch)) = Batches::new(b.freeze()).next() {
            let n = batch.records().unwrap().filter(|r| r.is_ok()).count();
            assert!(n <= 4);
        }
    }
}

#[test]
fn null_key_and_value() {
    let r = OutRecord {
        key: None,
        headers: vec![],
        value: None,
    };
    let data = encode_batch(&[r], Compression::None, 0).unwrap();
    let b = Batches::new(data).next().unwrap().unwrap();
    let rec = b.records().unwrap().next().unwrap().unwrap();
    assert_eq!(rec.key(), None);
    assert_eq!(rec.value(), None);
    assert_eq!(rec.header_count(), 0);
}
