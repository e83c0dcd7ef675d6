//! Short runs of the fuzz entry points (`er_protocol::fuzzing`) on stable: random inputs and a
//! few hand-made ones, every time the suite runs. The long runs are cargo-fuzz's
//! (`scripts/fuzz.sh`, results in SECURITY.md).

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn the_frame_decoder_survives_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        er_protocol::fuzzing::frame_decoder(&data);
    }

    #[test]
    fn the_hub_session_survives_any_frame_sequence(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
        er_protocol::fuzzing::hub_session(&data);
    }
}

/// A program that says hello, is welcomed, sends batches and gets them acked: the fuzzer's
/// start into the deep states.
#[test]
fn a_well_formed_session_program_runs() {
    let mut p = vec![0u8, 1, 3, 0, 0, 0, 0]; // hello at the protocol version
    p.extend([0, 9, 1, 0, 0]); // welcome, one position
    for seq in 0..4u8 {
        // batch on "orders"/0 of its own stream
        p.extend([0, 2, 1, 2, 0, 10, seq, 1, 10, 5, 0, 0, 0, 0, 1]);
        p.extend([0, 10, seq, 1]); // ack it
    }
    er_protocol::fuzzing::hub_session(&p);
}

/// Inputs the long runs found crashing, kept so they stay fixed (`protocol/fuzz/regressions`).
#[test]
fn inputs_that_once_crashed_run_clean() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/regressions");
    type Target = fn(&[u8]);
    let targets: [(&str, Target); 2] = [
        ("frame_decoder", er_protocol::fuzzing::frame_decoder),
        ("hub_session", er_protocol::fuzzing::hub_session),
    ];
    for (name, run) in targets {
        let Ok(dir) = std::fs::read_dir(format!("{root}/{name}")) else {
            continue;
        };
        for entry in dir {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            eprintln!("{name}: {}", path.display());
            run(&data);
        }
    }
}
