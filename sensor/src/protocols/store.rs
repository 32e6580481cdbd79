//! Where the operation summaries of all flows live: one store per flow
//! table, holding fixed-size entries in chunks, linked per flow.
//!
//! A flow that shows operations (most OT flows) used to own two heap
//! allocations (a box and a vector); at 100k flows that was a fifth of the
//! table's memory and two allocator round trips per flow. Here a flow holds
//! the number of its first entry (4 bytes), entries are 56 bytes with no
//! allocator overhead, and freed entries are reused. Parsers count into
//! the list through an [`Ops`] handle.

use std::borrow::Cow;

use tidewatch_proto::v1::{Operation, OperationClass};

use super::{write_operations, OpEntry, MAX_OPERATIONS};
use crate::slab::Slab;

/// "No entry": the end of a list, or a flow without operations.
pub const NONE: u32 = u32::MAX;

const CHUNK_BITS: u32 = 10;

struct Node {
    entry: OpEntry,
    next: u32,
}

const EMPTY: OpEntry = OpEntry {
    code: 0,
    class: OperationClass::Unspecified,
    name: Cow::Borrowed(""),
    count: 0,
    errors: 0,
};

/// The operation entries of every flow of one table.
#[derive(Default)]
pub struct OpStore {
    nodes: Slab<Node, CHUNK_BITS>,
    /// Entries of a flow being reported.
    taken: Vec<OpEntry>,
}

impl OpStore {
    fn node(&mut self, i: u32) -> &mut Node {
        self.nodes.get_mut(i)
    }

    fn alloc_detached(&mut self, entry: OpEntry) -> u32 {
        self.nodes.insert(Node { entry, next: NONE })
    }

    /// The entry of the list at `head` that is `same`, or a `new` one added
    /// at its end; `None` when the list is full ([`MAX_OPERATIONS`]).
    pub(super) fn find_or_add(
        &mut self,
        head: &mut u32,
        same: impl Fn(&OpEntry) -> bool,
        new: impl FnOnce() -> OpEntry,
    ) -> Option<&mut OpEntry> {
        let (mut at, mut last, mut len) = (*head, NONE, 0);
        while at != NONE {
            let n = self.node(at);
            if same(&n.entry) {
                break;
            }
            (last, at, len) = (at, n.next, len + 1);
        }
        if at == NONE {
            if len >= MAX_OPERATIONS {
                return None;
            }
            at = self.alloc_detached(new());
            match last {
                NONE => *head = at,
                prev => self.node(prev).next = at,
            }
        }
        Some(&mut self.node(at).entry)
    }

    /// Copies of the entries of the list at `head`.
    pub(super) fn entries(&self, head: u32) -> Vec<OpEntry> {
        let mut v = Vec::new();
        let mut at = head;
        while at != NONE {
            let n = self.nodes.get(at);
            v.push(n.entry.clone());
            at = n.next;
        }
        v
    }

    /// The operations of the list at `head`, ordered by code then name,
    /// written over `out`; the entries are freed and `head` becomes [`NONE`].
    pub(super) fn take_into(&mut self, head: &mut u32, out: &mut Vec<Operation>) {
        let mut v = std::mem::take(&mut self.taken);
        let mut at = std::mem::replace(head, NONE);
        while at != NONE {
            let n = self.node(at);
            v.push(std::mem::replace(&mut n.entry, EMPTY));
            let next = n.next;
            self.nodes.release(at);
            at = next;
        }
        write_operations(&mut v, out);
        self.taken = v;
    }

    /// Entries in use (for tests and accounting).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every entry and gives the memory back.
    pub fn clear(&mut self) {
        *self = OpStore::default();
    }
}
