#![no_main]
//! `request`: see `voipwall::fuzzing::control_request`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| voipwall::fuzzing::control_request(data));
