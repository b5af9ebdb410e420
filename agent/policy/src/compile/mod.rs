//! The compiler: policies + pods + nodes -> the datapath's policy maps.
//!
//! Per local endpoint it makes a *plan* (the endpoint's identity, audit
//! mode, the policies isolating it per direction, and every grant: peer
//! identities x (protocol, port) blocks, with the rule each comes from), then
//! turns the plan into `POLICY` entries. Plans are cheap to make and compare;
//! entries are what costs, so an endpoint whose plan equals the previous
//! compilation's keeps its previous entries (shared, not copied), and the
//! diff skips it. Its state across compilations: that per-endpoint cache,
//! the CIDR cell allocator and the attribution interners.

mod entries;
pub(crate) mod prepare;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use weir_common::{EndpointPolicy, identity};

use crate::cidr::{Cidr, ip_key};
use crate::compiled::{Compiled, EndpointEntries};
use crate::input::{Input, PodInput, PolicyRef};
use crate::ports::Block;
use crate::spec::{Direction, Peer};

pub(crate) use entries::build as entries_build;
pub(crate) use prepare::Prepared;

/// Peers of a grant, as `POLICY` key identities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Peers {
    /// A rule without peers: `identity::ANY`.
    Any,
    /// Pod identities selected by pod/namespace selectors, sorted.
    Pods(Arc<[u32]>),
    /// CIDR cell identities of an ipBlock, sorted.
    Cells(Arc<[u32]>),
}

impl Peers {
    /// The identities the grant's entries are keyed by.
    pub fn identities(&self) -> &[u32] {
        const ANY: &[u32] = &[identity::ANY];
        match self {
            Peers::Any => ANY,
            Peers::Pods(ids) | Peers::Cells(ids) => ids,
        }
    }
}

/// Where a grant comes from: policy, direction, rule, peer and port index
/// (`None`: the rule has no peers / no ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Origin {
    pub pid: u32,
    pub direction: Direction,
    pub rule: u32,
    pub peer: Option<u32>,
    pub port: Option<u32>,
}

/// Traffic one rule allows: these peers on these (protocol, port) blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    pub peers: Peers,
    pub blocks: Arc<[Block]>,
    pub origin: Origin,
}

/// Everything an endpoint's map entries are made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub identity: u32,
    pub audit: bool,
    /// Policy ids isolating the endpoint: [ingress, egress], sorted.
    pub isolating: [Vec<u32>; 2],
    /// The node rule applies (ingress isolated and `allow_host_ingress`).
    pub host_rule: bool,
    pub grants: Vec<Grant>,
}

impl Plan {
    pub fn isolating(&self, d: Direction) -> &[u32] {
        &self.isolating[dir_index(d)]
    }
}

pub(crate) fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// One endpoint's output, kept for the next compilation.
struct Cached {
    plan: Plan,
    ep: EndpointPolicy,
    entries: Arc<EndpointEntries>,
    /// Attribution ids the endpoint's state uses.
    attrs: Arc<[u32]>,
}

/// Attribution ids: sets of policies, numbered from 1, never reused.
#[derive(Debug, Default)]
pub(crate) struct AttrInterner {
    /// Policy -> policy id (pid), and back.
    pids: HashMap<PolicyRef, u32>,
    refs: Vec<PolicyRef>,
    /// Sorted pid set -> attribution id, and id - 1 -> the policies.
    ids: HashMap<Box<[u32]>, u32>,
    sets: Vec<Arc<[PolicyRef]>>,
}

/// The pid of the built-in node rule.
pub(crate) const NODE_RULE_PID: u32 = 0;

impl AttrInterner {
    fn new() -> Self {
        let mut a = Self::default();
        let pid = a.pid(&PolicyRef::node_rule());
        debug_assert_eq!(pid, NODE_RULE_PID);
        a
    }

    pub fn pid(&mut self, r: &PolicyRef) -> u32 {
        if let Some(&pid) = self.pids.get(r) {
            return pid;
        }
        let pid = self.refs.len() as u32;
        self.refs.push(r.clone());
        self.pids.insert(r.clone(), pid);
        pid
    }

    pub fn policy(&self, pid: u32) -> &PolicyRef {
        &self.refs[pid as usize]
    }

