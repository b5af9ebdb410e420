//! A plan -> `POLICY` entries and the `POLICY_EP` value.
//!
//! The datapath's trie returns only the longest match, so each entry's
//! attribution is the union of the policies of every grant whose block
//! contains it (for that endpoint, identity and direction). Grants of
//! `identity::ANY` are folded into each specific identity's entries they
//! contain, and where an ANY block lies strictly inside a specific
//! identity's block it is repeated under that identity, so that the first
//! lookup that hits names every policy allowing the packet. Verdicts do not
//! change: everything added lies inside what the identity already allows.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use weir_common::{EndpointPolicy, PolicyValue, ep_flag, identity};

use super::{AttrInterner, NODE_RULE_PID, Peers, Plan};
use crate::compiled::EndpointEntries;
use crate::ports::Block;
use crate::spec::Direction;

/// The union of the pids of `b` and of every block containing it.
fn union_over_ancestors(b: Block, maps: &[&BTreeMap<Block, Vec<u32>>], out: &mut Vec<u32>) {
    out.clear();
    for a in b.ancestors().chain(std::iter::once(b)) {
        for m in maps {
            if let Some(pids) = m.get(&a) {
                out.extend_from_slice(pids);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
}

/// An identity's entries as (block, attribution id), shared by every
/// identity with the same grants.
type Template = Vec<(Block, u32)>;

fn grouped(list: &[(Block, u32)]) -> BTreeMap<Block, Vec<u32>> {
    let mut m: BTreeMap<Block, Vec<u32>> = BTreeMap::new();
    for (b, pid) in list {
        m.entry(*b).or_default().push(*pid);
    }
    for pids in m.values_mut() {
        pids.sort_unstable();
        pids.dedup();
    }
    m
}

/// Makes the endpoint's `POLICY_EP` value and `POLICY` entries, and lists
/// the attribution ids they use.
pub(crate) fn build(
    attrs: &mut AttrInterner,
    ifindex: u32,
    plan: &Plan,
) -> (EndpointPolicy, EndpointEntries, Vec<u32>) {
    let mut ep = EndpointPolicy {
        identity: plan.identity,
        flags: if plan.audit { ep_flag::AUDIT } else { 0 },
        ..EndpointPolicy::default()
    };
    let mut entries = EndpointEntries::new();
    let mut used: BTreeSet<u32> = BTreeSet::new();
    let mut scratch = Vec::new();

    for d in [Direction::Ingress, Direction::Egress] {
        let isolating = plan.isolating(d);
        if isolating.is_empty() {
            continue;
        }
        let deny = attrs.intern(isolating);
        used.insert(deny);
        match d {
            Direction::Ingress => {
                ep.flags |= ep_flag::INGRESS_ENFORCED;
                ep.ingress_deny_attr = deny;
            }
            Direction::Egress => {
                ep.flags |= ep_flag::EGRESS_ENFORCED;
                ep.egress_deny_attr = deny;
            }
        }
        let dir = d.datapath();

        let mut any_list: Vec<(Block, u32)> = Vec::new();
        let mut per_id: BTreeMap<u32, Vec<(Block, u32)>> = BTreeMap::new();
        for g in plan.grants.iter().filter(|g| g.origin.direction == d) {
            let pid = g.origin.pid;
            match &g.peers {
                Peers::Any => any_list.extend(g.blocks.iter().map(|b| (*b, pid))),
                Peers::Pods(ids) | Peers::Cells(ids) => {
                    for id in ids.iter() {
                        per_id
                            .entry(*id)
                            .or_default()
                            .extend(g.blocks.iter().map(|b| (*b, pid)));
                    }
                }
            }
        }
        if d == Direction::Ingress && plan.host_rule {
            per_id
                .entry(identity::HOST)
                .or_default()
                .push((Block::ALL, NODE_RULE_PID));
        }
        let any = grouped(&any_list);

        let mut emit = |id: u32, b: Block, attr: u32| {
            entries.insert(
                (b.prefix_len(), b.key(ifindex, id, dir)),
                PolicyValue { attr, _pad: [0; 4] },
            );
        };

        for b in any.keys() {
            union_over_ancestors(*b, &[&any], &mut scratch);
            let attr = attrs.intern(&scratch);
            used.insert(attr);
            emit(identity::ANY, *b, attr);
        }

        // Identities with the same grants get the same entries: make them once.
        let mut templates: HashMap<Vec<(Block, u32)>, Template> = HashMap::new();
        for (id, mut list) in per_id {
            list.sort_unstable();
            list.dedup();
            if !templates.contains_key(&list) {
                let own = grouped(&list);
                let mut targets: BTreeSet<Block> = own.keys().copied().collect();
                for a in any.keys() {
                    if a.ancestors().any(|p| own.contains_key(&p)) {
                        targets.insert(*a);
                    }
                }
                let mut template = Vec::with_capacity(targets.len());
                for t in targets {
                    union_over_ancestors(t, &[&own, &any], &mut scratch);
                    let attr = attrs.intern(&scratch);
                    used.insert(attr);
                    template.push((t, attr));
                }
                templates.insert(list.clone(), template);
            }
            for (b, attr) in &templates[&list] {
                emit(id, *b, *attr);
            }
        }
    }
    (ep, entries, used.into_iter().collect())
}
