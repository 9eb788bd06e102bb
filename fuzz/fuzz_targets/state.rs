#![no_main]
//! `state`: see `voipwall::fuzzing::state_files`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| voipwall::fuzzing::state_files(data));
