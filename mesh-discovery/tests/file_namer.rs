//! The file namer against real files in a temporary directory, on real time: what an operator
//! editing endpoint files sees.
//!
//! Waits poll a condition with a bounded deadline; none sleeps to synchronise.

#![allow(clippy::expect_used)]

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_core::resolve::Resolution;
use mesh_core::target::{Endpoint, Labels};
use mesh_discovery::file_namer::FileNamer;
use mesh_discovery::namer::{BindError, Bound, Namer, Namers};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long any condition may take to become true (generous: several polls).
const DEADLINE: Duration = Duration::from_secs(2);

/// A fast poll for tests that are not about the default's timing.
const FAST: Duration = Duration::from_millis(50);

/// A unique directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("mesh-discovery-{test}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("endpoints")).expect("create temp dir");
        Self(dir)
    }

    /// The directory the namer serves.
    fn endpoints(&self) -> PathBuf {
        self.0.join("endpoints")
    }

    /// Replaces `name` atomically (write a hidden file, rename), as careful writers do, so a
    /// poll never sees half a file.
    fn write(&self, name: &str, text: &str) {
        let tmp = self.endpoints().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write endpoints file");
        std::fs::rename(&tmp, self.endpoints().join(name)).expect("rename endpoints file");
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.endpoints().join(name)).expect("remove endpoints file");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn namer(dir: &Path) -> FileNamer {
    FileNamer::new("fs".parse().expect("name"), dir).expect("file namer")
}

fn ep(port: u16) -> Endpoint {
    Endpoint::new(([127, 0, 0, 1], port).into())
}

fn set(ports: &[u16]) -> Resolution {
    Resolution::endpoints(ports.iter().map(|p| ep(*p)))
}

/// Waits until the resolution satisfies `pred`, at most `within`.
async fn wait_until(
    rx: &mut watch::Receiver<Resolution>,
    within: Duration,
    pred: impl FnMut(&Resolution) -> bool,
) -> Resolution {
    let found = match tokio::time::timeout(within, rx.wait_for(pred)).await {
        Ok(Ok(r)) => Some(r.clone()),
        Ok(Err(_)) => panic!("the namer dropped the name"),
        Err(_) => None,
    };
    found.unwrap_or_else(|| {
        panic!(
            "no matching resolution within {within:?}; now {:?}",
            *rx.borrow()
        )
    })
}

/// Waits until `cond` holds, at most [`DEADLINE`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn does_not_exist(r: &Resolution) -> Option<&str> {
    match r {
        Resolution::DoesNotExist(why) => Some(why),
        _ => None,
    }
}

#[tokio::test]
async fn binds_the_file_with_its_endpoints_and_residual() {
    let tmp = TempDir::new("initial");
    tmp.write(
        "hello",
        "# hello's replicas\n\
         127.0.0.1:8081\n\
         127.0.0.1:8082 weight=2 id=spiffe://td/ns/a/sa/b zone=b  # canary\n",
    );
    let fs = Arc::new(namer(&tmp.endpoints()));
    let mut namers = Namers::new();
    namers.insert(fs.clone());

    let bound = namers.bind_path("/#/fs/hello/v2/x").expect("binds");
    assert_eq!(bound.id, "/#/fs/hello");
    assert_eq!(bound.residual, ["v2", "x"]);
    // Answered when bind returns: no waiting for the first poll.
    let want = Resolution::endpoints([
        ep(8081),
        ep(8082)
            .with_weight(NonZeroU32::new(2).expect("2"))
            .with_identity("spiffe://td/ns/a/sa/b".parse().expect("id"))
            .with_labels(Labels::new([("zone", "b")])),
    ]);
    assert_eq!(*bound.resolution.borrow(), want);
    assert_eq!(fs.watched(), 1);
}

#[tokio::test]
async fn an_edit_is_applied_within_a_second_to_every_binding() {
    let tmp = TempDir::new("edit");
    tmp.write("hello", "127.0.0.1:8081\n");
    // The default poll interval: this is the promise to operators.
    let fs = namer(&tmp.endpoints());
    let mut first = fs.bind(&["hello"]).expect("binds").resolution;
    let mut second = fs.bind(&["hello", "v2"]).expect("binds again").resolution;
    assert_eq!(fs.watched(), 1, "the same name shares one watch");
    assert_eq!(*first.borrow(), set(&[8081]));

    tmp.write("hello", "127.0.0.1:8081\n127.0.0.1:8082\n");
    let edited = Instant::now();
    wait_until(&mut first, Duration::from_secs(1), |r| {
        *r == set(&[8081, 8082])
    })
    .await;
    assert!(edited.elapsed() < Duration::from_secs(1));
    wait_until(&mut second, Duration::from_millis(100), |r| {
        *r == set(&[8081, 8082])
    })
    .await;

    // A same-length edit (only the port changes) is seen too.
    tmp.write("hello", "127.0.0.1:8081\n127.0.0.1:8083\n");
    wait_until(&mut first, Duration::from_secs(1), |r| {
        *r == set(&[8081, 8083])
    })
    .await;
}

