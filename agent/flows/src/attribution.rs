//! The attribution table: the ids the datapath writes into events
//! (`FlowEvent::policy_attr`) mapped to the policies they name.
//!
//! Written by the agent's policy controller whenever the compiler interns a
//! new set, read by the decoder for every event that carries an id. Ids are
//! never reused for another set, so an event decoded after a recompile still
//! names the policies that decided it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::flow::Policies;

/// Attribution id -> policies, shared between the writer and the decoders.
#[derive(Debug, Default)]
pub struct Attribution {
    sets: RwLock<HashMap<u32, Policies>>,
}

impl Attribution {
    /// An empty table.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The policies of `id`; `None` for 0 and unknown ids.
    #[inline]
    pub fn get(&self, id: u32) -> Option<Policies> {
        if id == 0 {
            return None;
        }
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        sets.get(&id).cloned()
    }

    /// Records (or replaces) the policies of `id`.
    pub fn insert(&self, id: u32, policies: Policies) {
        let mut sets = self.sets.write().unwrap_or_else(|e| e.into_inner());
        sets.insert(id, policies);
    }

    /// How many ids are known.
    pub fn len(&self) -> usize {
        self.sets.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no id is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
