//! Binding and delegation as Finagle 19.5+ and Linkerd 1 define them: built-in and configured
//! namers, alternation and union rules, errors dropped or propagated, the depth and step
//! limits, and the explanation every binding records. The parser, printer, lookup and eval
//! tables are in `dtab.rs`.

use std::time::{Duration, Instant};

use mesh_core::dtab::{
    BindError, Binder, Dtab, Explanation, MAX_BIND_STEPS, Node, Path, bind, delegate, render_json,
};

fn path(s: &str) -> Path {
    Path::read(s).unwrap_or_else(|e| panic!("path {s:?}: {e}"))
}

fn dtab(s: &str) -> Dtab {
    Dtab::read(s).unwrap_or_else(|e| panic!("dtab {s:?}: {e}"))
}

// ---- bind and delegate -----------------------------------------------------------------

/// Knows `/#/fs/<name>` (binds to `fs:<name>`), fails `/#/broken/…`, and binds every
/// `/$/inet` address to `inet:<host>:<port><residual>`.
struct TestBinder;

impl Binder for TestBinder {
    type Bound = String;

    fn bind_namer(&self, path: &Path) -> Result<Option<String>, BindError> {
        match path.label_str(1) {
            Some("fs") => Ok(Some(format!("fs:{}", path.drop(2)))),
            Some("broken") => Err(BindError::Namer {
                path: path.clone(),
                message: "namer is down".into(),
            }),
            _ => Ok(None),
        }
    }

    fn bind_inet(&self, host: &str, port: u16, residual: &Path) -> Result<String, BindError> {
        let residual = if residual.is_empty() {
            String::new()
        } else {
            residual.to_string()
        };
        Ok(format!("inet:{host}:{port}{residual}"))
    }
}

fn bound(d: &str, p: &str) -> Result<String, BindError> {
    bind(&dtab(d), &path(p), &TestBinder).map(|t| t.to_string())
}

#[test]
fn bind_table() {
    let cases: &[(&str, &str, &str)] = &[
        // Built-in names.
        ("", "/$/inet/127.0.0.1/8080", "inet:127.0.0.1:8080"),
        ("", "/$/inet/8080", "inet::8080"),
        ("", "/$/inet/8080/rest", "inet::8080/rest"),
        ("", "/$/inet/example.com/80/a/b", "inet:example.com:80/a/b"),
        ("", "/$/fixedinet/10.0.0.1/80", "inet:10.0.0.1:80"),
        ("", "/$/fail", "!"),
        ("", "/$/fail/whatever", "!"),
        ("", "/$/nil", "$"),
        ("", "/$/nil/x", "$"),
        ("", "/$", "~"),
        ("", "/#", "~"),
        ("", "/#/fs/web", "fs:/web"),
        ("", "/#/unknown/web", "~"),
        ("", "/svc/web", "~"),
        // Rewrites, residual carried to the namer.
        ("/svc => /#/fs", "/svc/web", "fs:/web"),
        (
            "/svc => /#/fs; /svc/web => /svc/web-v2",
            "/svc/web",
            "fs:/web-v2",
        ),
        (
            "/svc => /#/fs; /svc/web => /#/nothing",
            "/svc/web",
            "fs:/web",
        ),
        (
            "/svc => /$/inet/127.0.0.1/8080",
            "/svc/a/b",
            "inet:127.0.0.1:8080/a/b",
        ),
        // linkerd.io guide: a chain of rewrites.
        (
            "/smitten => /$/inet/10.0.0.5/432; /iceCreamStore => /smitten",
            "/iceCreamStore/try/mint",
            "inet:10.0.0.5:432/try/mint",
        ),
        // Alternation: first non-neg wins; fail and empty stop it.
        ("/a => /#/none | /#/fs/b", "/a", "fs:/b"),
        ("/a => ! | /#/fs/b", "/a", "!"),
        ("/a => $ | /#/fs/b", "/a", "$"),
        ("/a => /$/fail | /#/fs/b", "/a", "!"),
        ("/a => /$/nil | /#/fs/b", "/a", "$"),
        ("/a => ~ | ~", "/a", "~"),
        // Union: neg and fail branches drop; only failing is neg; weights kept.
        ("/a => /#/fs/x & /#/fs/y", "/a", "fs:/x & fs:/y"),
        ("/a => 0.7*/#/fs/x & 0.3*/#/none", "/a", "0.70*fs:/x"),
        ("/a => /#/fs/x & !", "/a", "fs:/x"),
        ("/a => ! & !", "/a", "~"),
        ("/a => ! & ~", "/a", "~"),
        ("/a => 0.3*/#/fs/x", "/a", "0.30*fs:/x"),
        // An error in a union is dropped when a sibling binds.
        ("/a => /#/fs/x & /$/bogus", "/a", "fs:/x"),
        ("/a => /#/fs/x & /#/broken/y", "/a", "fs:/x"),
        ("/a => /#/fs/x & /b; /b => /b", "/a", "fs:/x"),
        ("/a => ~ & /$/bogus", "/a", "~"),
        // An error in an alternation only matters when reached.
        ("/a => /#/fs/x | /$/bogus", "/a", "fs:/x"),
    ];
    for (d, p, want) in cases {
        assert_eq!(bound(d, p).as_deref(), Ok(*want), "{d} @ {p}");
    }
}

