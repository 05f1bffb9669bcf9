#![no_main]
//! An API request body (first byte: which route), decoded and converted as its handler does.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((route, rest)) = data.split_first() {
        netagent::fuzz::api_body(*route, rest);
    }
});
