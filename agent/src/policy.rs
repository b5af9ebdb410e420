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

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
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
    pub fn new(options: Options, attribution: Arc<Attribution>) -> Self {
        Self {
            compiler: Compiler::new(),
            last: Compiled::default(),
            options,
            attribution,
            published: BTreeSet::new(),
            rewrite_all: false,
        }
    }

    /// The last state written to the maps.
    pub fn compiled(&self) -> &Compiled {
        &self.last
    }

    /// Whether a write failed and the next sync must rewrite everything.
    pub fn needs_rewrite(&self) -> bool {
        self.rewrite_all
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
