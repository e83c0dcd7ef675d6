//! Host overhead per record: identity and filter plugins, 1 KiB records, batches of 1, 100, 1000;
//! the Python and JavaScript filters (plugins/python, plugins/js) against the Rust one, batches of
//! 100 and 1000. Before each plugin's batches: its component size and memory after `init`
//! (printed), and the CPU time of a fresh instance with `init` (group `<name>_instantiate`).
//!
//! Measured in CPU time of the benchmarking thread (which also runs the plugin), not wall time:
//! on a shared 2-core box, wall time mostly measures the other processes. Criterion's `time` is
//! CPU ns per batch; its `thrpt` line is CPU ns per record.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use er_plugin_host::build::{Language, build_language_examples};
use er_plugin_host::{ErrorPolicy, HostConfig, InRecord, OutBatch, PluginHost, PluginSpec};
use rustix::time::{ClockId, clock_gettime};

/// CPU time of the calling thread.
struct ThreadCpu;

fn thread_cpu_ns() -> u64 {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuNs
    }
}

/// Batch times in CPU ns; "throughput" as CPU ns per record.
struct CpuNs;

impl ValueFormatter for CpuNs {
    fn scale_values(&self, _typical: f64, _values: &mut [f64]) -> &'static str {
        "ns cpu"
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match t {
            Throughput::Elements(n) => *n,
            _ => 1,
        };
        for v in values {
            *v /= n as f64;
        }
        "ns cpu/record"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns cpu"
    }
}

type Header<'a> = (&'a str, Option<&'a [u8]>);

struct Rec {
    value: Vec<u8>,
    temp: Vec<u8>,
}

/// 1 KiB JSON values; every other record is hot (temperature 35), so the filter keeps half.
fn records(n: usize) -> Vec<Rec> {
    (0..n)
        .map(|i| {
            let t = if i % 2 == 0 { 35 } else { 25 };
            let mut value =
                format!(r#"{{"temperature":{t},"site":"berlin-01","pad":""#).into_bytes();
            value.resize(1024 - 2, b'x');
            value.extend_from_slice(b"\"}");
            Rec {
                value,
                temp: t.to_string().into_bytes(),
            }
        })
        .collect()
}

/// One plugin to measure: a group name, its file and settings, and the batch sizes to run.
struct Case {
    name: String,
    path: PathBuf,
    config: Vec<(String, String)>,
    batches: &'static [usize],
}

fn filter_json() -> Vec<(String, String)> {
    vec![("condition".to_owned(), "temperature > 30".to_owned())]
}

/// The Rust cases, then the Python and JavaScript filters where this machine can build them.
fn cases() -> Vec<Case> {
    let dir = er_plugin_host::build::build_examples().expect("build example plugins");
    let rust = |name: &str, file: &str, config: Vec<(String, String)>| Case {
        name: name.to_owned(),
        path: dir.join(format!("{file}.wasm")),
        config,
        batches: &[1, 100, 1000],
    };
    let mut cases = vec![
        rust("identity", "identity", vec![]),
        rust(
            "filter_header",
            "filter",
            vec![("condition".to_owned(), "header:temperature > 30".to_owned())],
        ),
        rust("filter_json", "filter", filter_json()),
    ];
    for language in Language::ALL {
        match build_language_examples(language) {
            Ok(dir) => cases.push(Case {
                name: format!("filter_json_{}", language.to_string().to_lowercase()),
                path: dir.join("filter.wasm"),
                config: filter_json(),
                // A batch of one costs what the Rust filter's does plus one interpreted call;
                // the interesting figure is the per-record cost inside a batch.
                batches: &[100, 1000],
            }),
            Err(e) => eprintln!("skipping the {language} filter: {e}"),
        }
    }
    cases
}

fn bench(c: &mut Criterion<ThreadCpu>) {
    let host = PluginHost::new(HostConfig {
        batch_deadline: Duration::from_secs(1),
        // SpiderMonkey collects the batches' garbage late: a JavaScript instance settles at
        // 70-130 MiB under sustained batches, above the default 64 MiB cap (see plugins/README.md).
        memory_limit_bytes: 256 << 20,
        ..HostConfig::default()
    })
    .expect("host");
    for case in cases() {
        let spec = PluginSpec {
            path: case.path.clone(),
            config: case.config.clone(),
        };
        footprint(c, &host, &case.name, &spec);
        let mut group = c.benchmark_group(&case.name);
        group
            .sample_size(20)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1));
        let mut chain = host.load_chain(&[spec], ErrorPolicy::Stop).expect("load");
        for &batch in case.batches {
            let recs = records(batch);
            let headers: Vec<[Header<'_>; 1]> = recs
                .iter()
                .map(|r| [("temperature", Some(&r.temp[..]))])
                .collect();
            let input: Vec<InRecord<'_>> = recs
                .iter()
                .zip(&headers)
                .enumerate()
                .map(|(i, (r, h))| InRecord {
                    topic: "sensors",
                    partition: 0,
                    offset: i as i64,
                    timestamp: 0,
                    key: None,
                    value: Some(&r.value),
                    headers: h,
                })
                .collect();
            let mut out = OutBatch::new();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new("batch", batch), &input, |b, input| {
                b.iter(|| {
                    chain
                        .process_into(black_box(input), &mut out)
                        .expect("process");
                    black_box(out.len())
                })
            });
        }
        // What a running instance holds after the batches above.
        let stats = &chain.stats()[0];
        eprintln!(
            "{}: memory after {} records: {:.1} MiB",
            case.name,
            stats.records_in,
            stats.memory_bytes as f64 / f64::from(1 << 20)
        );
        group.finish();
    }
}

/// The plugin's size, its first load (compiling it: wall time, the compiler uses every core)
/// and its memory right after `init`, printed; then the CPU time of a fresh instance
/// (instantiate and `init` of the compiled component, as after a trap or for another route) as
/// the group `<name>_instantiate`.
fn footprint(c: &mut Criterion<ThreadCpu>, host: &PluginHost, name: &str, spec: &PluginSpec) {
    let size = std::fs::metadata(&spec.path).map_or(0, |m| m.len());
    // A host of its own, whose compiled-code memo is empty, so this load compiles.
    let fresh = PluginHost::new(host.config().clone()).expect("host");
    let started = std::time::Instant::now();
    let chain = fresh
        .load_chain(std::slice::from_ref(spec), ErrorPolicy::Stop)
        .expect("load");
    eprintln!(
        "{name}: component {:.2} MiB, first load (compile) {:.2} s wall, memory after init {:.1} MiB",
        size as f64 / f64::from(1 << 20),
        started.elapsed().as_secs_f64(),
        chain.stats()[0].memory_bytes as f64 / f64::from(1 << 20)
    );
    drop((chain, fresh));
    let mut group = c.benchmark_group(format!("{name}_instantiate"));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    group.bench_function("instantiate_and_init", |b| {
        b.iter(|| {
            host.load_chain(std::slice::from_ref(spec), ErrorPolicy::Stop)
                .expect("load")
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench
}
criterion_main!(benches);
