//! The policy controller: compiles the cluster model's NetworkPolicies with
//! weir-policy and keeps the datapath's policy maps in step with the result.
//!
//! It runs whenever the model changes (manifests, endpoints), before a new
//! endpoint's programs are attached, so no packet of a pod ever passes the
//! datapath without its policy. Only changed entries are written, in the
//! order that never denies what both the old and the new state allow (see
//! [`weir_policy::MapChanges`]); then the policy generation is bumped so
//! established connections are checked again. Attribution sets reach the
//! flow decoder before any event can name them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use weir_datapath::{DatapathError, PolicyMaps};
use weir_flows::Attribution;
use weir_policy::{
    Compiled, Compiler, Input, NamespaceInput, NodeInput, Options, PodInput, PodPort, PolicyRef,
};
use weir_state::{ClusterState, EndpointIndex};

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Map entries written or deleted.
    pub changes: usize,
    /// Entries in the rule map after the sync.
    pub rules: usize,
    /// Policed endpoints.
    pub endpoints: usize,
    /// Policies compiled.
    pub policies: usize,
    /// The generation the datapath runs now (unchanged when nothing changed).
    pub generation: u32,
    /// Time spent compiling and writing.
    pub elapsed: Duration,
    /// Map writes that failed (the next sync writes everything again).
    pub failed_writes: usize,
}

/// Compiler state, the last state written, and the attribution table.
pub struct PolicyController {
    compiler: Compiler,
    last: Compiled,
    options: Options,
    attribution: Arc<Attribution>,
    /// Attribution ids already published to the decoder.
    published: BTreeSet<u32>,
    /// A write failed: the next sync rewrites every entry.
    rewrite_all: bool,
    /// This node's hostNetwork pods, policed through their cgroups.
    pub host: HostPods,
}

impl std::fmt::Debug for PolicyController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyController")
            .field("options", &self.options)
            .field("rules", &self.last.policy_len())
            .finish_non_exhaustive()
    }
}

impl PolicyController {
    /// A controller with nothing written yet.
    /// `cgroup_root`: where hostNetwork pods' cgroups are looked for
    /// (`None`: no hostNetwork pod is policed).
    pub fn new(
        options: Options,
        attribution: Arc<Attribution>,
        cgroup_root: Option<PathBuf>,
    ) -> Self {
        Self {
            compiler: Compiler::new(),
            last: Compiled::default(),
            options,
            attribution,
            published: BTreeSet::new(),
            rewrite_all: false,
            host: HostPods::new(cgroup_root),
        }
    }

    /// The last state written to the maps.
    pub fn compiled(&self) -> &Compiled {
        &self.last
    }

    /// Whether a write failed and the next sync must rewrite everything,
    /// or a hostNetwork pod's cgroup is still to be found.
    pub fn needs_retry(&self) -> bool {
        self.rewrite_all || self.host.unresolved() > 0
    }