#[tokio::test]
async fn a_bad_edit_is_counted_once_and_keeps_the_last_good_set() {
    let tmp = TempDir::new("bad-edit");
    tmp.write("hello", "127.0.0.1:8081\n");
    tmp.write("other", "127.0.0.1:9001\n");
    let fs = namer(&tmp.endpoints()).with_poll_interval(FAST);
    let mut hello = fs.bind(&["hello"]).expect("binds").resolution;
    let mut other = fs.bind(&["other"]).expect("binds").resolution;
    assert_eq!(fs.errors(), 0);

    tmp.write("hello", "127.0.0.1:8081\n127.0.0.1:8082 weight=0\n");
    eventually("the bad edit is seen", || fs.errors() == 1).await;
    assert_eq!(
        *hello.borrow_and_update(),
        set(&[8081]),
        "last good set kept"
    );

    // Another name's edit being applied proves at least one more poll of every file went by:
    // the same bad content is neither counted (logged) again nor applied.
    tmp.write("other", "127.0.0.1:9002\n");
    wait_until(&mut other, DEADLINE, |r| *r == set(&[9002])).await;
    assert_eq!(fs.errors(), 1, "an invalid version is logged once");
    assert!(!hello.has_changed().expect("watched"), "nothing published");

    tmp.write("hello", "127.0.0.1:8082 weight=2\n");
    let want = Resolution::endpoints([ep(8082).with_weight(NonZeroU32::new(2).expect("2"))]);
    wait_until(&mut hello, DEADLINE, |r| *r == want).await;
}

#[tokio::test]
async fn an_invalid_file_without_a_good_set_does_not_exist_with_the_reason() {
    let tmp = TempDir::new("invalid-first");
    tmp.write("hello", "# header\n127.0.0.1:8081 weight=many\n");
    let fs = namer(&tmp.endpoints()).with_poll_interval(FAST);
    let mut rx = fs.bind(&["hello"]).expect("binds").resolution;
    let why = does_not_exist(&rx.borrow())
        .map(str::to_owned)
        .expect("does not exist");
    assert!(why.contains("hello is invalid at line 2"), "{why}");
    assert!(why.contains("invalid weight \"many\""), "{why}");
    assert_eq!(fs.errors(), 1);

    tmp.write("hello", "127.0.0.1:8081\n");
    wait_until(&mut rx, DEADLINE, |r| *r == set(&[8081])).await;
}

#[tokio::test]
async fn a_file_too_large_is_an_error_and_the_last_good_set_stays() {
    let tmp = TempDir::new("large");
    tmp.write("hello", "127.0.0.1:8081\n");
    let fs = namer(&tmp.endpoints()).with_poll_interval(FAST);
    tmp.write("other", "127.0.0.1:9001\n");
    let rx = fs.bind(&["hello"]).expect("binds").resolution;
    let mut other = fs.bind(&["other"]).expect("binds").resolution;

    // Valid lines (comments), just too many bytes.
    let big = format!("127.0.0.1:8082\n{}", "# padding\n".repeat(110_000));
    tmp.write("hello", &big);
    eventually("the large file is refused", || fs.errors() == 1).await;
    assert_eq!(*rx.borrow(), set(&[8081]));
    // A poll later (`other` updated), the same refusal is not counted (logged) again.
    tmp.write("other", "127.0.0.1:9002\n");
    wait_until(&mut other, DEADLINE, |r| *r == set(&[9002])).await;
    assert_eq!(fs.errors(), 1);

    let bound = fs.bind(&["hello"]).expect("binds").resolution;
    assert_eq!(
        *bound.borrow(),
        set(&[8081]),
        "a new binding gets the kept set"
    );
    tmp.write("big", &big);
    let why = does_not_exist(&fs.bind(&["big"]).expect("binds").resolution.borrow())
        .map(str::to_owned)
        .expect("too large, with no good set");
    assert!(why.contains("more than the limit of 1048576"), "{why}");
}

#[tokio::test]
async fn a_removed_file_does_not_exist_until_created_again() {
    let tmp = TempDir::new("removed");
    tmp.write("hello", "127.0.0.1:8081\n");
    let fs = namer(&tmp.endpoints()).with_poll_interval(FAST);
    let mut rx = fs.bind(&["hello"]).expect("binds").resolution;

    tmp.remove("hello");
    let gone = wait_until(&mut rx, DEADLINE, |r| does_not_exist(r).is_some()).await;
    let why = does_not_exist(&gone).expect("does not exist");
    let file = tmp.endpoints().join("hello");
    assert_eq!(why, format!("no file {}", file.display()));

    tmp.write("hello", "127.0.0.1:8082\n");
    wait_until(&mut rx, DEADLINE, |r| *r == set(&[8082])).await;
}

