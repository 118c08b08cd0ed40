//! Dtab semantics as Finagle 19.5+ and Linkerd 1 define them: the parser and canonical
//! printer, one-step lookup, binding through namers, evaluation, and the limits that keep
//! hostile input cheap. Cases come from the Linkerd 1 dtab guide (linkerd.io/1/advanced/dtabs)
//! and Finagle's own DtabTest, NameTreeTest and NameTreeParsersTest, written out as tables.

use mesh_core::dtab::{Dentry, Dtab, Elem, MAX_INPUT_BYTES, NameTree, Path, Prefix, Weighted};

fn path(s: &str) -> Path {
    Path::read(s).unwrap_or_else(|e| panic!("path {s:?}: {e}"))
}

fn tree(s: &str) -> NameTree<Path> {
    NameTree::read(s).unwrap_or_else(|e| panic!("tree {s:?}: {e}"))
}

fn dtab(s: &str) -> Dtab {
    Dtab::read(s).unwrap_or_else(|e| panic!("dtab {s:?}: {e}"))
}

fn leaf(s: &str) -> NameTree<Path> {
    NameTree::Leaf(path(s))
}

fn w(weight: f64, tree: NameTree<Path>) -> Weighted<Path> {
    Weighted { weight, tree }
}

// ---- parser ----------------------------------------------------------------------------

#[test]
fn paths_parse_and_print() {
    let cases: &[(&str, &[&[u8]], &str)] = &[
        ("/", &[], "/"),
        ("  /foo/bar  ", &[b"foo", b"bar"], "/foo/bar"),
        ("/\\x66\\x6f\\x6F", &[b"foo"], "/foo"),
        ("/a\\x2fb", &[b"a/b"], "/a\\x2fb"),
        ("/#/io.l5d.fs", &[b"#", b"io.l5d.fs"], "/#/io.l5d.fs"),
        (
            "/$/inet/127.0.0.1/8080",
            &[b"$", b"inet", b"127.0.0.1", b"8080"],
            "/$/inet/127.0.0.1/8080",
        ),
        ("/a#b/%-_:.", &[b"a#b", b"%-_:."], "/a#b/%-_:."),
        ("/\\xFF\\x20", &[b"\xff "], "/\\xff\\x20"),
        ("/a # a comment", &[b"a"], "/a"),
    ];
    for (text, labels, shown) in cases {
        let p = path(text);
        assert_eq!(p.labels().collect::<Vec<_>>(), *labels, "{text}");
        assert_eq!(p.to_string(), *shown, "{text}");
        assert_eq!(format!("{p:?}"), *shown);
        assert_eq!(path(shown), p, "reparse {shown}");
    }
}

#[test]
fn path_errors_name_the_offset() {
    let cases: &[(&str, usize, &str, &str)] = &[
        ("", 0, "'/'", "end of input"),
        ("/foo/bar/", 9, "label char", "end of input"),
        ("/{}", 1, "end of input", "'{'"),
        ("/\\?", 2, "'x'", "'?'"),
        ("/\\x?", 3, "hex char", "'?'"),
        ("/\\x0?", 4, "hex char", "'?'"),
        ("/foo^bar", 4, "end of input", "'^'"),
        ("/a*", 2, "end of input", "'*'"),
        ("a", 0, "'/'", "'a'"),
        ("/é", 1, "end of input", "'é'"),
    ];
    for (text, offset, expected, found) in cases {
        let e = Path::read(text).expect_err(text);
        assert_eq!(
            (e.offset, e.expected.as_str(), e.found.as_str()),
            (*offset, *expected, *found),
            "{text}"
        );
    }
    let e = Path::read("/a/").expect_err("trailing slash");
    assert_eq!(
        e.to_string(),
        "at offset 3: expected label char, found end of input"
    );
}

