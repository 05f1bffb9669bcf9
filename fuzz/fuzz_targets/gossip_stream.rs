#![no_main]
//! A TCP stream on the gossip port: framing, then each frame as a datagram.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gossip::fuzz::stream(data);
});
