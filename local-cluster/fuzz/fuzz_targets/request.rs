//! cargo-fuzz entry for the request path; the logic is in `../request_path.rs`.
#![no_main]

#[path = "../request_path.rs"]
mod request_path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| request_path::exercise(data));
