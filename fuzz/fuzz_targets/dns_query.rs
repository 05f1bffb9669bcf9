#![no_main]
//! A message to the embedded resolver over UDP and TCP (and a TCP stream of messages).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dns::fuzz::query(data);
    dns::fuzz::tcp_stream(data);
});