    /// The id of a set of pids (sorted, deduplicated, non-empty).
    pub fn intern(&mut self, pids: &[u32]) -> u32 {
        debug_assert!(pids.windows(2).all(|w| w[0] < w[1]) && !pids.is_empty());
        if let Some(&id) = self.ids.get(pids) {
            return id;
        }
        let mut refs: Vec<PolicyRef> = pids
            .iter()
            .map(|&p| self.refs[p as usize].clone())
            .collect();
        refs.sort();
        self.sets.push(refs.into());
        let id = self.sets.len() as u32;
        self.ids.insert(pids.into(), id);
        id
    }

    pub fn get(&self, id: u32) -> Option<&Arc<[PolicyRef]>> {
        (id as usize).checked_sub(1).and_then(|i| self.sets.get(i))
    }
}

/// What the last compilation did, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Local endpoints compiled.
    pub endpoints: usize,
    /// Endpoints whose entries were made anew (the rest were reused).
    pub endpoints_rebuilt: usize,
    /// `POLICY` entries in total.
    pub policy_entries: usize,
    /// CIDR cells (distinct ipBlock boundaries).
    pub cells: usize,
    /// Attribution ids issued so far (they are never reused).
    pub attribution_ids: usize,
}

/// The stateful NetworkPolicy compiler (see the module docs).
pub struct Compiler {
    attrs: AttrInterner,
    cell_ids: HashMap<Cidr, u32>,
    next_cell: u32,
    cache: HashMap<u32, Cached>,
    stats: CompileStats,
}

impl Default for Compiler {
    fn default() -> Self {
        Self::new()
    }
}

impl Compiler {
    /// A compiler with nothing compiled yet.
    pub fn new() -> Self {
        Self {
            attrs: AttrInterner::new(),
            cell_ids: HashMap::new(),
            next_cell: identity::CIDR_BASE,
            cache: HashMap::new(),
            stats: CompileStats::default(),
        }
    }

    /// The policies an attribution id names, for any id this compiler ever
    /// issued (flows may carry ids of earlier compilations).
    pub fn attribution(&self, id: u32) -> Option<Arc<[PolicyRef]>> {
        self.attrs.get(id).cloned()
    }

    /// What the last [`Self::compile`] did.
    pub fn stats(&self) -> CompileStats {
        self.stats
    }

    /// Compiles the map contents for every local endpoint of `input` (pods
    /// with `endpoint` set: a host-side ifindex, or for a host-network pod
    /// the synthetic id its cgroup hooks use; when two pods claim one id,
    /// the first by namespace and name wins).
    pub fn compile(&mut self, input: &Input) -> Compiled {
        let mut prep = self.prepare(input);
        let mut pods: Vec<&PodInput> = input.pods.iter().filter(|p| p.endpoint.is_some()).collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        let mut out = Compiled::default();
        let mut live: HashSet<u32> = HashSet::new();
        let mut rebuilt = 0;
        for pod in pods {
            let Some(ifindex) = pod.endpoint else {
                continue;
            };
            if !live.insert(ifindex) {
                continue;
            }
            let plan = plan(&mut prep, pod);
            if !self.cache.get(&ifindex).is_some_and(|c| c.plan == plan) {
                rebuilt += 1;
                let (ep, entries, attrs) = entries::build(&mut self.attrs, ifindex, &plan);
                self.cache.insert(
                    ifindex,
                    Cached {
                        plan,
                        ep,
                        entries: Arc::new(entries),
                        attrs: attrs.into(),
                    },
                );
            }
            let cached = &self.cache[&ifindex];
            out.endpoints.insert(ifindex, cached.ep);
            out.policy.insert(ifindex, cached.entries.clone());
            for &id in cached.attrs.iter() {
                if let Some(set) = self.attrs.get(id) {
                    out.attributions.insert(id, set.clone());
                }
            }
        }
        self.cache.retain(|ifindex, _| live.contains(ifindex));

        out.ipcache = ipcache(input);
        out.cidr_cells = prep
            .cells
            .iter()
            .map(|(c, id)| ((c.trie_prefix(), c.ip_key()), *id))
            .collect();
        self.stats = CompileStats {
            endpoints: out.endpoints.len(),
            endpoints_rebuilt: rebuilt,
            policy_entries: out.policy_len(),
            cells: prep.cells.len(),
            attribution_ids: self.attrs.sets.len(),
        };
        out
    }