#[test]
fn trees_parse_like_finagle() {
    let u = |ws: Vec<Weighted<Path>>| NameTree::Union(ws);
    let cases: Vec<(&str, NameTree<Path>)> = vec![
        (
            "! | ~ | $",
            NameTree::Alt(vec![NameTree::Fail, NameTree::Neg, NameTree::Empty]),
        ),
        ("/foo/bar", leaf("/foo/bar")),
        (
            "  /foo & /bar  ",
            u(vec![w(1.0, leaf("/foo")), w(1.0, leaf("/bar"))]),
        ),
        (
            "  /foo | /bar  ",
            NameTree::Alt(vec![leaf("/foo"), leaf("/bar")]),
        ),
        (
            "/foo & /bar | /bar & /baz",
            NameTree::Alt(vec![
                u(vec![w(1.0, leaf("/foo")), w(1.0, leaf("/bar"))]),
                u(vec![w(1.0, leaf("/bar")), w(1.0, leaf("/baz"))]),
            ]),
        ),
        (
            "1 * /foo & 2 * /bar | .5 * /bar & .5 * /baz",
            NameTree::Alt(vec![
                u(vec![w(1.0, leaf("/foo")), w(2.0, leaf("/bar"))]),
                u(vec![w(0.5, leaf("/bar")), w(0.5, leaf("/baz"))]),
            ]),
        ),
        // Anchors b1: & binds tighter than |.
        (
            "/foo & /bar | /baz | $",
            NameTree::Alt(vec![
                u(vec![w(1.0, leaf("/foo")), w(1.0, leaf("/bar"))]),
                leaf("/baz"),
                NameTree::Empty,
            ]),
        ),
        (
            "/a & (/b | /c)",
            u(vec![
                w(1.0, leaf("/a")),
                w(1.0, NameTree::Alt(vec![leaf("/b"), leaf("/c")])),
            ]),
        ),
        ("((/a))", leaf("/a")),
        // A lone weighted member is a one-member union; weight 1 is just the tree.
        ("0.3 * /a", u(vec![w(0.3, leaf("/a"))])),
        ("1 * /a", leaf("/a")),
        (
            "1. * /a & 2.50*/b",
            u(vec![w(1.0, leaf("/a")), w(2.5, leaf("/b"))]),
        ),
        ("/a#b", leaf("/a#b")),
        ("/a #b", leaf("/a")),
    ];
    for (text, want) in cases {
        assert_eq!(tree(text), want, "{text}");
    }
}

#[test]
fn tree_errors_name_the_offset() {
    let cases: &[(&str, usize, &str)] = &[
        ("", 0, "a path, '(', '!', '~' or '$'"),
        ("#", 1, "a path, '(', '!', '~' or '$'"),
        ("/foo &", 6, "a path, '(', '!', '~' or '$'"),
        ("/foo & 0.1.2 * /bar", 10, "number char"),
        ("/foo & . * /bar", 7, "weight"),
        ("/foo & 0.5 /bar", 11, "'*'"),
        ("(/a | /b", 8, "')'"),
        ("/a)", 2, "end of input"),
        ("* /a", 0, "a path, '(', '!', '~' or '$'"),
        ("/a | | /b", 5, "a path, '(', '!', '~' or '$'"),
    ];
    for (text, offset, expected) in cases {
        let e = NameTree::read(text).expect_err(text);
        assert_eq!(
            (e.offset, e.expected.as_str()),
            (*offset, *expected),
            "{text}: {e}"
        );
    }
    // A weight too long to be a finite number is an error, not infinity.
    let huge = format!("{} * /a & /b", "9".repeat(400));
    assert_eq!(
        NameTree::read(&huge).expect_err("inf weight").expected,
        "weight"
    );
}

#[test]
fn dentries_and_prefixes() {
    assert_eq!(
        Dentry::read("/=>!").expect("dentry"),
        Dentry {
            prefix: Prefix::default(),
            dst: NameTree::Fail
        }
    );
    assert_eq!(Dentry::read("/ => !").expect("dentry").to_string(), "/=>!");
    let d = Dentry::read("/foo/*/bar => !").expect("wildcard");
    assert_eq!(
        d.prefix.elems(),
        &[
            Elem::Label("foo".into()),
            Elem::Any,
            Elem::Label("bar".into())
        ]
    );
    assert_eq!(d.to_string(), "/foo/*/bar=>!");
    // A literal `*` byte in a prefix label is escaped, not a wildcard.
    let lit = Prefix::read("/\\x2a").expect("escaped star");
    assert_eq!(lit.elems(), &[Elem::Label("*".into())]);
    assert_eq!(lit.to_string(), "/\\x2a");
    assert!(!lit.matches(&path("/x")));

    for (text, offset, expected) in [
        ("/foo/*bar/baz => !", 6, "'=>'"),
        ("/&!", 1, "'=>'"),
        ("/a = /b", 4, "'=>'"),
        ("/a =/b", 4, "'=>'"),
        ("/a", 2, "'=>'"),
    ] {
        let e = Dentry::read(text).expect_err(text);
        assert_eq!(
            (e.offset, e.expected.as_str()),
            (offset, expected),
            "{text}: {e}"
        );
    }
    // `*` is not allowed in a path.
    assert!(Path::read("/a/*").is_err());
}

