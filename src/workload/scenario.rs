//! Builtin synthetic scenarios. Each is seeded and sized by `key=value` parameters with
//! defaults that run in about a second.

use std::collections::{BTreeMap, VecDeque};

use crate::addr::{Gva, PageSize};
use crate::guest::{Prot, Region};
use crate::paging::AccessKind;
use crate::workload::programs;
use crate::workload::rng::Rng;
use crate::workload::{Op, Workload, WorkloadError};

/// Where scenarios place their buffer in the user half.
const BUFFER_BASE: u64 = 0x1000_0000;
/// The process every single-process scenario runs as.
const PID: u32 = 1;

/// `--param key=value` pairs.
pub type Params = BTreeMap<String, String>;

/// How a scenario is built.
pub struct ScenarioSpec {
    /// The name `--workload` takes.
    pub name: &'static str,
    /// One line for `memvirt workloads`.
    pub description: &'static str,
    /// Parameters with their defaults, for `memvirt workloads` and error messages.
    pub params: &'static [(&'static str, &'static str)],
    build: Builder,
}

/// Builds a scenario from its parameters.
type Builder = fn(&mut ParamReader, &ScenarioContext) -> Result<Box<dyn Workload>, WorkloadError>;

/// What every scenario is given besides its parameters.
#[derive(Clone, Copy, Debug)]
pub struct ScenarioContext {
    /// The seed of its random choices.
    pub seed: u64,
    /// The page size its regions ask for.
    pub page_size: PageSize,
}

/// Every builtin scenario.
pub const SCENARIOS: &[ScenarioSpec] = &[
    ScenarioSpec {
        name: "seq-scan",
        description: "sequential passes over one buffer: few TLB misses, each page faulted in once",
        params: &[("size", "64M"), ("stride", "64"), ("passes", "2")],
        build: build_seq_scan,
    },
    ScenarioSpec {
        name: "gups",
        description: "random 8-byte updates over a large table after initialising it: TLB-miss heavy, stable tables",
        params: &[("size", "1G"), ("updates", "1000000")],
        build: build_gups,
    },
    ScenarioSpec {
        name: "fork-storm",
        description: "a shell running short commands: fork, copy-on-write, exec, exit: page-table-update heavy",
        params: &[("forks", "200"), ("work", "2000")],
        build: build_fork_storm,
    },
    ScenarioSpec {
        name: "multi-process",
        description: "several processes with their own buffers, switching every quantum of accesses",
        params: &[("processes", "8"), ("size", "64M"), ("accesses", "1000000"), ("quantum", "2000")],
        build: build_multi_process,
    },
    ScenarioSpec {
        name: "mmap-churn",
        description: "an allocator mapping, touching, protecting and returning memory",
        params: &[("ops", "3000"), ("live", "32"), ("max-pages", "64")],
        build: build_mmap_churn,
    },
    ScenarioSpec {
        name: "mixed",
        description: "the default: a fork storm and random updates over a large table, as two concurrent processes' worth of work",
        params: &[("forks", "100"), ("size", "512M"), ("updates", "300000")],
        build: build_mixed,
    },
    ScenarioSpec {
        name: "hostile",
        description: "a guest writing its tables arbitrarily: reserved bits, loops, aliases, MMIO tables, garbage CR3",
        params: &[],
        build: build_hostile,
    },
    ScenarioSpec {
        name: "uniform-random",
        description: "uniformly random 8-byte reads and writes over a large buffer: TLB-miss heavy (populate=yes: every page faulted in first, uncounted)",
        params: &[("size", "1G"), ("accesses", "1000000"), ("write-percent", "50"), ("populate", "no")],
        build: build_uniform_random,
    },
    ScenarioSpec {
        name: "pointer-chase",
        description:
            "dependent loads following a random cycle through a buffer: every load a likely TLB miss",
        params: &[("size", "256M"), ("accesses", "1000000"), ("populate", "no")],
        build: build_pointer_chase,
    },
    ScenarioSpec {
        name: "copy-to-user",
        description: "the kernel writing a forked child's copy-on-write buffer for it (read() into it), then the child reading it: shows the guest's CR0.WP (--guest-cr0-wp off)",
        params: &[("pages", "64"), ("rounds", "1000")],
        build: build_copy_to_user,
    },
];

/// The scenario named `name`.
pub fn find(name: &str) -> Option<&'static ScenarioSpec> {
    SCENARIOS.iter().find(|spec| spec.name == name)
}

