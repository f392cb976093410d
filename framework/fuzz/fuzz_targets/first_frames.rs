#![no_main]
//! `ringleader::fuzz::first_frames` under libFuzzer.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringleader::fuzz::first_frames(data));