#[test]
fn dtabs_parse_like_finagle() {
    assert_eq!(dtab(""), Dtab::empty());
    assert_eq!(dtab("  # only a comment\n  "), Dtab::empty());
    assert_eq!(dtab("  /=>!  ").to_string(), "/=>!");
    assert_eq!(dtab("/=>!;").len(), 1);
    assert_eq!(dtab("/=>!;/foo=>/bar").to_string(), "/=>!;/foo=>/bar");
    let with_comments = dtab(
        "
# a comment
      /#foo => /biz  # another comment
             | ( /bliz & # yet another comment
                 /bluth ) # duh bluths
             ; #finalmente
      #/ignore=>/me;
    ",
    );
    assert_eq!(
        with_comments.dentries(),
        &[Dentry {
            prefix: Prefix::new([Elem::Label("#foo".into())]),
            dst: NameTree::Alt(vec![
                leaf("/biz"),
                NameTree::Union(vec![w(1.0, leaf("/bliz")), w(1.0, leaf("/bluth"))]),
            ]),
        }]
    );
    assert_eq!(with_comments.to_string(), "/#foo=>/biz | /bliz & /bluth");

    for (text, offset) in [
        ("/=>!;;", 5),
        ("/=>!;;/foo=>/bar", 5),
        ("/foo", 4),
        ("/foo=>", 6),
        (";", 0),
        ("/a=>/b /c=>/d", 7),
    ] {
        let e = Dtab::read(text).expect_err(text);
        assert_eq!(e.offset, offset, "{text}: {e}");
    }
    let e = Dtab::read("/svc => /a;\n/svc x").expect_err("bad arrow");
    assert_eq!(e.to_string(), "at offset 17: expected '=>', found 'x'");
}

#[test]
fn printer_is_canonical() {
    let cases = [
        (
            "/iceCreamStore => 0.7 * /humphrys & 0.3 * /smitten",
            "/iceCreamStore=>0.70*/humphrys & 0.30*/smitten",
        ),
        ("/a => /b | /c & /d", "/a=>/b | /c & /d"),
        ("/a => (/b | /c) & /d", "/a=>(/b | /c) & /d"),
        ("/a => (/b | /c) | /d", "/a=>(/b | /c) | /d"),
        ("/a => (/b & /c) & /d", "/a=>(/b & /c) & /d"),
        ("/a => (/b & /c) | /d", "/a=>/b & /c | /d"),
        ("/a => 1.0*/b & 2*/c", "/a=>/b & 2.00*/c"),
        ("/a => 0.5*(/b & /c) & /d", "/a=>0.50*(/b & /c) & /d"),
        ("/a => 0.5*(0.25*/b) & /d", "/a=>0.50*(0.25*/b) & /d"),
        ("/a => 0.3*/b | ~", "/a=>0.30*/b | ~"),
        ("/a => ((/b))", "/a=>/b"),
        ("/a/*/c => /d ; /x=>$", "/a/*/c=>/d;/x=>$"),
    ];
    for (text, canonical) in cases {
        let d = dtab(text);
        assert_eq!(d.to_string(), canonical, "{text}");
        assert_eq!(dtab(canonical), d, "reparse {canonical}");
    }
}

