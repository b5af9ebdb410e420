//! One compilation's view of its input: indexes over pods, namespaces and
//! policies, selector results, named-port resolution and the CIDR partition.
//!
//! Built fresh for every compilation (it borrows the input), and everything
//! expensive is computed at most once per distinct question: a peer
//! selector's identities, an ipBlock's cells, a rule's grants.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{Grant, Origin, Peers};
use crate::cidr::Cidr;
use crate::input::{AUDIT_ANNOTATION, Input, NAMESPACE_NAME_LABEL, PodInput};
use crate::ports::Block;
use crate::selector::{LabelSelector, Labels};
use crate::spec::{Direction, IpBlock, NetworkPolicy, Peer, PolicyPort, PortValue, Protocol};

/// First identity a selector can match: below are reserved identities
/// (host, world, ...) that belong to no label set.
pub(crate) const FIRST_SELECTABLE_IDENTITY: u32 = 256;

/// A namespace's labels (with the name label the API server always sets)
/// and whether it is in audit mode.
pub(crate) struct NsInfo<'a> {
    pub labels: std::borrow::Cow<'a, Labels>,
    pub audit: bool,
}

/// Pods that selectors cannot tell apart: same namespace, labels and identity.
struct Group<'a> {
    namespace: &'a str,
    labels: &'a Labels,
    identity: u32,
}

/// Policies of one namespace, indexed by one `matchLabels` pair of their
/// pod selector so that finding the policies selecting a pod does not test
/// every policy of the namespace.
#[derive(Default)]
struct PolicyIndex<'a> {
    by_label: HashMap<(&'a str, &'a str), Vec<usize>>,
    others: Vec<usize>,
}

/// A port item of a rule after what does not depend on the endpoint is done.
enum PortItem<'a> {
    Blocks(Arc<[Block]>),
    Named(&'a str, Protocol),
}

/// A rule's grants that are the same for every endpoint the policy selects,
/// and its named ports on ingress, which resolve against the endpoint's pod.
#[derive(Default)]
pub(crate) struct RuleGrants<'a> {
    pub fixed: Vec<Grant>,
    pub ingress_named: Vec<(Peers, &'a str, Protocol, Origin)>,
}

type PeerKey<'a> = (
    Option<&'a str>,
    Option<&'a LabelSelector>,
    Option<&'a LabelSelector>,
);

