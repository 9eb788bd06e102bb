#![no_main]
//! `sdp`: see `voipwall::fuzzing::call_signaling`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| voipwall::fuzzing::call_signaling(data));
