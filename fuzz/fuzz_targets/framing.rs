//! The HTTP/1 head scanner never panics, and its verdict does not depend on how the head
//! was split across reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::framing::HeadScanner;

fuzz_target!(|data: &[u8]| {
    let mut whole = HeadScanner::default();
    whole.feed(data);
    for cut in [1usize, 2, 7, 31, 32, 33, 100] {
        if cut >= data.len() {
            break;
        }
        let mut split = HeadScanner::default();
        for chunk in data.chunks(cut) {
            split.feed(chunk);
        }
        assert_eq!(split.verdict(), whole.verdict(), "split every {cut} bytes");
        assert_eq!(split.is_done(), whole.is_done());
    }
});
