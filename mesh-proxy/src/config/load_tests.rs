//! Tests of loading and checking a configuration file: every refusal names the file, line,
//! key and value.

use super::*;

/// The invalid files every loader must reject: (text, key, line, a fragment of the value).
/// `meshctl check` reuses them through [`check_file`].
const INVALID: &[(&str, &str, usize, &str)] = &[
    ("[admin]\nlisten = \"nope\"\n", "admin.listen", 2, "nope"),
    (
        "[outbound]\nlisten = \"127.0.0.1:4140\"\ntarget = 80\n",
        "outbound.target",
        3,
        "80",
    ),
    (
        "[limits]\nidle_timeout = \"soon\"\n",
        "limits.idle_timeout",
        2,
        "soon",
    ),
    (
        "[limits]\nmax_request_headers = 0\n",
        "limits.max_request_headers",
        2,
        "0",
    ),
    (
        "[limits]\nmax_request_header_bytes = \"lots\"\n",
        "limits.max_request_header_bytes",
        2,
        "lots",
    ),
    (
        "[limits]\nmax_request_header_bytes = \"1KiB\"\n",
        "limits.max_request_header_bytes",
        2,
        "1KiB",
    ),
    (
        "[limits]\nconnect_timeout = \"0s\"\n",
        "limits.connect_timeout",
        2,
        "0s",
    ),
    (
        "[limits]\nhttp2_max_concurrent_streams = 0\n",
        "limits.http2_max_concurrent_streams",
        2,
        "0",
    ),
    (
        "[limits]\nhttp2_max_concurrent_streams = -1\n",
        "limits.http2_max_concurrent_streams",
        2,
        "-1",
    ),
    (
        "[inbound]\nopaque_ports = [25, 70000]\n",
        "inbound.opaque_ports[1]",
        2,
        "70000",
    ),
    ("[shutdown]\ngrace = 30\n", "shutdown.grace", 2, "30"),
    (
        "[limits]\ndetect_timeout = \"500000000000y\"\n",
        "limits.detect_timeout",
        2,
        "y",
    ),
    (
        "[limits]\ndetect_timeout = \"2m\"\n",
        "limits.detect_timeout",
        2,
        "2m",
    ),
    ("[shutdown]\ngrace = \"400d\"\n", "shutdown.grace", 2, "400"),
    (
        "[limits]\nreplay_memory = \"1KiB\"\n",
        "limits.replay_memory",
        2,
        "1KiB",
    ),
    (
        "[outbound]\nlisten = \"127.0.0.1:4140\"\ntarget = \"127.0.0.1:4140\"\n",
        "outbound.target",
        3,
        "127.0.0.1:4140",
    ),
];

fn err(text: &str) -> ConfigError {
    Config::from_toml("test.toml", text).expect_err("must be rejected")
}

#[test]
fn empty_file_is_the_default_sidecar() {
    let cfg = Config::from_toml("empty.toml", "").expect("valid");
    assert_eq!(cfg, Config::default());
    assert_eq!(cfg.outbound.listen, Some(super::super::OUTBOUND_LISTEN));
    assert_eq!(cfg.inbound.listen, Some(super::super::INBOUND_LISTEN));
}

#[test]
fn sample_config_is_valid() {
    let text = include_str!("../../../examples/config/sidecar.toml");
    Config::from_toml("sidecar.toml", text).expect("sample must load");
}

#[test]
fn partial_sections_keep_other_defaults() {
    let cfg =
        Config::from_toml("t.toml", "[inbound]\ntarget = \"127.0.0.1:8080\"\n").expect("valid");
    assert_eq!(cfg.inbound.listen, Some(super::super::INBOUND_LISTEN));
    assert_eq!(
        cfg.inbound.target,
        Some("127.0.0.1:8080".parse().expect("addr"))
    );
    assert!(cfg.inbound.opaque_ports.contains(&3306));
}

