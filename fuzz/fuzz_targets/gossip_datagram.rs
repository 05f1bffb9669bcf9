#![no_main]
//! A UDP datagram on the gossip port: envelope, replay window, reassembly, message, SWIM packet.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gossip::fuzz::datagram(data);
});
