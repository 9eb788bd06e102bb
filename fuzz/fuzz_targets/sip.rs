#![no_main]
//! `sip`: see `voipwall::fuzzing::sip_message`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| voipwall::fuzzing::sip_message(data));