#[test]
fn hostile_input_is_rejected_without_overflowing() {
    // 100k opening parentheses: an error at the 65th, not a stack overflow.
    let deep = "(".repeat(100_000);
    let e = NameTree::read(&deep[..MAX_INPUT_BYTES]).expect_err("deep nesting");
    assert_eq!(e.offset, 64);
    assert!(e.expected.contains("nested"), "{e}");
    let e = Dtab::read(&format!("/a=>{deep}")).expect_err("too long");
    assert_eq!(e.offset, MAX_INPUT_BYTES, "{e}");
    // 1 MB of otherwise valid dentries: rejected for its size.
    let big = "/a=>/b;".repeat(150_000);
    assert!(big.len() > 1_000_000);
    let e = Dtab::read(&big).expect_err("1 MB");
    assert!(e.expected.contains("65536"), "{e}");
    // Exactly 64 levels is fine.
    let ok = format!("{}/a{}", "(".repeat(64), ")".repeat(64));
    assert_eq!(tree(&ok), leaf("/a"));
    let too_deep = format!("{}/a{}", "(".repeat(65), ")".repeat(65));
    assert!(NameTree::read(&too_deep).is_err());
}

// ---- lookup ----------------------------------------------------------------------------

#[test]
fn lookup_rewrites_one_step() {
    // (dtab, path, one-step result; "~" when nothing matches)
    let cases = [
        // linkerd.io dtab guide.
        (
            "/iceCreamStore => /smitten",
            "/iceCreamStore/try/mint",
            "/smitten/try/mint",
        ),
        (
            "/smitten => /USA/CA/SF/Octavia/432; /iceCreamStore => /smitten",
            "/iceCreamStore/try/mint",
            "/smitten/try/mint",
        ),
        (
            "/smitten => /USA/CA/SF/Octavia/432; /iceCreamStore => /smitten",
            "/smitten/try/mint",
            "/USA/CA/SF/Octavia/432/try/mint",
        ),
        (
            "/iceCreamStore => /smitten; /iceCreamStore => /humphrys",
            "/iceCreamStore",
            "/humphrys | /smitten",
        ),
        (
            "/iceCreamStore => /humphrys | /smitten",
            "/iceCreamStore/x",
            "/humphrys/x | /smitten/x",
        ),
        (
            "/iceCreamStore => 0.7 * /humphrys & 0.3 * /smitten",
            "/iceCreamStore/x",
            "0.70*/humphrys/x & 0.30*/smitten/x",
        ),
        ("/iceCreamStore => /smitten", "/iceCream", "~"),
        ("/iceCreamStore => /smitten", "/iceCreamStores", "~"),
        // Finagle DtabTest: wildcards.
        ("/a/*/c => /d", "/a/b/c/e/f", "/d/e/f"),
        ("/a/*/c => /d", "/a/b", "~"),
        // Position, not prefix length: the later, shorter prefix is tried first.
        (
            "/svc/web => /web-special; /svc => /#/fs",
            "/svc/web",
            "/#/fs/web | /web-special",
        ),
        (
            "/svc => /#/fs; /svc/web => /web-special",
            "/svc/web",
            "/web-special | /#/fs/web",
        ),
        // The empty prefix matches everything.
        ("/ => /root", "/a/b", "/root/a/b"),
        ("/ => /root", "/", "/root"),
        // Residual appended to every leaf, constants untouched.
        (
            "/a => /b & (/c | ~) | !",
            "/a/x/y",
            "/b/x/y & (/c/x/y | ~) | !",
        ),
        ("", "/a", "~"),
    ];
    for (d, p, want) in cases {
        assert_eq!(dtab(d).lookup(&path(p)).to_string(), want, "{d} @ {p}");
    }
}

#[test]
fn lookup_matches_later_first_with_their_dentries() {
    let d = dtab("/a => /one; /b => /x; /a => /two");
    let matches = d.lookup_matches(&path("/a/z"));
    let shown: Vec<String> = matches.iter().map(|(d, t)| format!("{d} -> {t}")).collect();
    assert_eq!(shown, ["/a=>/two -> /two/z", "/a=>/one -> /one/z"]);
    assert!(d.lookup_matches(&path("/c")).is_empty());
}

#[test]
fn concat_lets_later_dentries_win() {
    let d1 = dtab("/foo => /bar");
    let d2 = dtab("/foo=>/biz;/biz=>/$/inet/8080;/bar=>/$/inet/9090");
    let both = d1.concat(&d2);
    assert_eq!(
        both,
        dtab("/foo=>/bar;/foo=>/biz;/biz=>/$/inet/8080;/bar=>/$/inet/9090")
    );
    assert_eq!(both.lookup(&path("/foo")).to_string(), "/biz | /bar");
    assert_eq!(d1.concat(&Dtab::empty()), d1);
    assert_eq!(Dtab::empty().concat(&d1), d1);
}

