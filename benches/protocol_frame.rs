//! WebSocket frame benchmarks: header/frame encode, decode + unmask (GB/s), masking.

use corecast_protocol::ws::frame::{
    encode_client_frame, encode_server_frame, encode_server_header, FrameDecoder, Opcode,
};
use corecast_protocol::ws::mask::{apply_mask, apply_mask_bytewise};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 4] = [64, 1024, 16 * 1024, 64 * 1024];

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode");
    g.bench_function("server_header", |b| {
        b.iter(|| encode_server_header(Opcode::Binary, true, black_box(1500)))
    });
    for size in SIZES {
        let payload = vec![0x5au8; size];
        let mut out = Vec::with_capacity(size + 16);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("server_frame", size), &payload, |b, p| {
            b.iter(|| {
                out.clear();
                encode_server_frame(Opcode::Binary, black_box(p), &mut out);
                black_box(out.len())
            })
        });
        g.bench_with_input(
            BenchmarkId::new("client_frame_masked", size),
            &payload,
            |b, p| {
                b.iter(|| {
                    out.clear();
                    encode_client_frame(Opcode::Binary, black_box(p), [1, 2, 3, 4], &mut out);
                    black_box(out.len())
                })
            },
        );
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_decode_unmask");
    for size in SIZES {
        let mut frame = Vec::new();
        encode_client_frame(
            Opcode::Binary,
            &vec![0x5au8; size],
            [0x37, 0xfa, 0x21, 0x3d],
            &mut frame,
        );
        let mut dec = FrameDecoder::new(1 << 20);
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            // Decoding unmasks in place; running it again re-masks, which costs the same.
            b.iter(|| {
                let (f, n) = dec.decode(black_box(&mut frame)).unwrap().unwrap();
                black_box((f.payload.len(), n))
            })
        });
    }
    g.finish();
}

fn mask(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask");
    for size in [1024usize, 64 * 1024, 1024 * 1024] {
        let mut buf = vec![0xa5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("apply_mask", size), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), [1, 2, 3, 4], 1))
        });
        if size == 64 * 1024 {
            // Payloads start 2-14 bytes into a frame: measure a misaligned start too.
            let mut wide = vec![0xa5u8; size + 2];
            g.bench_function(BenchmarkId::new("apply_mask_misaligned", size), |b| {
                b.iter(|| apply_mask(black_box(&mut wide[2..]), [1, 2, 3, 4], 1))
            });
            g.bench_function(BenchmarkId::new("bytewise", size), |b| {
                b.iter(|| apply_mask_bytewise(black_box(&mut buf), [1, 2, 3, 4], 1))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, encode, decode, mask);
criterion_main!(benches);
