#![no_main]
//! `policy`: see `voipwall::fuzzing::policy_file`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| voipwall::fuzzing::policy_file(data));
