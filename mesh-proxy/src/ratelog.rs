//! Rate-limited log lines (the limiter lives in mesh-core, shared with its layers).

pub(crate) use mesh_core::log_limit::LogLimit;
