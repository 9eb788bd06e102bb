#![no_main]
//! `cidr_file`: see `voipwall::fuzzing::cidr_file`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| voipwall::fuzzing::cidr_file(data));
