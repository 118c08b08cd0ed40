//! Micro benchmark: the dtab work on a request's routing path.
//!
//! `parse` is what a request carrying `l5d-dtab` costs (or a config reload); `lookup` is one
//! rewrite step; `delegate` binds a path all the way to namers through a 20-dentry dtab.
//! Run with `cargo bench -p mesh-benches --bench dtab`.

use mesh_core::dtab::{BindError, Binder, Dtab, Path, delegate};

fn main() {
    divan::main();
}

/// A router dtab of 20 dentries: services under `/svc`, per-service overrides, weighted
/// canaries and fallbacks, as a Linkerd 1 config would have them.
fn dtab_text() -> String {
    let mut text = String::from("/svc => /#/fs;\n/host => /svc;\n");
    for i in 0..9 {
        text.push_str(&format!(
            "/svc/web{i} => 0.9 * /svc/web{i}-v1 & 0.1 * /svc/web{i}-v2 | /#/fs/fallback;\n"
        ));
        text.push_str(&format!("/svc/api{i} => /$/inet/127.0.0.1/80{i:02};\n"));
    }
    text
}

const PATH: &str = "/host/web7/users/42";

/// Binds `/#/fs/<name>` and every `/$/inet` address to a small number.
struct Namers;

impl Binder for Namers {
    type Bound = usize;

    fn bind_namer(&self, path: &Path) -> Result<Option<usize>, BindError> {
        Ok((path.label_str(1) == Some("fs")).then(|| path.len()))
    }

    fn bind_inet(&self, host: &str, port: u16, _: &Path) -> Result<usize, BindError> {
        Ok(host.len() + usize::from(port))
    }
}

#[divan::bench]
fn parse_20_dentries(b: divan::Bencher) {
    let text = dtab_text();
    b.bench(|| Dtab::read(divan::black_box(&text)).map(|d| d.len()));
}

#[divan::bench]
fn lookup(b: divan::Bencher) {
    let dtab = Dtab::read(&dtab_text()).unwrap_or_else(|e| panic!("dtab: {e}"));
    let path = Path::read("/svc/web7/users/42").unwrap_or_else(|e| panic!("path: {e}"));
    b.bench(|| dtab.lookup(divan::black_box(&path)));
}

#[divan::bench]
fn delegate_and_result(b: divan::Bencher) {
    let dtab = Dtab::read(&dtab_text()).unwrap_or_else(|e| panic!("dtab: {e}"));
    let path = Path::read(PATH).unwrap_or_else(|e| panic!("path: {e}"));
    b.bench(|| delegate(&dtab, divan::black_box(&path), &Namers).result());
}
