//! goim packet benchmarks: zero-copy parse, streaming decode, op-9 container build.

use corecast_protocol::packet::{
    encode_packet, parse_packet, raw_packets, PacketDecoder, RawContainer, DEFAULT_MAX_BODY,
};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// `n` packets with `body` bytes of body each, back to back.
fn stream(n: usize, body: usize) -> Vec<u8> {
    let payload = vec![b'x'; body];
    let mut out = Vec::new();
    for i in 0..n {
        encode_packet(1000, i as u32, &payload, &mut out);
    }
    out
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("packet_decode");
    const N: usize = 1000;
    for body in [0usize, 64, 512] {
        let buf = stream(N, body);
        g.throughput(Throughput::Elements(N as u64));
        g.bench_function(BenchmarkId::new("parse_packet", body), |b| {
            b.iter(|| {
                let mut rest = black_box(&buf[..]);
                let mut ops = 0u64;
                while let Some((p, n)) = parse_packet(rest, DEFAULT_MAX_BODY).unwrap() {
                    ops += u64::from(p.op);
                    rest = &rest[n..];
                }
                ops
            })
        });
        // Input in 4 KiB pieces, as from a provided-buffer ring: packets straddle.
        g.bench_function(BenchmarkId::new("decoder_4k_pieces", body), |b| {
            let mut dec = PacketDecoder::new(DEFAULT_MAX_BODY).retain_spill(true);
            b.iter(|| {
                let mut ops = 0u64;
                for piece in black_box(&buf).chunks(4096) {
                    dec.feed(piece, |p| ops += u64::from(p.op)).unwrap();
                }
                ops
            })
        });
        g.bench_function(BenchmarkId::new("raw_packets_iter", body), |b| {
            b.iter(|| {
                raw_packets(black_box(&buf))
                    .map(|p| u64::from(p.unwrap().op))
                    .sum::<u64>()
            })
        });
    }
    g.finish();
}

fn container(c: &mut Criterion) {
    let mut g = c.benchmark_group("raw_container");
    let body = vec![b'm'; 100];
    for n in [1usize, 10, 100] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("build_finish", n), |b| {
            b.iter(|| {
                let mut c = RawContainer::with_capacity(n * 116);
                for i in 0..n {
                    c.push(1000, i as u32, black_box(&body));
                }
                black_box(c.finish(0).ws_frame().len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode, container);
criterion_main!(benches);
