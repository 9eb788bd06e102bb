#![no_main]
//! `lapi`: see `voipwall::fuzzing::lapi_answer`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| voipwall::fuzzing::lapi_answer(data));
