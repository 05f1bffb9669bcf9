#![no_main]
//! An opened (authenticated) gossip message: codec (postcard, zstd), then the SWIM packet. What
//! any node holding the cluster's gossip key can make a peer decode; mutated datagrams rarely
//! get past AES-GCM, so gossip_datagram alone does not reach this.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    gossip::fuzz::message(data);
});
