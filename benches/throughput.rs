//! Simulation throughput per mode, beside the floor loop (read each access, one hash lookup
//! of its page) on the same accesses. `memvirt bench` reports the same measurements as
//! ratios for users; this is the developer's view with criterion's statistics.

use std::time::Duration;

use criterion::{criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use memvirt::addr::PageSize;
use memvirt::sim::bench::{floor, timed_run};
use memvirt::sim::compare::WorkloadFactory;
use memvirt::sim::{ModeName, SimConfig};
use memvirt::workload::open::{convert, open_trace};
use memvirt::workload::scenario::{self, Params, ScenarioContext};
use memvirt::workload::{Workload, WorkloadError};

fn scenario(
    name: &str,
    params: &[(&str, &str)],
) -> impl Fn() -> Result<Box<dyn Workload>, WorkloadError> + Sync {
    let params: Params = params.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
    let name = name.to_string();
    move || scenario::build(&name, &params, &ScenarioContext { seed: 1, page_size: PageSize::Size4K })
}

/// The bundled real-program trace (valgrind lackey of /bin/true), converted once to the
/// compact binary format in the target directory, as a workload factory.
fn real_trace(compact: &std::path::Path) -> Box<WorkloadFactory<'_>> {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/true.lackey.gz");
    convert(&source, compact, &mut |_| {}).expect("the bundled trace converts");
    Box::new(move || open_trace(compact, 1))
}

fn throughput(c: &mut Criterion) {
    let compact = std::env::temp_dir().join(format!("memvirt-bench-{}.mvt", std::process::id()));
    let cases: [(&str, Box<WorkloadFactory<'_>>); 5] = [
        ("real-trace-compact", real_trace(&compact)),
        ("seq-scan", Box::new(scenario("seq-scan", &[("size", "16M"), ("passes", "4")]))),
        (
            "uniform-random-16G-populated",
            Box::new(scenario(
                "uniform-random",
                &[("size", "16G"), ("accesses", "1000000"), ("populate", "yes")],
            )),
        ),
        (
            "uniform-random-16G",
            Box::new(scenario("uniform-random", &[("size", "16G"), ("accesses", "200000")])),
        ),
        ("fork-storm", Box::new(scenario("fork-storm", &[("forks", "30")]))),
    ];
    let config = SimConfig::default();
    // Each iteration is timed from the end of the workload's set-up (populating a buffer), as
    // `memvirt bench` times it; flat sampling keeps runs whose set-up takes seconds few.
    let seconds =
        |iters: u64, one: &dyn Fn() -> f64| Duration::from_secs_f64((0..iters).map(|_| one()).sum());
    for (name, factory) in &cases {
        let mut group = c.benchmark_group(*name);
        group.sample_size(10).sampling_mode(SamplingMode::Flat);
        let accesses = floor(factory).map(|(n, _)| n).unwrap_or(1);
        group.throughput(Throughput::Elements(accesses));
        group.bench_function("floor", |b| {
            b.iter_custom(|iters| seconds(iters, &|| floor(factory).map(|(_, s)| s).unwrap_or(0.0)));
        });
        for mode in [ModeName::Native, ModeName::Shadow, ModeName::Ept, ModeName::Npt] {
            group.bench_with_input(BenchmarkId::from_parameter(mode), &mode, |b, &mode| {
                b.iter_custom(|iters| {
                    seconds(iters, &|| timed_run(mode, &config, factory).map(|(_, s)| s).unwrap_or(0.0))
                });
            });
        }
        group.finish();
    }
    let _ = std::fs::remove_file(&compact);
}

/// Groups the benchmarks (a module, so the macro's undocumented function can be allowed).
mod group {
    #![allow(missing_docs)]
    use super::throughput;
    criterion::criterion_group!(benches, throughput);
}

criterion_main!(group::benches);
