#![no_main]
//! Ca.Join on the cluster port (no client certificate needed): message, token, CSR.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    netagent::fuzz::join_request(data);
});
