//! The thin mesh binaries live in this package as `[[example]]` targets: `sidecar` and `demo`.