    /// The compiler options.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Compiles `input` and writes what changed into `maps`.
    pub fn sync(&mut self, input: &Input, maps: &mut PolicyMaps) -> SyncReport {
        let started = Instant::now();
        let compiled = self.compiler.compile(input);
        self.publish_attribution(&compiled);
        let changes = if self.rewrite_all {
            compiled.diff(&Compiled::default())
        } else {
            compiled.diff(&self.last)
        };
        let mut report = SyncReport {
            changes: changes.len(),
            rules: compiled.policy_len(),
            endpoints: compiled.endpoints().len(),
            policies: input.policies.len(),
            generation: maps.generation(),
            ..SyncReport::default()
        };
        if !changes.is_empty() {
            let mut failed = 0usize;
            let mut note = |r: Result<(), DatapathError>| {
                if let Err(e) = r {
                    failed += 1;
                    if failed <= 3 {
                        warn!(error = %e, "writing a policy map entry failed");
                    }
                }
            };
            // 1. New allows (and the addresses and cells they refer to).
            for ((prefix, key), value) in &changes.policy.upserts {
                note(maps.set_rule(*prefix, *key, *value));
            }
            for ((prefix, key), cell) in &changes.cidr_cells.upserts {
                note(maps.set_cidr(*prefix, *key, *cell));
            }
            for (key, id) in &changes.ipcache.upserts {
                note(maps.set_ip(*key, *id));
            }
            // 2. Isolation switches.
            for (ifindex, ep) in &changes.policy_ep.upserts {
                note(maps.set_endpoint(*ifindex, *ep));
            }
            for ifindex in &changes.policy_ep.deletes {
                note(maps.remove_endpoint(*ifindex));
            }
            // 3. What nothing refers to any more.
            for (prefix, key) in &changes.policy.deletes {
                note(maps.remove_rule(*prefix, *key));
            }
            for (prefix, key) in &changes.cidr_cells.deletes {
                note(maps.remove_cidr(*prefix, *key));
            }
            for key in &changes.ipcache.deletes {
                note(maps.remove_ip(*key));
            }
            match maps.bump_generation() {
                Ok(g) => report.generation = g,
                Err(e) => {
                    failed += 1;
                    warn!(error = %e, "bumping the policy generation failed");
                }
            }
            report.failed_writes = failed;
            self.rewrite_all = failed > 0;
        }
        self.last = compiled;
        report.elapsed = started.elapsed();
        if report.changes > 0 {
            info!(
                changes = report.changes,
                rules = report.rules,
                endpoints = report.endpoints,
                policies = report.policies,
                generation = report.generation,
                failed = report.failed_writes,
                ms = report.elapsed.as_secs_f64() * 1e3,
                "policy maps updated"
            );
        } else {
            debug!("policy unchanged");
        }
        report
    }

    /// Hands the decoder every attribution set it has not seen yet.
    fn publish_attribution(&mut self, compiled: &Compiled) {
        for (id, set) in compiled.attributions() {
            if self.published.insert(*id) {
                self.attribution.insert(*id, flow_policies(set));
            }
        }
    }
}

/// An attribution set as flows name it.
fn flow_policies(set: &[PolicyRef]) -> weir_flows::flow::Policies {
    set.iter()
        .map(|p| weir_flows::flow::Policy {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            labels: Vec::new(),
            revision: 0,
            kind: if p.is_node_rule() {
                "Weir".to_owned()
            } else {
                "NetworkPolicy".to_owned()
            },
        })
        .collect()
}

/// The compiler's input from the cluster model: every namespace, pod and
/// policy, the local endpoints (by host interface) and this node's addresses.
///
/// A local endpoint whose Pod is not (yet) known is compiled as a pod of its
/// namespace without labels, so namespace-wide policies police it from its
/// first packet.
pub fn input_from_state(
    state: &ClusterState,
    index: &EndpointIndex,
    local_ips: Vec<IpAddr>,
    options: &Options,
) -> Input {
    let namespaces = state
        .namespaces()
        .map(|n| NamespaceInput {
            name: n.name.clone(),
            labels: n.labels.clone(),
            annotations: n.annotations.clone(),
        })
        .collect();
    let mut local: HashMap<(&str, &str), (u32, &[IpAddr])> = HashMap::new();
    for ep in state.endpoints() {
        local.insert(
            (ep.namespace.as_str(), ep.pod.as_str()),
            (ep.host_ifindex, ep.ips.as_slice()),
        );
    }
    let mut pods = Vec::with_capacity(state.pods().len() + local.len());
    for pod in state.pods() {
        let identity = state
            .pod_meta(&pod.namespace, &pod.name)
            .map(|m| m.identity)
            .unwrap_or_default();
        let endpoint = local.remove(&(pod.namespace.as_str(), pod.name.as_str()));
        let mut ips = pod.pod_ips.clone();
        if let Some((_, ep_ips)) = endpoint {
            for ip in ep_ips {
                if !ips.contains(ip) {
                    ips.push(*ip);
                }
            }
        }
        pods.push(PodInput {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            labels: pod.labels.clone(),
            identity,
            ips,
            ports: pod
                .ports
                .iter()
                .map(|p| PodPort {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: p.protocol,
                })
                .collect(),
            host_network: pod.host_network,
            endpoint: endpoint
                .map(|(ifindex, _)| ifindex)
                .filter(|_| !pod.host_network),
        });
    }
    // Endpoints the CNI registered before their Pod object arrived.
    for ep in state.endpoints() {
        if !local.contains_key(&(ep.namespace.as_str(), ep.pod.as_str())) {
            continue;
        }
        let identity = ep
            .ips
            .first()
            .and_then(|ip| index.lookup(ip))
            .map(|m| m.identity)
            .unwrap_or(weir_state::identity::IDENTITY_INIT);
        pods.push(PodInput {
            namespace: ep.namespace.clone(),
            name: ep.pod.clone(),
            identity,
            ips: ep.ips.clone(),
            endpoint: Some(ep.host_ifindex),
            ..PodInput::default()
        });
    }
    Input {
        policies: state.policies().cloned().collect(),
        namespaces,
        pods,
        nodes: NodeInput {
            local_ips,
            remote_ips: Vec::new(),
        },
        options: options.clone(),
    }
}

