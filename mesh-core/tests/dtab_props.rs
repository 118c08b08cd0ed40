//! Properties of the dtab text form and lookup over generated trees and dtabs: printing
//! then parsing gives the same value back, and a one-dentry dtab's lookup is its tree with
//! the residual appended exactly when the prefix matches.

use mesh_core::dtab::{Dentry, Dtab, Elem, NameTree, Path, Prefix, Weighted};
use proptest::prelude::*;

fn label() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Mostly readable labels, sometimes any bytes (escaped as \xHH).
        3 => "[a-z0-9#$%._:-]{1,6}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 1..4),
    ]
}

fn path() -> impl Strategy<Value = Path> {
    prop::collection::vec(label(), 0..4).prop_map(Path::from_labels)
}

/// Weights with two decimals, other than 1 half of the time.
fn weight() -> impl Strategy<Value = f64> {
    prop_oneof![Just(1.0), (0u32..1000).prop_map(|c| f64::from(c) / 100.0)]
}

/// Trees in the shape the parser produces: combinators with at least two branches, or a
/// one-branch union whose weight is not 1.
fn tree() -> impl Strategy<Value = NameTree<Path>> {
    let leaf = prop_oneof![
        4 => path().prop_map(NameTree::Leaf),
        1 => Just(NameTree::Neg),
        1 => Just(NameTree::Fail),
        1 => Just(NameTree::Empty),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(NameTree::Alt),
            prop::collection::vec((weight(), inner.clone()), 2..4).prop_map(|ws| {
                NameTree::Union(
                    ws.into_iter()
                        .map(|(weight, tree)| Weighted { weight, tree })
                        .collect(),
                )
            }),
            (weight(), inner).prop_map(|(weight, tree)| {
                if weight == 1.0 {
                    tree
                } else {
                    NameTree::Union(vec![Weighted { weight, tree }])
                }
            }),
        ]
    })
}

fn prefix() -> impl Strategy<Value = Prefix> {
    prop::collection::vec(
        prop_oneof![3 => label().prop_map(|l| Elem::Label(l.into())), 1 => Just(Elem::Any)],
        0..3,
    )
    .prop_map(Prefix::new)
}

fn dentry() -> impl Strategy<Value = Dentry> {
    (prefix(), tree()).prop_map(|(prefix, dst)| Dentry { prefix, dst })
}

proptest! {
    #[test]
    fn tree_print_parse_round_trip(t in tree()) {
        let text = t.to_string();
        let back = NameTree::read(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(&back, &t, "{}", text);
        prop_assert_eq!(back.to_string(), text);
    }

    #[test]
    fn path_print_parse_round_trip(p in path()) {
        prop_assert_eq!(Path::read(&p.to_string()), Ok(p));
    }

    #[test]
    fn dtab_print_parse_round_trip(ds in prop::collection::vec(dentry(), 0..5)) {
        let d = Dtab::new(ds);
        let text = d.to_string();
        let back = Dtab::read(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(&back, &d, "{}", text);
        prop_assert_eq!(back.to_string(), text);
    }

    #[test]
    fn one_dentry_lookup_appends_the_residual(d in dentry(), p in path(), take_prefix in any::<bool>()) {
        // Half the time, look up a path built to match the prefix.
        let p = if take_prefix {
            let labels: Vec<Vec<u8>> = d.prefix.elems().iter().map(|e| match e {
                Elem::Label(l) => l.to_vec(),
                Elem::Any => b"any".to_vec(),
            }).collect();
            Path::from_labels(labels).concat(&p)
        } else {
            p
        };
        let got = Dtab::new([d.clone()]).lookup(&p);
        if d.prefix.matches(&p) {
            let residual = p.drop(d.prefix.len());
            prop_assert_eq!(got, d.dst.clone().map(|leaf| leaf.concat(&residual)));
        } else {
            prop_assert!(!take_prefix);
            prop_assert_eq!(got, NameTree::Neg);
        }
    }

    #[test]
    fn simplified_is_a_fixed_point_and_keeps_eval(t in tree()) {
        let s = t.clone().simplified();
        prop_assert_eq!(s.clone().simplified(), s.clone());
        prop_assert_eq!(s.eval(), t.eval());
    }
}