/// Builds scenario `name` from `params`.
pub fn build(
    name: &str,
    params: &Params,
    context: &ScenarioContext,
) -> Result<Box<dyn Workload>, WorkloadError> {
    let spec = find(name).ok_or_else(|| WorkloadError::UnknownScenario(name.to_string()))?;
    let mut reader = ParamReader { spec, given: params.clone() };
    let workload = (spec.build)(&mut reader, context)?;
    reader.finish()?;
    Ok(workload)
}

/// Reads a scenario's parameters, falling back to its defaults.
pub struct ParamReader {
    spec: &'static ScenarioSpec,
    given: Params,
}

impl ParamReader {
    fn error(&self, message: String) -> WorkloadError {
        WorkloadError::BadParam { scenario: self.spec.name, message }
    }

    fn raw(&mut self, key: &str) -> String {
        let default = self.spec.params.iter().find(|(name, _)| *name == key).map(|(_, value)| *value);
        self.given.remove(key).unwrap_or_else(|| default.unwrap_or_default().to_string())
    }

    /// A count or byte size; accepts k/m/g suffixes (powers of 1024).
    fn size(&mut self, key: &str, min: u64) -> Result<u64, WorkloadError> {
        let text = self.raw(key);
        let value = parse_size(&text).ok_or_else(|| {
            self.error(format!("{key}={text}: expected a whole number with an optional k, m or g suffix"))
        })?;
        if value < min {
            return Err(self.error(format!("{key}={text}: must be at least {min}")));
        }
        Ok(value)
    }

    /// `yes` or `no`.
    fn flag(&mut self, key: &str) -> Result<bool, WorkloadError> {
        match self.raw(key).as_str() {
            "yes" => Ok(true),
            "no" => Ok(false),
            text => Err(self.error(format!("{key}={text}: expected yes or no"))),
        }
    }

    fn finish(self) -> Result<(), WorkloadError> {
        if let Some(key) = self.given.keys().next() {
            let known: Vec<&str> = self.spec.params.iter().map(|(name, _)| *name).collect();
            let takes = if known.is_empty() {
                "it takes none".to_string()
            } else {
                format!("it takes {}", known.join(", "))
            };
            return Err(self.error(format!("unknown parameter '{key}'; {takes}")));
        }
        Ok(())
    }
}

/// Parses `123`, `4k`, `64M`, `1g`.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, shift) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let value: u64 = digits.parse().ok()?;
    value.checked_mul(1u64 << shift)
}

/// How a single-buffer scenario picks its next offset.
enum Pattern {
    Sequential {
        offset: u64,
        stride: u64,
    },
    Random {
        rng: Rng,
        write_percent: u64,
    },
    /// A full-period linear congruential sequence over `2^bits` element indices, skipping
    /// indices past the buffer: a random cycle through every element, with no table.
    Chase {
        index: u64,
        mask: u64,
        elements: u64,
    },
}

/// One process, one buffer, a stream of accesses into it.
struct BufferScenario {
    prelude: VecDeque<Op>,
    /// The writes before measuring starts, with `populate`.
    populating: Option<programs::Populate>,
    size: u64,
    remaining: u64,
    pattern: Pattern,
}

impl BufferScenario {
    /// With `populate`, every page of the buffer is written once first, as a program
    /// initialises its data, and the counters start with the pattern's accesses.
    fn new(size: u64, accesses: u64, pattern: Pattern, context: &ScenarioContext, populate: bool) -> Self {
        let region = Region {
            start: Gva::new_truncate(BUFFER_BASE),
            len: programs::whole_pages(size),
            prot: Prot::RW,
            user: true,
            page_size: context.page_size,
        };
        let prelude = VecDeque::from([Op::Spawn { pid: PID, anywhere: false }, Op::Map { pid: PID, region }]);
        let populating = populate.then(|| programs::Populate::new(PID, BUFFER_BASE, size));
        Self { prelude, populating, size, remaining: accesses, pattern }
    }
}

impl Workload for BufferScenario {
    fn next_op(&mut self) -> Result<Option<Op>, WorkloadError> {
        if let Some(op) = self.prelude.pop_front() {
            return Ok(Some(op));
        }
        if let Some(op) = self.populating.as_mut().and_then(programs::Populate::next_op) {
            return Ok(Some(op));
        }
        if self.remaining == 0 {
            return Ok(None);
        }
        self.remaining -= 1;
        let (offset, kind) = match &mut self.pattern {
            Pattern::Sequential { offset, stride } => {
                let at = *offset;
                *offset = (*offset + *stride) % self.size;
                (at, AccessKind::Read)
            }
            Pattern::Random { rng, write_percent } => {
                let at = rng.below(self.size / 8) * 8;
                let kind = if rng.below(100) < *write_percent { AccessKind::Write } else { AccessKind::Read };
                (at, kind)
            }
            Pattern::Chase { index, mask, elements } => {
                loop {
                    // Hull-Dobell: c odd and a - 1 divisible by 4 give a full period mod 2^k.
                    *index =
                        index.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407)
                            & *mask;
                    if *index < *elements {
                        break;
                    }
                }
                (*index * 64, AccessKind::Read)
            }
        };
        let va = Gva::new_truncate(BUFFER_BASE + offset);
        Ok(Some(Op::Access { pid: PID, va, kind, size: 8 }))
    }
}

