//! Origins: the nodes that coordinated writes, interned to a small id so that every
//! entry carries its version in a few bytes.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

/// Index of an origin in the [`OriginTable`]. Id 0 is always the local node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OriginId(pub u32);

impl OriginId {
    pub const LOCAL: OriginId = OriginId(0);
}

/// A node that coordinates writes, and the region it lives in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub node_id: Arc<str>,
    pub region: Arc<str>,
}

#[derive(Debug, Default)]
struct Inner {
    by_index: Vec<Origin>,
    by_node: HashMap<Arc<str>, OriginId>,
}

/// Interns origins. Entries are never removed: a node id that once wrote keeps its id.
#[derive(Debug)]
pub struct OriginTable {
    inner: RwLock<Inner>,
}

impl OriginTable {
    /// A table whose origin 0 is the local node.
    pub fn new(local: Origin) -> Self {
        let mut inner = Inner::default();
        inner.by_node.insert(local.node_id.clone(), OriginId::LOCAL);
        inner.by_index.push(local);
        OriginTable { inner: RwLock::new(inner) }
    }

    /// The id of `node_id`, registering it (with `region`) when new. A known node
    /// that reports another region keeps its id; its region is updated.
    pub fn intern(&self, node_id: &str, region: &str) -> OriginId {
        if let Some(id) = self.lookup(node_id) {
            let inner = self.inner.read();
            if &*inner.by_index[id.0 as usize].region == region {
                return id;
            }
            drop(inner);
            let mut inner = self.inner.write();
            inner.by_index[id.0 as usize].region = region.into();
            return id;
        }
        let mut inner = self.inner.write();
        if let Some(id) = inner.by_node.get(node_id) {
            return *id;
        }
        let id = OriginId(inner.by_index.len() as u32);
        let origin = Origin { node_id: node_id.into(), region: region.into() };
        inner.by_node.insert(origin.node_id.clone(), id);
        inner.by_index.push(origin);
        id
    }

    pub fn lookup(&self, node_id: &str) -> Option<OriginId> {
        self.inner.read().by_node.get(node_id).copied()
    }

    pub fn get(&self, id: OriginId) -> Option<Origin> {
        self.inner.read().by_index.get(id.0 as usize).cloned()
    }

    pub fn local(&self) -> Origin {
        self.inner.read().by_index[0].clone()
    }

    /// Total order of two origins for the version tie-break: by node id.
    pub fn cmp(&self, a: OriginId, b: OriginId) -> Ordering {
        if a == b {
            return Ordering::Equal;
        }
        let inner = self.inner.read();
        let name = |id: OriginId| inner.by_index.get(id.0 as usize).map(|o| o.node_id.clone());
        name(a).cmp(&name(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> OriginTable {
        OriginTable::new(Origin { node_id: "eu-0".into(), region: "eu".into() })
    }

    #[test]
    fn the_local_node_is_origin_zero() {
        let t = table();
        assert_eq!(t.lookup("eu-0"), Some(OriginId::LOCAL));
        assert_eq!(&*t.local().region, "eu");
    }

    #[test]
    fn interning_the_same_node_twice_gives_the_same_id() {
        let t = table();
        let a = t.intern("us-1", "us");
        let b = t.intern("us-1", "us");
        assert_eq!(a, b);
        assert_ne!(a, OriginId::LOCAL);
        assert_eq!(&*t.get(a).unwrap().region, "us");
    }

    #[test]
    fn the_tie_break_orders_origins_by_node_id() {
        let t = table();
        let z = t.intern("zz", "ap");
        let a = t.intern("aa", "us");
        assert_eq!(t.cmp(a, z), Ordering::Less);
        assert_eq!(t.cmp(OriginId::LOCAL, a), Ordering::Greater);
    }
}
