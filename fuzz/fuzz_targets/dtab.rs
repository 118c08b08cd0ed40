//! The dtab and name-tree parsers never panic, and whatever they accept prints in a
//! canonical form that parses back to the same value (weights as printed, two decimals) and
//! prints to the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::dtab::{Dtab, NameTree, Path, Weighted};

/// `t` as its printed form describes it: weights rounded to two decimals, and a lone union
/// branch whose weight prints as 1 reduced to that branch (the text cannot say otherwise).
fn as_printed(t: &NameTree<Path>) -> NameTree<Path> {
    match t {
        NameTree::Alt(ts) if ts.len() == 1 => as_printed(&ts[0]),
        NameTree::Alt(ts) => NameTree::Alt(ts.iter().map(as_printed).collect()),
        NameTree::Union(ws) => {
            let ws: Vec<Weighted<Path>> = ws
                .iter()
                .map(|w| Weighted {
                    weight: format!("{:.2}", w.weight).parse().unwrap_or(f64::NAN),
                    tree: as_printed(&w.tree),
                })
                .collect();
            if ws.len() == 1 && ws[0].weight == 1.0 {
                ws[0].tree.clone()
            } else {
                NameTree::Union(ws)
            }
        }
        other => other.clone(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(tree) = NameTree::read(text) {
        let printed = tree.to_string();
        let back = NameTree::read(&printed).unwrap_or_else(|e| panic!("{printed:?}: {e}"));
        assert_eq!(back, as_printed(&tree), "{printed}");
        assert_eq!(back.to_string(), printed);
        let _ = tree.eval();
        let _ = tree.simplified();
    }
    if let Ok(dtab) = Dtab::read(text) {
        let printed = dtab.to_string();
        let back = Dtab::read(&printed).unwrap_or_else(|e| panic!("{printed:?}: {e}"));
        assert_eq!(back.to_string(), printed);
        assert_eq!(back.len(), dtab.len());
        for (a, b) in dtab.dentries().iter().zip(back.dentries()) {
            assert_eq!(a.prefix, b.prefix);
            assert_eq!(b.dst, as_printed(&a.dst), "{printed}");
        }
        let _ = dtab.lookup(&Path::read("/svc/a/b").unwrap_or_else(|_| Path::empty()));
    }
});