/// Every address configured in the calling thread's network namespace: the
/// node's own addresses (identity HOST to the datapath).
pub fn local_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            if let Some(v4) = s.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A hostNetwork pod of this node, found by its cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Its cgroup v2 directory (`pod<UID>`, as kubelet names it).
    pub path: PathBuf,
    /// The synthetic endpoint id its cgroup hooks police it under.
    pub endpoint: u32,
    /// Its security identity (from its labels).
    pub identity: u32,
    /// Whether the cgroup programs are attached.
    pub attached: bool,
}

/// The hostNetwork pods of this node: their cgroups, found by pod UID
/// under the cgroup v2 hierarchy, and the synthetic endpoint ids
/// (`CGROUP_ENDPOINT_BIT | n`) their traffic is policed under.
#[derive(Debug, Default)]
pub struct HostPods {
    /// Where to look; `None` when this host has no cgroup v2 hierarchy.
    root: Option<PathBuf>,
    next: u32,
    pods: BTreeMap<(String, String), HostPod>,
    /// hostNetwork pods of this node whose cgroup is not found (yet).
    unresolved: usize,
}

/// How deep below the root a pod cgroup is looked for (kubelet's sit at
/// levels 2 to 4: `kubepods[/qos]/pod<UID>`, or systemd slices).
const CGROUP_SEARCH_DEPTH: usize = 6;
/// Directories visited per search at most, so a huge hierarchy cannot
/// stall a policy sync.
const CGROUP_SEARCH_BUDGET: usize = 50_000;

impl HostPods {
    /// Looks for pod cgroups under `root` (the cgroup v2 mount by default).
    pub fn new(root: Option<PathBuf>) -> Self {
        Self {
            root,
            ..Self::default()
        }
    }

    /// The pods found, by `(namespace, name)`.
    pub fn pods(&self) -> impl Iterator<Item = &HostPod> {
        self.pods.values()
    }

    /// hostNetwork pods of this node whose cgroup was not found at the
    /// last refresh (the agent retries periodically).
    pub fn unresolved(&self) -> usize {
        self.unresolved
    }

    /// Brings the set in step with the model's hostNetwork pods on `node`:
    /// finds new pods' cgroups, follows identity changes, and returns the
    /// pods that went away (or whose cgroup did), to detach.
    pub fn refresh(&mut self, state: &ClusterState, node: &str) -> Vec<HostPod> {
        let mut wanted: HashMap<(String, String), (String, u32)> = HashMap::new();
        for pod in state.pods() {
            if !pod.host_network || pod.node_name != node || pod.uid.is_empty() {
                continue;
            }
            let identity = state
                .pod_meta(&pod.namespace, &pod.name)
                .map(|m| m.identity)
                .unwrap_or_default();
            wanted.insert(
                (pod.namespace.clone(), pod.name.clone()),
                (pod.uid.clone(), identity),
            );
        }
        let mut gone = Vec::new();
        self.pods.retain(|key, hp| {
            let keep = wanted.get(key).is_some_and(|(uid, _)| *uid == hp.uid) && hp.path.is_dir();
            if !keep {
                gone.push(hp.clone());
            }
            keep
        });
        self.unresolved = 0;
        for (key, (uid, identity)) in wanted {
            if let Some(hp) = self.pods.get_mut(&key) {
                hp.identity = identity;
                continue;
            }
            let Some(path) = self.root.as_deref().and_then(|r| find_pod_cgroup(r, &uid)) else {
                self.unresolved += 1;
                debug!(namespace = %key.0, pod = %key.1, %uid, "no cgroup found for the hostNetwork pod yet");
                continue;
            };
            self.next = self.next.wrapping_add(1) & !weir_common::CGROUP_ENDPOINT_BIT;
            let endpoint = weir_common::CGROUP_ENDPOINT_BIT | self.next;
            info!(namespace = %key.0, pod = %key.1, cgroup = %path.display(), endpoint, "hostNetwork pod found");
            self.pods.insert(
                key.clone(),
                HostPod {
                    namespace: key.0,
                    name: key.1,
                    uid,
                    path,
                    endpoint,
                    identity,
                    attached: false,
                },
            );
        }
        gone
    }

