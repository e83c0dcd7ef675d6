//! Fuzzes the hub's session state machine with structured frame sequences and driver calls
//! (`er_protocol::fuzzing::hub_session`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| er_protocol::fuzzing::hub_session(data));
