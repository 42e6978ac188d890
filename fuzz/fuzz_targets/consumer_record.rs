//! Fuzz target `consumer_record`: see `checks::consumer_record` for the property checked.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::consumer_record(data));