/// (dtab, path, what the error must be)
type ErrorCase = (&'static str, &'static str, fn(&BindError) -> bool);

#[test]
fn bound_weights_are_the_innermost_unions() {
    // As Finagle stamps weights on addresses: /b's union is the innermost around fs:/x, so x
    // weighs 1.0 even though /b itself was reached with 0.2, and even though /#/none dropped.
    let d = dtab("/a => 0.2*/b & 0.8*/#/fs/c; /b => /#/fs/x & /#/none");
    let t = bind(&d, &path("/a"), &TestBinder).expect("binds");
    let weights = t.eval().expect("addresses");
    assert_eq!(
        weights,
        [("fs:/x".to_owned(), 1.0), ("fs:/c".to_owned(), 0.8)]
    );
    // A lone surviving branch keeps its weight.
    let d = dtab("/a => 0.2*/#/fs/x & 0.8*/#/none");
    let t = bind(&d, &path("/a"), &TestBinder).expect("binds");
    assert_eq!(t.eval(), Some(vec![("fs:/x".to_owned(), 0.2)]));
}

#[test]
fn bind_errors() {
    let cases: &[ErrorCase] = &[
        (
            "",
            "/$/bogus/x",
            |e| matches!(e, BindError::UnknownBuiltin { path } if path.to_string() == "/$/bogus/x"),
        ),
        ("", "/$/inet/host", |e| {
            matches!(e, BindError::UnknownBuiltin { .. })
        }),
        ("", "/$/inet/host/http", |e| {
            matches!(e, BindError::UnknownBuiltin { .. })
        }),
        ("", "/$/inet/host/70000", |e| {
            matches!(e, BindError::UnknownBuiltin { .. })
        }),
        (
            "",
            "/#/broken/x",
            |e| matches!(e, BindError::Namer { message, .. } if message == "namer is down"),
        ),
        ("/a => /$/bogus | /#/fs/x", "/a", |e| {
            matches!(e, BindError::UnknownBuiltin { .. })
        }),
        ("/a => /$/bogus & /#/broken/y", "/a", |e| {
            matches!(e, BindError::UnknownBuiltin { .. })
        }),
        ("/a => /a", "/a", |e| matches!(e, BindError::Depth { .. })),
        (
            "/foo/bar => /bar/foo; /bar/foo => /foo/bar",
            "/foo/bar",
            |e| matches!(e, BindError::Depth { .. }),
        ),
    ];
    for (d, p, check) in cases {
        let e = bound(d, p).expect_err(&format!("{d} @ {p}"));
        assert!(check(&e), "{d} @ {p}: {e:?}");
    }
    let e = bound("/a=>/a", "/a").expect_err("loop");
    assert!(e.to_string().contains("depth"), "{e}");
    assert_eq!(e.to_string(), "max delegation depth 100 reached at /a");
}