#[test]
fn invalid_configs_name_the_key_line_and_value() {
    for (text, key, line, value) in INVALID {
        let e = err(text);
        assert_eq!(e.key(), *key, "{text}: {e}");
        assert_eq!(e.line(), Some(*line), "{text}: {e}");
        assert!(e.value().is_some_and(|v| v.contains(value)), "{text}: {e}");
        let msg = e.to_string();
        assert!(msg.starts_with("test.toml:"), "{msg}");
        assert!(msg.contains(key), "{msg}");
    }
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    let e = err("[limits]\nheader_timeout = \"5s\"\n");
    assert_eq!(e.line(), Some(2));
    assert!(e.to_string().contains("header_timeout"), "{e}");
    let e = err("[nonsense]\n");
    assert!(e.to_string().contains("nonsense"), "{e}");
}

#[test]
fn each_listener_rejects_keys_it_does_not_have() {
    // Keys of the other direction (DESIGN.md §4: outbound `router`, inbound `policy`),
    // of another section, and typos: each is named with its line, never ignored.
    for (text, key, line) in [
        ("[inbound]\nrouter = \"default\"\n", "router", 2),
        (
            "[inbound]\ntarget = \"127.0.0.1:8080\"\nmax_request_headers = 10\n",
            "max_request_headers",
            3,
        ),
        (
            "[inbound]\nlisten_addr = \"0.0.0.0:4143\"\n",
            "listen_addr",
            2,
        ),
        ("[outbound]\npolicy = \"all-authenticated\"\n", "policy", 2),
    ] {
        let e = err(text);
        assert_eq!(e.line(), Some(line), "{text}: {e}");
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("test.toml:{line}:")), "{msg}");
        assert!(msg.contains(key), "{text}: {msg}");
        let section = if text.starts_with("[inbound]") {
            "inbound"
        } else {
            "outbound"
        };
        assert!(e.key().starts_with(section), "{text}: key {:?}", e.key());
    }
}

#[test]
fn listeners_default_per_direction() {
    let cfg = Config::from_toml("t.toml", "[outbound]\n[inbound]\n").expect("valid");
    assert_eq!(
        cfg.outbound.bind_addr(),
        Some(super::super::OUTBOUND_LISTEN)
    );
    assert_eq!(cfg.inbound.bind_addr(), Some(super::super::INBOUND_LISTEN));
    let cfg = Config::from_toml("t.toml", "[inbound]\nenabled = false\n").expect("valid");
    assert_eq!(cfg.inbound.bind_addr(), None);
}

/// A file under the system temp dir, removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("mesh-config-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write temp config");
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn check_file_accepts_the_sample() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config/sidecar.toml");
    check_file(&sample).expect("the sample config is valid");
}

#[test]
fn check_file_names_file_line_key_and_value() {
    let more: &[(&str, &str, usize, &str)] = &[
        (
            "[limits]\nheader_timeout = \"5s\"\n",
            "header_timeout",
            2,
            "",
        ),
        ("[inbound]\nrouter = \"default\"\n", "router", 2, ""),
        ("[admin]\nlisten = \n", "", 2, ""),
    ];
    for (i, (text, key, line, value)) in INVALID.iter().chain(more).enumerate() {
        let file = TempFile::new(&format!("check-{i}"), text);
        let e = check_file(&file.0).expect_err("must be rejected");
        let msg = e.to_string();
        let at = format!("{}:{line}:", file.0.display());
        assert!(
            msg.starts_with(&at),
            "{text}: {msg} does not start with {at}"
        );
        assert!(msg.contains(key), "{text}: {msg}");
        assert!(msg.contains(value), "{text}: {msg}");
    }
}

#[test]
fn check_file_names_a_missing_file() {
    let path = Path::new("/nonexistent/mesh/sidecar.toml");
    let e = check_file(path).expect_err("missing file");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/mesh/sidecar.toml: "),
        "{e}"
    );
    assert!(e.reason().contains("cannot read"), "{e}");
}

#[test]
fn syntax_errors_have_a_line() {
    let e = err("[admin]\nlisten = \n");
    assert_eq!(e.line(), Some(2), "{e}");
}

#[test]
fn duplicate_listen_addresses_are_rejected() {
    let e =
        err("[outbound]\nlisten = \"127.0.0.1:5000\"\n[inbound]\nlisten = \"127.0.0.1:5000\"\n");
    assert_eq!(e.key(), "inbound.listen");
    assert_eq!(e.line(), Some(4));
}