#[tokio::test]
async fn a_missing_file_does_not_exist_at_once() {
    let tmp = TempDir::new("missing");
    let fs = namer(&tmp.endpoints()).with_poll_interval(FAST);
    let bound = fs.bind(&["nope", "x"]).expect("a missing file still binds");
    assert_eq!(bound.residual, ["x"]);
    let why = does_not_exist(&bound.resolution.borrow()).map(str::to_owned);
    assert_eq!(
        why.as_deref(),
        Some(format!("no file {}", tmp.endpoints().join("nope").display()).as_str())
    );
}

#[tokio::test]
async fn names_nobody_watches_are_forgotten() {
    let tmp = TempDir::new("unwatched");
    tmp.write("a", "127.0.0.1:8081\n");
    tmp.write("b", "127.0.0.1:8082\n");
    let fs = namer(&tmp.endpoints()).with_poll_interval(FAST);
    let a1 = fs.bind(&["a"]).expect("binds");
    let a2 = fs.bind(&["a"]).expect("binds");
    let mut b = fs.bind(&["b"]).expect("binds").resolution;
    assert_eq!(fs.watched(), 2);

    drop(a1);
    // A poll went by (b's edit applied) and `a`, still held once, is kept.
    tmp.write("b", "127.0.0.1:8083\n");
    wait_until(&mut b, DEADLINE, |r| *r == set(&[8083])).await;
    assert_eq!(fs.watched(), 2);

    drop(a2);
    eventually("`a` is forgotten", || fs.watched() == 1).await;

    // Binding it again reads the file afresh.
    tmp.write("a", "127.0.0.1:8084\n");
    let a = fs.bind(&["a"]).expect("binds again");
    assert_eq!(*a.resolution.borrow(), set(&[8084]));
    assert_eq!(fs.watched(), 2);
}

#[tokio::test]
async fn the_number_of_watched_names_is_bounded() {
    let tmp = TempDir::new("bounded");
    let fs = namer(&tmp.endpoints())
        .with_poll_interval(FAST)
        .with_max_names(2);
    let a = fs.bind(&["a"]).expect("binds");
    let _b = fs.bind(&["b"]).expect("binds");
    let err = fs.bind(&["c"]).expect_err("over the limit");
    assert_eq!(
        err.to_string(),
        "cannot bind \"/#/fs/c\": namer fs already watches 2 names"
    );
    // Another binding of a watched name is no new name.
    fs.bind(&["a"]).expect("binds a watched name");

    drop(a);
    // The other binding of `a` above was dropped at once; `a` is free now.
    let c: Bound = fs.bind(&["c"]).expect("room again once `a` is unwatched");
    assert_eq!(c.id, "/#/fs/c");
    assert_eq!(fs.watched(), 2);
}

#[tokio::test]
async fn paths_never_leave_the_directory() {
    let tmp = TempDir::new("traversal");
    std::fs::write(tmp.0.join("secret"), "127.0.0.1:1\n").expect("write outside");
    tmp.write("hello", "127.0.0.1:8081\n");
    let fs = Arc::new(namer(&tmp.endpoints()));
    let mut namers = Namers::new();
    namers.insert(fs.clone());

    for path in ["/#/fs/../secret", "/#/fs/.hello", "/#/fs/./hello"] {
        let err = namers.bind_path(path).expect_err(path);
        assert!(
            matches!(err, BindError::InvalidName { .. }),
            "{path}: {err}"
        );
        assert!(err.to_string().contains(path), "{path}: {err}");
    }
    for segment in [
        "../secret",
        "endpoints/../../secret",
        "/etc/passwd",
        "a\0b",
        "",
    ] {
        let err = fs.bind(&[segment]).expect_err(segment);
        assert!(
            matches!(err, BindError::InvalidName { .. }),
            "{segment:?}: {err}"
        );
    }
    assert_eq!(fs.watched(), 0, "nothing was read or watched");
}

#[tokio::test]
async fn dropping_the_namer_closes_its_watches() {
    let tmp = TempDir::new("dropped");
    tmp.write("hello", "127.0.0.1:8081\n");
    let fs = namer(&tmp.endpoints()).with_poll_interval(FAST);
    let mut rx = fs.bind(&["hello"]).expect("binds").resolution;
    drop(fs);
    let closed = tokio::time::timeout(DEADLINE, rx.changed()).await;
    assert!(matches!(closed, Ok(Err(_))), "the channel closes");
    assert_eq!(*rx.borrow(), set(&[8081]), "the last value stays");
}

#[test]
fn builds_anywhere_but_binds_inside_a_runtime() {
    let tmp = TempDir::new("no-runtime");
    let fs = namer(&tmp.endpoints());
    let err = fs.bind(&["hello"]).expect_err("no runtime");
    assert!(matches!(err, BindError::NoRuntime { .. }), "{err}");
    assert_eq!(fs.watched(), 0);

    let missing = tmp.0.join("no-such-dir");
    let err = FileNamer::new("fs".parse().expect("name"), &missing).expect_err("no dir");
    assert!(err.to_string().contains("no-such-dir"), "{err}");
}
