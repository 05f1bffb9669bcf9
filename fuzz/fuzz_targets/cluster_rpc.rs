#![no_main]
//! Every message of the cluster port (first byte: which), then the Raft batches and snapshots in them.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((which, rest)) = data.split_first() {
        netagent::fuzz::cluster_rpc(*which, rest);
    }
});
