#![no_main]
//! `ringleader::fuzz::certificate` under libFuzzer.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringleader::fuzz::certificate(data));
