#![no_main]
//! `ringleader::fuzz::frame_stream` under libFuzzer.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringleader::fuzz::frame_stream(data));
