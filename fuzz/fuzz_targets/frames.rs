#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| glance::fuzz::frames(data));
