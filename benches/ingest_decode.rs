//! Kafka ingest hot path on one core: a fetch response's records section
//! (record batches v2) → records → `native` format pushes → pushes encoded
//! for the shards (goim packet + WS op-9 frame) → ring hand-off.
//! 100-byte values, 100 records per batch, 10 batches per fetch.
//!
//! - `decode`: batch split, CRC-32C, decompression, record parse, native
//!   format (target from the consumer's target cache, op, body slice).
//! - `decode_route`: what the consumer runs (`ingest::route::Route::encode`)
//!   up to and including the hand-off: pushes encoded into one buffer per
//!   batch of ≤ `FLUSH_AT`, each batch queued as one `ShardMsg::Pushes` on
//!   each of `SHARDS` real shard rings (`fanout::channel`, waker check
//!   included). The rings are drained between iterations, untimed: dropping
//!   the pushes is the shards' work.
//! - `route_single`: the previous per-record path for comparison, one
//!   `Push::new` (own buffer) and one `ShardMsg::Push` per record per ring.

use bytes::{Bytes, BytesMut};
use corecast::fanout::{channel, ChannelSizes, Push, ShardInbox, ShardLink, ShardMsg};
use corecast::ingest::batch::Batches;
use corecast::ingest::format::{encode_batch, OutRecord};
use corecast::ingest::route::{Route, Stop, FLUSH_AT};
use corecast::ingest::RecordFormat;
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput,
};
use kafka_protocol::records::Compression;

const PER_BATCH: usize = 100;
const BATCHES: usize = 10;
/// Shard rings fed (one per shard; every push goes to every shard).
const SHARDS: usize = 2;

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

fn rings() -> (Vec<ShardLink>, Vec<ShardInbox>) {
    (0..SHARDS)
        .map(|i| channel(i, ChannelSizes::default()).unwrap())
        .unzip()
}

fn drain(inboxes: &mut [ShardInbox]) {
    for inbox in inboxes {
        while inbox.try_recv().is_some() {}
    }
}

fn hand_off(route: &mut Route, links: &mut [ShardLink]) {
    if route.builder.is_empty() {
        return;
    }
    let batch = route.builder.finish();
    for link in links.iter_mut() {
        if link.try_send(ShardMsg::Pushes(batch.clone())).is_err() {
            panic!("ring full");
        }
    }
}

/// The consumer's per-partition loop (`deliver_partition`) without I/O.
fn route_fetch(data: Bytes, route: &mut Route, links: &mut [ShardLink]) -> i64 {
    let mut cur = 0i64;
    for batch in Batches::new(data) {
        let batch = batch.unwrap();
        batch.verify_crc().unwrap();
        let mut recs = batch.records().unwrap();
        loop {
            match route.encode(
                RecordFormat::Native,
                &mut recs,
                &mut cur,
                FLUSH_AT,
                |_, e| panic!("{e}"),
            ) {
                Stop::Full => hand_off(route, links),
                Stop::End => break,
                Stop::Bad(e) => panic!("{e}"),
            }
        }
    }
    hand_off(route, links);
    cur
}

fn decode_route(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest_decode");
    g.throughput(Throughput::Elements((PER_BATCH * BATCHES) as u64));
    for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let data = fetch_records(codec);
        let mut route = Route::default();
        g.bench_function(BenchmarkId::new("decode", format!("{codec:?}")), |b| {
            b.iter(|| {
                let mut n = 0u64;
                for batch in Batches::new(black_box(data.clone())) {
                    let batch = batch.unwrap();
                    batch.verify_crc().unwrap();
                    let mut recs = batch.records().unwrap();
                    while let Some(rec) = recs.next_ref() {
                        let p = RecordFormat::Native
                            .decode_ref(&rec.unwrap(), &mut route.targets)
                            .unwrap();
                        n += u64::from(p.op) + p.body.len() as u64;
                        black_box(p.target);
                    }
                }
                n
            })
        });
        let (mut links, mut inboxes) = rings();
        g.bench_function(
            BenchmarkId::new("decode_route", format!("{codec:?}")),
            |b| {
                b.iter_batched(
                    || {
                        drain(&mut inboxes);
                        data.clone()
                    },
                    |data| route_fetch(black_box(data), &mut route, &mut links),
                    BatchSize::NumIterations(4),
                )
            },
        );
        g.bench_function(
            BenchmarkId::new("route_single", format!("{codec:?}")),
            |b| {
                b.iter_batched(
                    || {
                        drain(&mut inboxes);
                        data.clone()
                    },
                    |data| {
                        for batch in Batches::new(black_box(data)) {
                            let batch = batch.unwrap();
                            batch.verify_crc().unwrap();
                            for rec in batch.records().unwrap() {
                                let p = RecordFormat::Native.decode(&rec.unwrap()).unwrap();
                                let push = Push::new(p.target, p.op, &p.body);
                                for link in links.iter_mut() {
                                    if link.try_send(ShardMsg::Push(push.clone())).is_err() {
                                        panic!("ring full");
                                    }
                                }
                            }
                        }
                    },
                    BatchSize::NumIterations(4),
                )
            },
        );
    }
    g.finish();
}

criterion_group!(benches, decode_route);
criterion_main!(benches);