/// The indexes and memos of one compilation (see the module docs).
pub(crate) struct Prepared<'a> {
    pub input: &'a Input,
    pub namespaces: BTreeMap<&'a str, NsInfo<'a>>,
    groups: Vec<Group<'a>>,
    groups_by_ns: HashMap<&'a str, Vec<usize>>,
    groups_by_label: HashMap<(&'a str, &'a str, &'a str), Vec<usize>>,
    /// Pods by selectable identity (their ports resolve named ports).
    pods_by_identity: HashMap<u32, Vec<&'a PodInput>>,
    /// Blocks of a (port name, protocol) over every pod, made on first use.
    named_all_memo: HashMap<(&'a str, Protocol), Arc<[Block]>>,
    policies: HashMap<&'a str, PolicyIndex<'a>>,
    /// Attribution policy id of each input policy.
    pub pids: Vec<u32>,
    /// The CIDR partition: every boundary prefix and its cell identity, in
    /// trie order.
    pub cells: Vec<(Cidr, u32)>,
    peer_memo: HashMap<PeerKey<'a>, Arc<[u32]>>,
    block_memo: HashMap<&'a IpBlock, Arc<[u32]>>,
    rule_memo: HashMap<(usize, Direction, usize), Arc<RuleGrants<'a>>>,
}

impl<'a> Prepared<'a> {
    pub fn new(input: &'a Input, pids: Vec<u32>, cells: Vec<(Cidr, u32)>) -> Self {
        let mut namespaces: BTreeMap<&str, NsInfo> = BTreeMap::new();
        for ns in &input.namespaces {
            let labels = if ns.labels.contains_key(NAMESPACE_NAME_LABEL) {
                std::borrow::Cow::Borrowed(&ns.labels)
            } else {
                let mut l = ns.labels.clone();
                l.insert(NAMESPACE_NAME_LABEL.to_owned(), ns.name.clone());
                std::borrow::Cow::Owned(l)
            };
            let audit = input.options.audit_all
                || ns
                    .annotations
                    .get(AUDIT_ANNOTATION)
                    .is_some_and(|v| v == "true");
            namespaces.insert(&ns.name, NsInfo { labels, audit });
        }
        for pod in &input.pods {
            namespaces.entry(&pod.namespace).or_insert_with(|| {
                let mut l = Labels::new();
                l.insert(NAMESPACE_NAME_LABEL.to_owned(), pod.namespace.clone());
                NsInfo {
                    labels: std::borrow::Cow::Owned(l),
                    audit: input.options.audit_all,
                }
            });
        }

        let mut groups: Vec<Group> = Vec::new();
        let mut groups_by_identity: HashMap<u32, Vec<usize>> = HashMap::new();
        let mut groups_by_ns: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut groups_by_label: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
        let mut pods_by_identity: HashMap<u32, Vec<&PodInput>> = HashMap::new();
        for pod in &input.pods {
            // A host-network pod with a reserved identity (the node's) must
            // not turn a pod selector into "allow the node".
            if pod.identity < FIRST_SELECTABLE_IDENTITY {
                continue;
            }
            pods_by_identity.entry(pod.identity).or_default().push(pod);
            // Pods of one identity nearly always share namespace and labels:
            // one comparison finds their group.
            let same = groups_by_identity.entry(pod.identity).or_default();
            if same
                .iter()
                .any(|&g| groups[g].namespace == pod.namespace && *groups[g].labels == pod.labels)
            {
                continue;
            }
            let g = groups.len();
            same.push(g);
            groups.push(Group {
                namespace: &pod.namespace,
                labels: &pod.labels,
                identity: pod.identity,
            });
            groups_by_ns.entry(&pod.namespace).or_default().push(g);
            for (k, v) in &pod.labels {
                groups_by_label
                    .entry((&pod.namespace, k, v))
                    .or_default()
                    .push(g);
            }
        }

        let mut policies: HashMap<&str, PolicyIndex> = HashMap::new();
        for (i, p) in input.policies.iter().enumerate() {
            let idx = policies.entry(&p.namespace).or_default();
            match p.pod_selector.match_labels.iter().next() {
                Some((k, v)) => idx.by_label.entry((k, v)).or_default().push(i),
                None => idx.others.push(i),
            }
        }

        Self {
            input,
            namespaces,
            groups,
            groups_by_ns,
            groups_by_label,
            pods_by_identity,
            named_all_memo: HashMap::new(),
            policies,
            pids,
            cells,
            peer_memo: HashMap::new(),
            block_memo: HashMap::new(),
            rule_memo: HashMap::new(),
        }
    }

    /// Whether the pod's namespace is in audit mode.
    pub fn audit(&self, pod: &PodInput) -> bool {
        self.namespaces
            .get(pod.namespace.as_str())
            .is_some_and(|n| n.audit)
    }

    /// Indexes (into `input.policies`) of the policies selecting the pod,
    /// in input order.
    pub fn selecting(&self, pod: &PodInput) -> Vec<usize> {
        let Some(idx) = self.policies.get(pod.namespace.as_str()) else {
            return Vec::new();
        };
        let mut out: Vec<usize> = idx.others.clone();
        for (k, v) in &pod.labels {
            if let Some(list) = idx.by_label.get(&(k.as_str(), v.as_str())) {
                out.extend_from_slice(list);
            }
        }
        out.sort_unstable();
        out.dedup();
        out.retain(|&i| self.input.policies[i].pod_selector.matches(&pod.labels));
        out
    }

    /// Identities of the pods a `podSelector`/`namespaceSelector` peer of a
    /// policy in `policy_ns` selects, sorted.
    fn peer_identities(
        &mut self,
        policy_ns: &'a str,
        pod_sel: Option<&'a LabelSelector>,
        ns_sel: Option<&'a LabelSelector>,
    ) -> Arc<[u32]> {
        let key = (ns_sel.is_none().then_some(policy_ns), pod_sel, ns_sel);
        if let Some(hit) = self.peer_memo.get(&key) {
            return hit.clone();
        }
        let ns_list: Vec<&str> = match ns_sel {
            None => vec![policy_ns],
            Some(sel) => self
                .namespaces
                .iter()
                .filter(|(_, info)| sel.matches(&info.labels))
                .map(|(name, _)| *name)
                .collect(),
        };
        let mut ids = Vec::new();
        for ns in ns_list {
            let candidates = match pod_sel.and_then(|s| s.match_labels.iter().next()) {
                Some((k, v)) => self.groups_by_label.get(&(ns, k.as_str(), v.as_str())),
                None => self.groups_by_ns.get(ns),
            };
            for &g in candidates.into_iter().flatten() {
                let group = &self.groups[g];
                debug_assert_eq!(group.namespace, ns);
                if pod_sel.is_none_or(|s| s.matches(group.labels)) {
                    ids.push(group.identity);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let ids: Arc<[u32]> = ids.into();
        self.peer_memo.insert(key, ids.clone());
        ids
    }

    /// Cell identities an ipBlock allows: every boundary prefix inside
    /// `cidr` that no `except` contains.
    fn block_cells(&mut self, block: &'a IpBlock) -> Arc<[u32]> {
        if let Some(hit) = self.block_memo.get(block) {
            return hit.clone();
        }
        // Boundaries inside the cidr start in [cidr start, cidr end] and are
        // not shorter; in trie order they are one run from the cidr itself.
        let start = self.cells.partition_point(|(c, _)| *c < block.cidr);
        let mut ids: Vec<u32> = self.cells[start..]
            .iter()
            .take_while(|(c, _)| {
                (c.trie_bits() & crate::cidr::mask128(block.cidr.trie_prefix()))
                    == block.cidr.trie_bits()
            })
            .filter(|(c, _)| block.cidr.contains(c) && !block.except.iter().any(|e| e.contains(c)))
            .map(|(_, id)| *id)
            .collect();
        ids.sort_unstable();
        let ids: Arc<[u32]> = ids.into();
        self.block_memo.insert(block, ids.clone());
        ids
    }

    fn resolve_peer(&mut self, policy: &'a NetworkPolicy, peer: &'a Peer) -> Peers {
        match peer {
            Peer::Pods {
                pod_selector,
                namespace_selector,
            } => Peers::Pods(self.peer_identities(
                &policy.namespace,
                pod_selector.as_ref(),
                namespace_selector.as_ref(),
            )),
            Peer::IpBlock(block) => Peers::Cells(self.block_cells(block)),
        }
    }

    /// The grants of rule `r` of policy `p` in direction `d` that do not
    /// depend on the endpoint, and the ingress named ports that do.
    pub fn rule_grants(&mut self, p: usize, d: Direction, r: usize) -> Arc<RuleGrants<'a>> {
        if let Some(hit) = self.rule_memo.get(&(p, d, r)) {
            return hit.clone();
        }
        let input = self.input;
        let policy: &'a NetworkPolicy = &input.policies[p];
        let rule = &policy.rules(d)[r];
        let pid = self.pids[p];
        let peers: Vec<(Option<u32>, Peers)> = if rule.peers.is_empty() {
            vec![(None, Peers::Any)]
        } else {
            rule.peers
                .iter()
                .enumerate()
                .map(|(j, peer)| (Some(j as u32), self.resolve_peer(policy, peer)))
                .collect()
        };
        let ports: Vec<(Option<u32>, PortItem<'a>)> = if rule.ports.is_empty() {
            vec![(None, PortItem::Blocks(Arc::from([Block::ALL])))]
        } else {
            rule.ports
                .iter()
                .enumerate()
                .map(|(k, port)| (Some(k as u32), port_item(port)))
                .collect()
        };
        let mut out = RuleGrants::default();
        for (peer_idx, peer) in &peers {
            if peer.identities().is_empty() {
                continue;
            }
            for (port_idx, item) in &ports {
                let origin = Origin {
                    pid,
                    direction: d,
                    rule: r as u32,
                    peer: *peer_idx,
                    port: *port_idx,
                };
                match item {
                    PortItem::Blocks(blocks) => out.fixed.push(Grant {
                        peers: peer.clone(),
                        blocks: blocks.clone(),
                        origin,
                    }),
                    PortItem::Named(name, proto) => match d {
                        Direction::Ingress => {
                            out.ingress_named.push((peer.clone(), name, *proto, origin));
                        }
                        Direction::Egress => {
                            self.egress_named(peer, name, *proto, origin, &mut out.fixed);
                        }
                    },
                }
            }
        }
        let out = Arc::new(out);
        self.rule_memo.insert((p, d, r), out.clone());
        out
    }

    /// Egress named ports resolve against the destination: per peer
    /// identity, the ports of that identity's pods; for any peer and CIDR
    /// cells, the ports of that name on every known pod.
    fn egress_named(
        &mut self,
        peer: &Peers,
        name: &'a str,
        proto: Protocol,
        origin: Origin,
        out: &mut Vec<Grant>,
    ) {
        match peer {
            Peers::Pods(ids) => {
                // Identities with the same resolution share one grant.
                let mut by_blocks: BTreeMap<Vec<Block>, Vec<u32>> = BTreeMap::new();
                for &id in ids.iter() {
                    let pods = self
                        .pods_by_identity
                        .get(&id)
                        .map_or(&[][..], Vec::as_slice);
                    let blocks = named_blocks(pods.iter().flat_map(|p| pod_ports(p)), name, proto);
                    if !blocks.is_empty() {
                        by_blocks.entry(blocks).or_default().push(id);
                    }
                }
                for (blocks, ids) in by_blocks {
                    out.push(Grant {
                        peers: Peers::Pods(ids.into()),
                        blocks: blocks.into(),
                        origin,
                    });
                }
            }
            Peers::Any | Peers::Cells(_) => {
                let input = self.input;
                let blocks = self
                    .named_all_memo
                    .entry((name, proto))
                    .or_insert_with(|| {
                        named_blocks(input.pods.iter().flat_map(pod_ports), name, proto).into()
                    })
                    .clone();
                if !blocks.is_empty() {
                    out.push(Grant {
                        peers: peer.clone(),
                        blocks,
                        origin,
                    });
                }
            }
        }
    }
}

/// A pod's named ports as (name, protocol, port).
pub(crate) fn pod_ports(pod: &PodInput) -> impl Iterator<Item = (&str, Protocol, u16)> {
    pod.ports
        .iter()
        .filter_map(|p| p.name.as_deref().map(|n| (n, p.protocol, p.port)))
}

/// Blocks of the ports called `name` with protocol `proto`, sorted, deduplicated.
pub(crate) fn named_blocks<'p>(
    ports: impl Iterator<Item = (&'p str, Protocol, u16)>,
    name: &str,
    proto: Protocol,
) -> Vec<Block> {
    let mut blocks: Vec<Block> = ports
        .filter(|(n, p, _)| *n == name && *p == proto)
        .map(|(_, p, port)| Block::port(p.ip_proto(), port))
        .collect();
    blocks.sort_unstable();
    blocks.dedup();
    blocks
}

fn port_item(port: &PolicyPort) -> PortItem<'_> {
    let proto = port.protocol.ip_proto();
    match &port.port {
        None => PortItem::Blocks(Arc::from([Block::protocol(proto)])),
        Some(PortValue::Number(lo)) => {
            PortItem::Blocks(Block::range(proto, *lo, port.end_port.unwrap_or(*lo)).into())
        }
        Some(PortValue::Name(name)) => PortItem::Named(name, port.protocol),
    }
}
