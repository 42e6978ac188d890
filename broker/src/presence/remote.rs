//! Presence across nodes: the members other nodes have in a room, and how they merge
//! with this node's.
//!
//! A room's merged view is one entry per user: the connections of every node added up,
//! the info of this node's entry (else another's), and the state keys of all of them.
//! This node tells the others its own members of a room after each change
//! ([`Roster::publish`]); for the rooms it has watchers in, it follows the others' lists
//! ([`Roster::follow`]), and each list that arrives ([`super::Presence::remote`]) is
//! compared with the one before, so that watchers here get a join, a leave or an update
//! of the merged view, once. A user on two nodes who leaves one is an update, not a
//! leave. A node that dies has its lists dropped by the others within the cluster's
//! presence TTL (the Redis engine keeps the liveness of nodes).

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use rtc_proto::v1;

/// What a node tells the rest of the cluster of its rooms, and asks of it. Defined
/// here, implemented by the Redis engine (`crate::cluster`); a broker on its own has
/// none.
pub trait Roster: Send + Sync + std::fmt::Debug {
    /// This node's members of `room` are now `members` (empty: none). Never waits.
    fn publish(&self, room: &str, members: Vec<v1::PresenceMember>);
    /// Watchers of `room` are here now: send the other nodes' lists of it, the current
    /// ones first, to `Presence::remote`.
    fn follow(&self, room: &str);
    /// The last watcher of `room` here left.
    fn unfollow(&self, room: &str);
    /// The other live nodes' lists of `room`, by node (for a query of a room not
    /// followed here).
    fn fetch(&self, room: &str) -> BoxFuture<'static, Vec<(String, Vec<v1::PresenceMember>)>>;
}

/// The lists of other nodes in one room, by node, each by user.
pub type Lists = BTreeMap<String, BTreeMap<String, v1::PresenceMember>>;

/// Adds `other` (the same user on another node) to `into`.
pub fn merge(into: &mut v1::PresenceMember, other: &v1::PresenceMember) {
    into.connections += other.connections;
    if into.info.is_empty() {
        into.info = other.info.clone();
    }
    for (k, v) in &other.state {
        into.state.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

/// `user`'s merged entry: `local` (this node's, if any) with every other node's.
pub fn merged(
    user: &str,
    local: Option<v1::PresenceMember>,
    lists: &Lists,
) -> Option<v1::PresenceMember> {
    let mut out = local;
    for list in lists.values() {
        if let Some(m) = list.get(user) {
            match &mut out {
                Some(o) => merge(o, m),
                None => out = Some(m.clone()),
            }
        }
    }
    out
}

/// A list as it arrives, by user.
pub fn by_user(members: Vec<v1::PresenceMember>) -> BTreeMap<String, v1::PresenceMember> {
    members.into_iter().map(|m| (m.user.clone(), m)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(
        user: &str,
        info: &str,
        connections: u32,
        state: &[(&str, &str)],
    ) -> v1::PresenceMember {
        v1::PresenceMember {
            user: user.into(),
            info: info.into(),
            connections,
            state: state
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_user_on_several_nodes_is_one_entry_with_their_connections_added() {
        let mut lists = Lists::new();
        lists.insert(
            "n2".into(),
            by_user(vec![member("ana", r#"{"n":2}"#, 2, &[("typing", "1")])]),
        );
        lists.insert(
            "n3".into(),
            by_user(vec![member("ana", "", 1, &[("away", "1")])]),
        );
        let local = Some(member("ana", r#"{"n":1}"#, 1, &[]));
        let m = merged("ana", local, &lists).unwrap();
        assert_eq!((m.connections, m.info.as_str()), (4, r#"{"n":1}"#));
        assert_eq!(m.state.len(), 2, "state keys of every node");
        assert!(merged("bob", None, &lists).is_none());
        let only_remote = merged("ana", None, &lists).unwrap();
        assert_eq!(
            (only_remote.connections, only_remote.info.as_str()),
            (3, r#"{"n":2}"#)
        );
    }
}