fn build_copy_to_user(
    params: &mut ParamReader,
    context: &ScenarioContext,
) -> Result<Box<dyn Workload>, WorkloadError> {
    let pages = params.size("pages", 1)?;
    let pages = Some(pages)
        .filter(|p| *p <= 1 << 20)
        .ok_or_else(|| params.error(format!("pages={pages}: at most 1m (4 GiB)")))?;
    let rounds = params.size("rounds", 1)?;
    Ok(Box::new(crate::workload::copy_to_user::CopyToUser::new(pages, rounds, context.page_size)))
}

fn build_gups(
    params: &mut ParamReader,
    context: &ScenarioContext,
) -> Result<Box<dyn Workload>, WorkloadError> {
    let size = params.size("size", 4096)?;
    let updates = params.size("updates", 1)?;
    let state = programs::Gups::new(context.seed, size, updates, context.page_size);
    Ok(Box::new(programs::Program::new(state, programs::steps::gups)))
}

fn build_fork_storm(
    params: &mut ParamReader,
    context: &ScenarioContext,
) -> Result<Box<dyn Workload>, WorkloadError> {
    let forks = params.size("forks", 1)?;
    let work = params.size("work", 0)?;
    let state = programs::ForkStorm::new(context.seed, forks, work, context.page_size);
    Ok(Box::new(programs::Program::new(state, programs::steps::fork_storm)))
}

fn build_multi_process(
    params: &mut ParamReader,
    context: &ScenarioContext,
) -> Result<Box<dyn Workload>, WorkloadError> {
    let processes = params.size("processes", 1)?;
    let processes = u32::try_from(processes)
        .ok()
        .filter(|n| *n <= 4000)
        .ok_or_else(|| params.error(format!("processes={processes}: at most 4000")))?;
    let size = params.size("size", 4096)?;
    let accesses = params.size("accesses", 1)?;
    let quantum = params.size("quantum", 1)?;
    let state =
        programs::MultiProcess::new(context.seed, processes, size, accesses, quantum, context.page_size);
    Ok(Box::new(programs::Program::new(state, programs::steps::multi_process)))
}

fn build_mmap_churn(
    params: &mut ParamReader,
    context: &ScenarioContext,
) -> Result<Box<dyn Workload>, WorkloadError> {
    let ops = params.size("ops", 1)?;
    let live = usize::try_from(params.size("live", 1)?).unwrap_or(usize::MAX);
    let max_pages = params.size("max-pages", 1)?;
    // Each mapping is touched page by page at once: bound it (1 << 20 pages is 4 GiB).
    if max_pages > 1 << 20 {
        return Err(params.error(format!("max-pages={max_pages}: at most 1048576")));
    }
    let state = programs::MmapChurn::new(context.seed, ops, live, max_pages, context.page_size);
    Ok(Box::new(programs::Program::new(state, programs::steps::mmap_churn)))
}

fn build_mixed(
    params: &mut ParamReader,
    context: &ScenarioContext,
) -> Result<Box<dyn Workload>, WorkloadError> {
    let forks = params.size("forks", 1)?;
    let size = params.size("size", 4096)?;
    let updates = params.size("updates", 1)?;
    let storm = programs::ForkStorm::new(context.seed, forks, 2000, context.page_size);
    let table = programs::Gups::new(context.seed ^ 0x9e37, size, updates, context.page_size);
    Ok(Box::new(crate::workload::scheduler::Interleave::new(
        vec![
            Box::new(programs::Program::new(storm, programs::steps::fork_storm)),
            Box::new(crate::workload::scheduler::Renumber::new(
                Box::new(programs::Program::new(table, programs::steps::gups)),
                1_000_000,
                true,
            )),
        ],
        5000,
    )))
}

fn build_hostile(_: &mut ParamReader, _: &ScenarioContext) -> Result<Box<dyn Workload>, WorkloadError> {
    Ok(Box::new(programs::Program::new(programs::Hostile::new(), programs::hostile_step)))
}

