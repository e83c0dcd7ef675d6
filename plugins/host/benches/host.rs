//! Host overhead per record: identity and filter plugins, 1 KiB records, batches of 1, 100, 1000.
//! Criterion reports time per batch and records per second; ns per record = time / batch size.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use er_plugin_host::{ErrorPolicy, HostConfig, InRecord, OutBatch, PluginHost, PluginSpec};

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

fn bench(c: &mut Criterion) {
    let dir = er_plugin_host::build::build_examples().expect("build example plugins");
    let host = PluginHost::new(HostConfig {
        batch_deadline: Duration::from_secs(1),
        ..HostConfig::default()
    })
    .expect("host");
    let cases = [
        ("identity", "identity", vec![]),
        (
            "filter_header",
            "filter",
            vec![("condition".to_owned(), "header:temperature > 30".to_owned())],
        ),
        (
            "filter_json",
            "filter",
            vec![("condition".to_owned(), "temperature > 30".to_owned())],
        ),
    ];
    for (name, file, config) in cases {
        let mut group = c.benchmark_group(name);
        group
            .sample_size(20)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1));
        let spec = PluginSpec {
            path: dir.join(format!("{file}.wasm")),
            config,
        };
        let mut chain = host.load_chain(&[spec], ErrorPolicy::Stop).expect("load");
        for batch in [1usize, 100, 1000] {
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
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
