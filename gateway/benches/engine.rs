//! Cost of one engine block (1 ms of audio for every node and patch) with 100 and 1000
//! live calls, bridged in pairs: each call's voice feeds the other's ear, so a block
//! pops every uplink ring, sums every patch and pushes every downlink ring.
//!
//! Run: `cargo bench -p telepatch --bench engine`. Ring feeding (resampling on the
//! session side) happens in the untimed setup; only `process_block` is measured.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::mpsc;

use codecs::rate::SampleRate;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use gateway::engine::call::{CallBuffering, CallStats, Downlink, Uplink, call_media, ports};
use gateway::engine::{Command, DEFAULT_BLOCK_SAMPLES, Engine, EnginePatch, NodeInstall};

struct Bench {
    engine: Engine,
    uplinks: Vec<Uplink>,
    downlinks: Vec<Downlink>,
    _retired: mpsc::Receiver<gateway::engine::Retired>,
}

fn build(calls: usize) -> Bench {
    let block = DEFAULT_BLOCK_SAMPLES;
    let (tx, rx) = mpsc::channel();
    let (retired_tx, retired_rx) = mpsc::channel();
    let mut engine = Engine::new(block, calls, rx, retired_tx);
    let mut uplinks = Vec::new();
    let mut downlinks = Vec::new();
    for slot in 0..calls {
        let stats = Arc::new(CallStats::default());
        let (uplink, node, mut downlink) =
            call_media(SampleRate::HZ_8000, 20, CallBuffering::default(), stats).unwrap();
        downlink.set_reply_rate(SampleRate::HZ_8000).unwrap();
        let install = NodeInstall::new(slot as u32, Box::new(node.with_block(block)), 2, 1, block);
        tx.send(Command::Insert(install)).unwrap();
        uplinks.push(uplink);
        downlinks.push(downlink);
    }
    let patches = (0..calls as u32)
        .map(|slot| EnginePatch {
            source_slot: slot,
            source_port: ports::VOICE,
            sink_slot: slot ^ 1,
            sink_port: ports::EAR,
            gain: 1.0,
        })
        .collect();
    tx.send(Command::SetPatches(patches)).unwrap();
    engine.process_block();
    Bench {
        engine,
        uplinks,
        downlinks,
        _retired: retired_rx,
    }
}

fn engine_block(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine_block");
    for calls in [100usize, 1000] {
        let mut bench = build(calls);
        let tone: Vec<f32> = (0..8).map(|n| (n as f32 * 0.7).sin() * 0.5).collect();
        // Prime every uplink past its prebuffer so voice really flows.
        for _ in 0..10 {
            for uplink in &mut bench.uplinks {
                for _ in 0..20 {
                    uplink.push_samples(&tone);
                }
            }
        }
        let Bench {
            engine,
            uplinks,
            downlinks,
            ..
        } = &mut bench;
        group.bench_function(format!("{calls}_calls"), |b| {
            b.iter_batched(
                || {
                    for uplink in uplinks.iter_mut() {
                        uplink.push_samples(&tone);
                    }
                    for downlink in downlinks.iter_mut() {
                        downlink.discard_queued();
                    }
                },
                |()| engine.process_block(),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, engine_block);
criterion_main!(benches);