    /// Marks `input`'s hostNetwork pods that have a cgroup as endpoints
    /// under their synthetic ids.
    pub fn assign(&self, input: &mut Input) {
        for pod in input.pods.iter_mut().filter(|p| p.host_network) {
            if let Some(hp) = self.pods.get(&(pod.namespace.clone(), pod.name.clone())) {
                pod.endpoint = Some(hp.endpoint);
            }
        }
    }

    /// Writes each pod's cgroups (its own and every descendant, so
    /// containers resolve at once) into `CGROUP_EP`, then attaches the
    /// cgroup programs where not yet attached; detaches and forgets `gone`.
    /// Call after the policy maps hold the pods' endpoint entries.
    pub fn apply(&mut self, gone: &[HostPod], dp: &mut weir_datapath::Datapath) -> usize {
        let mut failed = 0;
        for hp in gone {
            if let Err(e) = dp.detach_cgroup(&hp.path) {
                warn!(cgroup = %hp.path.display(), error = %e, "detaching a hostNetwork pod's cgroup");
                failed += 1;
            }
            if let Err(e) = dp.policy_maps().remove_cgroups_of(hp.endpoint) {
                warn!(error = %e, "forgetting a hostNetwork pod's cgroups");
                failed += 1;
            }
        }
        for hp in self.pods.values_mut() {
            let value = weir_common::CgroupEndpoint {
                endpoint: hp.endpoint,
                identity: hp.identity,
            };
            let mut ids = Vec::new();
            match weir_datapath::cgroup::cgroup_id(&hp.path) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    warn!(cgroup = %hp.path.display(), error = %e, "reading a hostNetwork pod's cgroup");
                    failed += 1;
                    continue;
                }
            }
            if let Ok(children) = weir_datapath::cgroup::descendants(&hp.path) {
                ids.extend(children.into_iter().map(|(_, id)| id));
            }
            for id in ids {
                if let Err(e) = dp.policy_maps().set_cgroup(id, value) {
                    warn!(error = %e, "writing a hostNetwork pod's cgroup");
                    failed += 1;
                }
            }
            if !hp.attached {
                match dp.attach_cgroup(&hp.path) {
                    Ok(_) => {
                        hp.attached = true;
                        info!(namespace = %hp.namespace, pod = %hp.name, "hostNetwork pod policed");
                    }
                    Err(e) => {
                        warn!(cgroup = %hp.path.display(), error = %e, "attaching to a hostNetwork pod's cgroup");
                        failed += 1;
                    }
                }
            }
        }
        failed
    }
}

/// The cgroup directory of the pod with `uid` under `root`: named
/// `pod<UID>` (kubelet's cgroupfs driver) or `...pod<UID with _>.slice`
/// (its systemd driver), at most [`CGROUP_SEARCH_DEPTH`] levels down.
pub fn find_pod_cgroup(root: &Path, uid: &str) -> Option<PathBuf> {
    let plain = format!("pod{uid}");
    let systemd = format!("pod{}.slice", uid.replace('-', "_"));
    let mut level = vec![root.to_path_buf()];
    let mut visited = 0usize;
    for _ in 0..CGROUP_SEARCH_DEPTH {
        let mut next = Vec::new();
        for dir in level {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                visited += 1;
                if visited > CGROUP_SEARCH_BUDGET {
                    return None;
                }
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name == plain || name.ends_with(&systemd) {
                    return Some(entry.path());
                }
                next.push(entry.path());
            }
        }
        level = next;
    }
    None
}
