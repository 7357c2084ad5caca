//! Kafka ingest hot path on one core: a fetch response's records section
//! (record batches v2) → records → `native` format pushes → the push encoded
//! once for the shards (goim packet + WS op-9 frame, `fanout::Push::new`).
//! 100-byte values, 100 records per batch, 10 batches per fetch.

use bytes::{Bytes, BytesMut};
use corecast::fanout::Push;
use corecast::ingest::batch::Batches;
use corecast::ingest::format::{encode_batch, OutRecord};
use corecast::ingest::RecordFormat;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafka_protocol::records::Compression;

const PER_BATCH: usize = 100;
const BATCHES: usize = 10;

/// A records section as a fetch response carries it.
fn fetch_records(codec: Compression) -> Bytes {
    let mut out = BytesMut::new();
    for b in 0..BATCHES {
        let recs: Vec<OutRecord> = (0..PER_BATCH)
            .map(|i| {
                let key = match i % 4 {
                    0 => format!("room:live://{}", i % 50),
                    1 => format!("user:{}", 100_000 + i),
                    2 => format!("conn:{:032x}", i),
                    _ => "all".to_string(),
                };
                OutRecord::native(&key, 1000, Bytes::from(vec![b'a' + (i % 26) as u8; 100]))
            })
            .collect();
        let batch = encode_batch(&recs, codec, 1_700_000_000_000).unwrap();
        let mut batch = BytesMut::from(&batch[..]);
        batch[0..8].copy_from_slice(&((b * PER_BATCH) as i64).to_be_bytes());
        out.extend_from_slice(&batch);
    }
    out.freeze()
}

fn decode_route(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest_decode");
    g.throughput(Throughput::Elements((PER_BATCH * BATCHES) as u64));
    for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let data = fetch_records(codec);
        g.bench_function(BenchmarkId::new("decode", format!("{codec:?}")), |b| {
            b.iter(|| {
                let mut n = 0u64;
                for batch in Batches::new(black_box(data.clone())) {
                    let batch = batch.unwrap();
                    batch.verify_crc().unwrap();
                    for rec in batch.records().unwrap() {
                        let p = RecordFormat::Native.decode(&rec.unwrap()).unwrap();
                        n += u64::from(p.op) + p.body.len() as u64;
                    }
                }
                n
            })
        });
        g.bench_function(
            BenchmarkId::new("decode_route", format!("{codec:?}")),
            |b| {
                b.iter(|| {
                    let mut n = 0usize;
                    for batch in Batches::new(black_box(data.clone())) {
                        let batch = batch.unwrap();
                        batch.verify_crc().unwrap();
                        for rec in batch.records().unwrap() {
                            let p = RecordFormat::Native.decode(&rec.unwrap()).unwrap();
                            let push = Push::new(p.target, p.op, &p.body);
                            n += push.ws_frame.len();
                        }
                    }
                    n
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, decode_route);
criterion_main!(benches);