fn build_seq_scan(
    params: &mut ParamReader,
    context: &ScenarioContext,
) -> Result<Box<dyn Workload>, WorkloadError> {
    let size = params.size("size", 4096)?;
    let stride = params.size("stride", 1)?;
    let passes = params.size("passes", 1)?;
    let per_pass = size.div_ceil(stride);
    let pattern = Pattern::Sequential { offset: 0, stride };
    Ok(Box::new(BufferScenario::new(size, per_pass.saturating_mul(passes), pattern, context, false)))
}

fn build_uniform_random(
    params: &mut ParamReader,
    context: &ScenarioContext,
) -> Result<Box<dyn Workload>, WorkloadError> {
    let size = params.size("size", 4096)?;
    let accesses = params.size("accesses", 1)?;
    let write_percent = params.size("write-percent", 0)?;
    if write_percent > 100 {
        return Err(params.error(format!("write-percent={write_percent}: must be 0 to 100")));
    }
    let populate = params.flag("populate")?;
    let pattern = Pattern::Random { rng: Rng::new(context.seed), write_percent };
    Ok(Box::new(BufferScenario::new(size, accesses, pattern, context, populate)))
}

fn build_pointer_chase(
    params: &mut ParamReader,
    context: &ScenarioContext,
) -> Result<Box<dyn Workload>, WorkloadError> {
    let size = params.size("size", 4096)?;
    let accesses = params.size("accesses", 1)?;
    let elements = size / 64;
    let mask = elements.next_power_of_two() - 1;
    let start = Rng::new(context.seed).below(elements);
    let populate = params.flag("populate")?;
    let pattern = Pattern::Chase { index: start, mask, elements };
    Ok(Box::new(BufferScenario::new(size, accesses, pattern, context, populate)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> ScenarioContext {
        ScenarioContext { seed: 3, page_size: PageSize::Size4K }
    }

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    fn offsets(name: &str, pairs: &[(&str, &str)]) -> Vec<u64> {
        let mut workload = build(name, &params(pairs), &context()).expect("builds");
        let mut out = Vec::new();
        while let Some(op) = workload.next_op().expect("ok") {
            if let Op::Access { va, .. } = op {
                out.push(va.as_u64() - BUFFER_BASE);
            }
        }
        out
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999g"), None);
    }

    #[test]
    fn seq_scan_walks_in_order_and_wraps() {
        assert_eq!(
            offsets("seq-scan", &[("size", "16k"), ("stride", "4k"), ("passes", "2")]),
            vec![0, 4096, 8192, 12288, 0, 4096, 8192, 12288]
        );
    }

    #[test]
    fn pointer_chase_visits_every_element_once_per_cycle() {
        let mut seen = offsets("pointer-chase", &[("size", "192k"), ("accesses", "3072")]);
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 3072);
        assert!(seen.iter().all(|offset| offset % 64 == 0 && *offset < 192 * 1024));
    }

    #[test]
    fn populating_writes_every_page_once_before_measuring_starts() {
        let plain = offsets("uniform-random", &[("size", "10k"), ("accesses", "3")]);
        let populated = params(&[("size", "10k"), ("accesses", "3"), ("populate", "yes")]);
        let mut workload = build("uniform-random", &populated, &context()).expect("builds");
        let mut ops = Vec::new();
        while let Some(op) = workload.next_op().expect("ok") {
            ops.push(op);
        }
        let write = |offset: u64| Op::Access {
            pid: PID,
            va: Gva::new_truncate(BUFFER_BASE + offset),
            kind: AccessKind::Write,
            size: 8,
        };
        // Spawn and map, a write to each of the three pages 10 KiB spans, the mark, then the
        // same random accesses as without populating.
        assert_eq!(&ops[2..6], &[write(0), write(4096), write(8192), Op::StartMeasuring]);
        let after: Vec<u64> = ops[6..]
            .iter()
            .map(|op| match op {
                Op::Access { va, .. } => va.as_u64() - BUFFER_BASE,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(after, plain);
        let error =
            build("pointer-chase", &params(&[("populate", "maybe")]), &context()).err().expect("rejected");
        assert!(error.to_string().contains("populate=maybe: expected yes or no"), "{error}");
    }

    #[test]
    fn random_is_seeded_and_bad_params_are_named() {
        let a = offsets("uniform-random", &[("accesses", "100")]);
        assert_eq!(a, offsets("uniform-random", &[("accesses", "100")]));
        let error = build("seq-scan", &params(&[("bogus", "1")]), &context()).err().expect("rejected");
        assert!(error.to_string().contains("unknown parameter 'bogus'"), "{error}");
        assert!(build("nope", &Params::new(), &context()).is_err());
    }
}