#[test]
fn depth_limit_is_finagles() {
    // A chain of n rewrites ending at a namer: Finagle allows 99 rewrites (100 lookups).
    let chain = |n: usize| {
        let mut text: String = (0..n).map(|i| format!("/p{i}=>/p{};", i + 1)).collect();
        text.push_str(&format!("/p{n}=>/#/fs/end"));
        text
    };
    assert_eq!(bound(&chain(98), "/p0").as_deref(), Ok("fs:/end"));
    assert!(matches!(
        bound(&chain(99), "/p0"),
        Err(BindError::Depth { .. })
    ));
}

#[test]
fn exponential_unions_stop_quickly() {
    let mut text = String::new();
    for i in 0..40 {
        text.push_str(&format!("/l{i} => /l{} & /l{};", i + 1, i + 1));
    }
    let start = Instant::now();
    let e = bound(&text, "/l0").expect_err("too large");
    assert!(matches!(e, BindError::TooLarge { .. }), "{e:?}");
    let expl = delegate(&dtab(&text), &path("/l0"), &TestBinder);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        count(&expl) <= MAX_BIND_STEPS + 100,
        "{} nodes",
        count(&expl)
    );
}

fn count<B>(e: &Explanation<B>) -> usize {
    1 + match &e.node {
        Node::Delegate(c) => count(c),
        Node::Alt(cs) => cs.iter().map(count).sum(),
        Node::Union(ws) => ws.iter().map(|(_, c)| count(c)).sum(),
        _ => 0,
    }
}

#[test]
fn deep_hostile_dtab_binds_on_a_small_stack() {
    // 100 levels of rewrites, each through a 60-deep alternation: the binder and everything
    // that walks the explanation must fit a 2 MiB thread (tokio's default).
    let nest = |next: &str| format!("{}/{next}{}", "(~ | ".repeat(60), ")".repeat(60));
    let text: String = (0..100)
        .map(|i| format!("/p{i}=>{};", nest(&format!("p{}", i + 1))))
        .collect();
    let d = dtab(&text);
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let e = delegate(&d, &path("/p0"), &TestBinder);
            let shown = e.to_string();
            let json = e.to_json(&|b| serde_json::Value::from(b.clone()));
            (
                e.result().map(|t| t.to_string()),
                shown.len(),
                json.is_object(),
            )
        })
        .expect("spawn");
    let (result, shown, json) = handle.join().expect("no stack overflow");
    assert!(
        matches!(
            result,
            Err(BindError::TooLarge { .. }) | Err(BindError::Depth { .. })
        ),
        "{result:?}"
    );
    assert!(shown > 0 && json);
}

