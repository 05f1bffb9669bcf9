#![no_main]
//! An upstream's answer to a forwarded query: checked, made to fit a UDP client.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dns::fuzz::upstream_answer(data);
});
