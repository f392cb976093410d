#![no_main]
//! `wordcount::fuzz::tokenizer` under libFuzzer.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wordcount::fuzz::tokenizer(data));