#[test]
fn equal_dtabs_hash_alike() {
    use std::collections::HashSet;
    let set: HashSet<Dtab> = [
        dtab("/a=>0.5*/b & /c"),
        dtab("/a => 0.50 * /b & /c # same"),
        dtab("/a=>/b"),
    ]
    .into_iter()
    .collect();
    assert_eq!(set.len(), 2);
}

// ---- eval and simplify -----------------------------------------------------------------

#[test]
fn eval_and_simplified_agree_with_finagle() {
    // Finagle NameTreeTest "NameTree.eval/simplified", plus the corner cases of DESIGN §4.
    let cases: &[(&str, Option<&[&str]>)] = &[
        ("~", None),
        ("!", None),
        ("$", Some(&[])),
        ("/ok", Some(&["/ok"])),
        ("/ok & /ok1", Some(&["/ok", "/ok1"])),
        ("/ok & ~ & /blah & $", Some(&["/ok", "/blah"])),
        ("$ & $ & $", Some(&[])),
        ("~ & ~ & (~ | ~)", None),
        ("~ | /foo | /bar", Some(&["/foo"])),
        ("~ | $ | /blah", Some(&[])),
        ("~ | (~ | $) | /blah", Some(&[])),
        (
            "(~|$|/foo) & (/bar|/blah) & ~ & /FOO",
            Some(&["/bar", "/FOO"]),
        ),
        ("! | /ok", None),
        ("/ok & !", Some(&["/ok"])),
        ("! & ! & !", None),
        ("! & ~", None),
        ("~ | /ok | !", Some(&["/ok"])),
        ("/a & /a & /b", Some(&["/a", "/b"])),
        ("(0.5*!) | /b", None),
    ];
    for (text, want) in cases {
        let want: Option<Vec<Path>> = want.map(|ps| ps.iter().map(|p| path(p)).collect());
        let got = |t: NameTree<Path>| {
            t.eval()
                .map(|v| v.into_iter().map(|(p, _)| p).collect::<Vec<_>>())
        };
        assert_eq!(got(tree(text)), want, "eval {text}");
        let simple = tree(text).simplified();
        assert_eq!(
            got(simple.clone()),
            want,
            "eval of simplified {text} = {simple}"
        );
        assert_eq!(simple.clone().simplified(), simple, "fixed point {text}");
    }
}

#[test]
fn simplified_shapes() {
    let cases = [
        ("/a & !", "/a"),
        ("! & ~", "~"),
        ("/a | ~ | /b", "/a | /b"),
        ("/a | ! | /b", "/a | !"),
        ("~ | !", "!"),
        ("$ | /a", "$ | /a"),
        ("(/a | ~) & /b", "/a & /b"),
        // A union reduced to one branch keeps that branch's weight.
        ("0.3*/a & 0.7*!", "0.30*/a"),
        ("1*/a & 0.7*!", "/a"),
        ("0.3*!", "!"),
        ("0.5*(0.2*/a & ~) & ~", "0.50*(0.20*/a)"),
    ];
    for (text, want) in cases {
        assert_eq!(tree(text).simplified().to_string(), want, "{text}");
    }
}

#[test]
fn eval_weights_come_from_the_innermost_union() {
    let cases: &[(&str, &[(&str, f64)])] = &[
        ("/a", &[("/a", 1.0)]),
        ("0.3*/a & 0.7*/b", &[("/a", 0.3), ("/b", 0.7)]),
        (
            "0.5*(0.2*/a & 0.8*/b) & 0.5*/c",
            &[("/a", 0.2), ("/b", 0.8), ("/c", 0.5)],
        ),
        (
            "0.5*(/a & /b) & 2*/c",
            &[("/a", 1.0), ("/b", 1.0), ("/c", 2.0)],
        ),
        ("0.3*(/x | /y) & /z", &[("/x", 0.3), ("/z", 1.0)]),
        ("0.3*/a & 0.7*!", &[("/a", 0.3)]),
        ("0.3*/a", &[("/a", 0.3)]),
    ];
    for (text, want) in cases {
        let got = tree(text).eval().expect(text);
        let want: Vec<(Path, f64)> = want.iter().map(|(p, w)| (path(p), *w)).collect();
        assert_eq!(got, want, "{text}");
    }
}
