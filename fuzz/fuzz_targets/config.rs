//! Any text given as a config file is either accepted or rejected with an error; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mesh_proxy::config::Config::from_toml("fuzz.toml", text).map(|c| c.validate());
    }
});
