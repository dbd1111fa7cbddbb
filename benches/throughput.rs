//! Simulation throughput per mode, beside the floor loop (read each access, one hash lookup
//! of its page) on the same accesses. `memvirt bench` reports the same measurements as
//! ratios for users; this is the developer's view with criterion's statistics.

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use memvirt::addr::PageSize;
use memvirt::sim::bench::floor;
use memvirt::sim::{run, ModeName, SimConfig};
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

fn throughput(c: &mut Criterion) {
    let cases = [
        ("seq-scan", scenario("seq-scan", &[("size", "16M"), ("passes", "4")])),
        ("uniform-random-16G", scenario("uniform-random", &[("size", "16G"), ("accesses", "200000")])),
        ("fork-storm", scenario("fork-storm", &[("forks", "30")])),
    ];
    let config = SimConfig::default();
    for (name, factory) in &cases {
        let mut group = c.benchmark_group(*name);
        group.sample_size(10);
        let accesses = floor(factory).map(|(n, _)| n).unwrap_or(1);
        group.throughput(Throughput::Elements(accesses));
        group.bench_function("floor", |b| b.iter(|| floor(factory).map(|(n, _)| n).unwrap_or(0)));
        for mode in [ModeName::Native, ModeName::Shadow, ModeName::Ept, ModeName::Npt] {
            group.bench_with_input(BenchmarkId::from_parameter(mode), &mode, |b, &mode| {
                b.iter(|| {
                    let mut workload = factory().expect("scenario");
                    run(mode, &config, workload.as_mut()).map(|r| r.stats.accesses).unwrap_or(0)
                });
            });
        }
        group.finish();
    }
}

/// Groups the benchmarks (a module, so the macro's undocumented function can be allowed).
mod group {
    #![allow(missing_docs)]
    use super::throughput;
    criterion::criterion_group!(benches, throughput);
}

criterion_main!(group::benches);