    /// Policy ids, the CIDR partition (allocating cells for new boundaries,
    /// forgetting gone ones) and the indexes of one compilation.
    pub(crate) fn prepare<'a>(&mut self, input: &'a Input) -> Prepared<'a> {
        let pids = input
            .policies
            .iter()
            .map(|p| self.attrs.pid(&PolicyRef::of(p)))
            .collect();

        let mut bounds: BTreeSet<Cidr> = BTreeSet::new();
        for policy in &input.policies {
            for rule in policy.ingress.iter().chain(&policy.egress) {
                for peer in &rule.peers {
                    if let Peer::IpBlock(b) = peer {
                        bounds.insert(b.cidr);
                        bounds.extend(b.except.iter().copied());
                    }
                }
            }
        }
        // An IPv6 block over the IPv4-mapped space would also catch IPv4
        // addresses in the trie: a boundary at IPv4 0.0.0.0/0 keeps them
        // out of it (that cell is only ever allowed by an IPv4 block).
        if bounds.iter().any(Cidr::covers_ipv4_space) {
            bounds.insert(Cidr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0).expect("valid"));
        }
        self.cell_ids.retain(|c, _| bounds.contains(c));
        let mut cells = Vec::with_capacity(bounds.len());
        for c in bounds {
            let id = *self.cell_ids.entry(c).or_insert_with(|| {
                let id = self.next_cell;
                self.next_cell += 1;
                id
            });
            cells.push((c, id));
        }
        Prepared::new(input, pids, cells)
    }

    pub(crate) fn attrs_mut(&mut self) -> &mut AttrInterner {
        &mut self.attrs
    }

    pub(crate) fn attrs(&self) -> &AttrInterner {
        &self.attrs
    }
}

/// The plan of one endpoint.
pub(crate) fn plan(prep: &mut Prepared<'_>, pod: &PodInput) -> Plan {
    let input = prep.input;
    let mut isolating = [Vec::new(), Vec::new()];
    let mut grants = Vec::new();
    for p in prep.selecting(pod) {
        let policy = &input.policies[p];
        for d in [Direction::Ingress, Direction::Egress] {
            if !policy.has_type(d) {
                continue;
            }
            isolating[dir_index(d)].push(prep.pids[p]);
            for r in 0..policy.rules(d).len() {
                let rg = prep.rule_grants(p, d, r);
                grants.extend(rg.fixed.iter().cloned());
                for (peers, name, proto, origin) in &rg.ingress_named {
                    let blocks = prepare::named_blocks(prepare::pod_ports(pod), name, *proto);
                    if !blocks.is_empty() {
                        grants.push(Grant {
                            peers: peers.clone(),
                            blocks: blocks.into(),
                            origin: *origin,
                        });
                    }
                }
            }
        }
    }
    for list in &mut isolating {
        list.sort_unstable();
        list.dedup();
    }
    let host_rule = !isolating[0].is_empty() && input.options.allow_host_ingress;
    Plan {
        identity: pod.identity,
        audit: prep.audit(pod),
        isolating,
        host_rule,
        grants,
    }
}

/// `IPCACHE`: pod addresses (first pod by namespace and name wins a shared
/// address; host-network pods' addresses are the node's; a pod without an
/// identity, 0, is left out: 0 means "any peer" in a `POLICY` key), then this
/// node's addresses as HOST and other nodes' as REMOTE_NODE, which win over pods.
pub(crate) fn ipcache(input: &Input) -> std::collections::BTreeMap<weir_common::IpKey, u32> {
    let mut pods: Vec<&PodInput> = input
        .pods
        .iter()
        .filter(|p| !p.host_network && p.identity != identity::ANY)
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut out = std::collections::BTreeMap::new();
    for pod in pods {
        for ip in &pod.ips {
            out.entry(ip_key(*ip)).or_insert(pod.identity);
        }
    }
    for ip in &input.nodes.remote_ips {
        out.insert(ip_key(*ip), identity::REMOTE_NODE);
    }
    for ip in &input.nodes.local_ips {
        out.insert(ip_key(*ip), identity::HOST);
    }
    out
}
