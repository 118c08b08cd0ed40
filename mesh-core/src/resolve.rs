//! What a name resolves to: the model shared by resolvers (mesh-discovery's namers) and
//! the balancer.
//!
//! A resolver publishes a [`Resolution`] per bound name through a [`tokio::sync::watch`]
//! channel: the whole current endpoint set, or that the name does not exist. A watch of
//! whole sets, rather than a stream of deltas, means a slow consumer only ever sees the
//! newest set (no backlog grows) and a new consumer starts from the current one; the
//! balancer turns consecutive sets into `tower::discover::Change`s itself
//! ([`diff`] gives the same changes to any other consumer).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::target::Endpoint;

/// What a bound name resolves to right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The first answer has not arrived yet.
    Pending,
    /// The name does not exist (a missing file, NXDOMAIN); why, in words.
    DoesNotExist(Arc<str>),
    /// The endpoints serving the name, by address (possibly none).
    Endpoints(Arc<BTreeMap<SocketAddr, Endpoint>>),
}

impl Resolution {
    /// A resolution to `endpoints` (a later duplicate address replaces an earlier one).
    pub fn endpoints(endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        Resolution::Endpoints(Arc::new(
            endpoints.into_iter().map(|e| (e.addr(), e)).collect(),
        ))
    }

    /// The endpoints, if the name exists and has been resolved.
    pub fn endpoint_set(&self) -> Option<&BTreeMap<SocketAddr, Endpoint>> {
        match self {
            Resolution::Endpoints(set) => Some(set),
            Resolution::Pending | Resolution::DoesNotExist(_) => None,
        }
    }
}

/// One change between two endpoint sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// An endpoint joined (or changed: removed, then added with its new details).
    Add(Endpoint),
    /// The endpoint at this address left.
    Remove(SocketAddr),
}

/// The changes that turn `old` into `new`: removals first, then additions. An endpoint whose
/// details changed (weight, identity, labels) is removed and added again.
pub fn diff(
    old: &BTreeMap<SocketAddr, Endpoint>,
    new: &BTreeMap<SocketAddr, Endpoint>,
) -> Vec<Update> {
    let mut changes: Vec<Update> = old
        .iter()
        .filter(|(addr, e)| new.get(addr) != Some(e))
        .map(|(addr, _)| Update::Remove(*addr))
        .collect();
    changes.extend(
        new.iter()
            .filter(|(addr, e)| old.get(addr) != Some(e))
            .map(|(_, e)| Update::Add(e.clone())),
    );
    changes
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn diff_removes_then_adds_and_replaces_changed_endpoints() {
        let old = Resolution::endpoints([ep(1), ep(2), ep(3)]);
        let heavier = ep(3).with_weight(NonZeroU32::new(5).expect("5"));
        let new = Resolution::endpoints([ep(2), heavier.clone(), ep(4)]);
        let changes = diff(
            old.endpoint_set().expect("set"),
            new.endpoint_set().expect("set"),
        );
        assert_eq!(
            changes,
            vec![
                Update::Remove(ep(1).addr()),
                Update::Remove(ep(3).addr()),
                Update::Add(heavier),
                Update::Add(ep(4)),
            ]
        );
        assert!(
            diff(
                new.endpoint_set().expect("s"),
                new.endpoint_set().expect("s")
            )
            .is_empty()
        );
    }
}
