#![no_main]
//! `ringleader::fuzz::shard_runs` under libFuzzer.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringleader::fuzz::shard_runs(data));
