#![no_main]
//! `ringleader::fuzz::connect_string` under libFuzzer.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringleader::fuzz::connect_string(data));
