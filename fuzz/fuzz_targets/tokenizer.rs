#![no_main]
libfuzzer_sys::fuzz_target!(
    init: glance::fuzz::tolerate_guarded_panics(),
    |data: &[u8]| glance::fuzz::tokenizer(data)
);