#[test]
fn delegate_records_every_step() {
    let d = dtab("/svc => /#/fs; /svc/world => /svc/world-v1 | /svc/world-v2");
    let e = delegate(&d, &path("/svc/world"), &TestBinder);
    assert_eq!(e.path, path("/svc/world"));
    assert_eq!(e.dentry, None);
    let Node::Alt(branches) = &e.node else {
        panic!("two dentries match: {e:?}")
    };
    assert_eq!(branches.len(), 2);
    // Later dentry first: its tree is an alternation recorded with the dentry.
    assert_eq!(
        branches[0]
            .dentry
            .as_ref()
            .map(|d| d.to_string())
            .as_deref(),
        Some("/svc/world=>/svc/world-v1 | /svc/world-v2")
    );
    let Node::Alt(inner) = &branches[0].node else {
        panic!("alt in the dentry: {:?}", branches[0])
    };
    assert_eq!(inner[0].path, path("/svc/world-v1"));
    let Node::Delegate(step) = &inner[0].node else {
        panic!("rewritten by /svc: {:?}", inner[0])
    };
    assert_eq!(step.path, path("/#/fs/world-v1"));
    assert_eq!(
        step.dentry
            .as_ref()
            .map(|d| d.prefix.to_string())
            .as_deref(),
        Some("/svc")
    );
    assert_eq!(step.node, Node::Bound("fs:/world-v1".to_owned()));
    // Both branches were bound eagerly, the fallback too.
    assert_eq!(branches[1].path, path("/#/fs/world"));
    assert_eq!(branches[1].node, Node::Bound("fs:/world".to_owned()));
    assert_eq!(
        e.result().map(|t| t.to_string()).as_deref(),
        Ok("fs:/world-v1")
    );

    let shown = e.to_string();
    let want = "\
/svc/world  -> alt
  /svc/world  via /svc/world=>/svc/world-v1 | /svc/world-v2  -> alt
    /svc/world-v1
      /#/fs/world-v1  via /svc=>/#/fs  -> bound fs:/world-v1
    /svc/world-v2
      /#/fs/world-v2  via /svc=>/#/fs  -> bound fs:/world-v2
  /#/fs/world  via /svc=>/#/fs  -> bound fs:/world
";
    assert_eq!(shown, want);
}

#[test]
fn explanation_display_shows_weights_and_endings() {
    let d = dtab("/a => 0.7*/#/fs/x & 0.3*/$/bogus; /b => /a | ~");
    let e = delegate(&d, &path("/b"), &TestBinder);
    let want = "\
/b
  /b  via /b=>/a | ~  -> alt
    /a
      /a  via /a=>0.70*/#/fs/x & 0.30*/$/bogus  -> union
        0.70* /#/fs/x  -> bound fs:/x
        0.30* /$/bogus  -> error: unknown built-in name /$/bogus (expected /$/inet/<host>/<port>, /$/fail or /$/nil)
    /b  -> neg
";
    assert_eq!(e.to_string(), want);
    assert_eq!(
        e.result().map(|t| t.to_string()).as_deref(),
        Ok("0.70*fs:/x")
    );
}

#[test]
fn json_round_trips_through_the_renderer() {
    let d = dtab("/svc => /#/fs; /svc/x => /$/nil");
    let e = delegate(&d, &path("/svc/x"), &TestBinder);
    let json = e.to_json(&|b| serde_json::json!({ "id": b, "endpoints": 2 }));
    assert_eq!(json["type"], "alt");
    assert_eq!(json["path"], "/svc/x");
    assert_eq!(json["dentry"], serde_json::Value::Null);
    assert_eq!(json["alt"][0]["type"], "empty");
    assert_eq!(json["alt"][0]["path"], "/$/nil");
    assert_eq!(json["alt"][0]["dentry"]["prefix"], "/svc/x");
    assert_eq!(json["alt"][0]["dentry"]["dst"], "/$/nil");
    assert_eq!(json["alt"][1]["bound"]["id"], "fs:/x");
    let rendered = render_json(&json);
    assert_eq!(
        rendered,
        "/svc/x  -> alt\n  /$/nil  via /svc/x=>/$/nil  -> empty\n  /#/fs/x  via /svc=>/#/fs  -> bound fs:/x (2 endpoints)\n"
    );
    // Same layout as Display when bound names are plain strings.
    assert_eq!(
        render_json(&e.to_json(&|b| serde_json::Value::from(b.clone()))),
        e.to_string()
    );
    let err = delegate(&dtab("/a=>/a"), &path("/a"), &TestBinder)
        .to_json(&|b| serde_json::Value::from(b.clone()));
    let mut step = &err;
    while step["type"] == "delegate" {
        step = &step["delegate"];
    }
    assert_eq!(step["kind"], "depth");
}
