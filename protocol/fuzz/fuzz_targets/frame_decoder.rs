//! Fuzzes the frame decoder and batch record decoding with arbitrary bytes
//! (`er_protocol::fuzzing::frame_decoder`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| er_protocol::fuzzing::frame_decoder(data));
