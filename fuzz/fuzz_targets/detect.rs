//! Protocol classification must never panic and must be monotone: once a prefix of the
//! input is decided, the whole input gets the same protocol family.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::detect::{Classification, classify};

fuzz_target!(|data: &[u8]| {
    let whole = classify(data);
    for cut in [1, 5, 24, 64, 512] {
        if cut < data.len() {
            if let Classification::Done(p) = classify(&data[..cut]) {
                if let Classification::Done(q) = &whole {
                    assert_eq!(std::mem::discriminant(&p), std::mem::discriminant(q));
                }
            }
        }
    }
});
