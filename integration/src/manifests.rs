//! The lab's side of the agent's manifests directory: Namespace, Pod and
//! Node objects built from the lab's specs, and atomic writes of multi-document
//! YAML files (the agent watches the directory and must never read half a
//! file).
//!
//! Owns the file names inside the directory: `ns-<ns>.yaml`,
//! `pod-<ns>-<pod>.yaml`, `node-<node>.yaml` and `apply.yaml` (a scenario
//! step's desired state).

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::spec::{NamespaceSpec, PodSpec};

/// Label the lab adds to every namespace, as Kubernetes does.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// File holding the current step's `apply` manifests.
pub const APPLY_FILE: &str = "apply.yaml";

/// Failures of writing manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Writing, renaming or removing a file failed.
    #[error("manifest file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An object could not be written as YAML.
    #[error("manifest file {path}: cannot serialize: {source}")]
    Serialize {
        path: PathBuf,
        #[source]
        source: serde_saphyr::SerializeError,
    },
}

/// File name of namespace `ns`'s manifest.
pub fn namespace_file(ns: &str) -> String {
    format!("ns-{ns}.yaml")
}

/// File name of node `name`'s manifest.
pub fn node_file(name: &str) -> String {
    format!("node-{name}.yaml")
}

/// File name of pod `ns/name`'s manifest.
pub fn pod_file(ns: &str, name: &str) -> String {
    format!("pod-{ns}-{name}.yaml")
}

/// The Namespace object, with `kubernetes.io/metadata.name` added.
pub fn namespace(ns: &NamespaceSpec) -> Value {
    let mut labels = ns.labels.clone();
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), ns.name.clone());
    let mut metadata = json!({ "name": ns.name, "labels": labels });
    if !ns.annotations.is_empty() {
        metadata["annotations"] = json!(ns.annotations);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": metadata,
    })
}

/// The Node object of the lab's node: its name, pod CIDRs, and its own
/// addresses as `InternalIP`s (what a hostNetwork pod's address is).
pub fn node(name: &str, pod_cidrs: &[String], ips: &[IpAddr]) -> Value {
    let addresses: Vec<Value> = ips
        .iter()
        .map(|ip| json!({ "type": "InternalIP", "address": ip.to_string() }))
        .chain(std::iter::once(
            json!({ "type": "Hostname", "address": name }),
        ))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name },
        "spec": { "podCIDR": pod_cidrs.first(), "podCIDRs": pod_cidrs },
        "status": { "addresses": addresses },
    })
}

/// The Pod object. `ips` empty: not networked yet (written before CNI ADD, so
/// the agent knows the pod's labels when the endpoint registers); otherwise
/// `status.podIP(s)` list them, IPv4 first. A hostNetwork pod gets
/// `spec.hostNetwork: true` (and the node's addresses as `ips`).
pub fn pod(pod: &PodSpec, uid: &str, node_name: &str, ips: &[IpAddr]) -> Value {
    let ports: Vec<Value> = pod
        .ports
        .iter()
        .map(|p| {
            let mut port = json!({ "containerPort": p.port, "protocol": p.protocol.to_string() });
            if let Some(name) = &p.name {
                port["name"] = json!(name);
            }
            port
        })
        .collect();
    let mut sorted: Vec<IpAddr> = ips.to_vec();
    sorted.sort_by_key(|ip| ip.is_ipv6());
    let mut status = json!({ "phase": if ips.is_empty() { "Pending" } else { "Running" } });
    if let Some(first) = sorted.first() {
        status["podIP"] = json!(first.to_string());
        status["podIPs"] = sorted
            .iter()
            .map(|ip| json!({ "ip": ip.to_string() }))
            .collect();
    }
    let mut spec = json!({
        "nodeName": node_name,
        "containers": [{ "name": "serve", "image": "weir-lab/serve", "ports": ports }],
    });
    if pod.host_network {
        spec["hostNetwork"] = json!(true);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": uid,
            "labels": pod.labels,
        },
        "spec": spec,
        "status": status,
    })
}

/// Writes `docs` as a multi-document YAML file `dir/name`, atomically
/// (temporary file + rename). No documents: the file is removed.
pub fn write(dir: &Path, name: &str, docs: &[Value]) -> Result<(), ManifestError> {
    let path = dir.join(name);
    if docs.is_empty() {
        return remove(dir, name);
    }
    let text =
        serde_saphyr::to_string_multiple(docs).map_err(|source| ManifestError::Serialize {
            path: path.clone(),
            source,
        })?;
    // A dot name not ending in .yaml: a watcher must not pick it up.
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, text).map_err(|source| ManifestError::Io {
        path: tmp.clone(),
        source,
    })?;
    fs::rename(&tmp, &path).map_err(|source| ManifestError::Io { path, source })
}

/// Removes `dir/name`; succeeds if it does not exist.
pub fn remove(dir: &Path, name: &str) -> Result<(), ManifestError> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ManifestError::Io { path, source }),
    }
}

/// Finds a Service `ns/name` in `docs` and returns its cluster IPs
/// (`spec.clusterIPs`, else `spec.clusterIP`).
pub fn service_ips(docs: &[Value], ns: &str, name: &str) -> Option<Vec<IpAddr>> {
    let svc = docs.iter().find(|d| {
        d["kind"] == "Service"
            && d["metadata"]["name"] == name
            && d["metadata"]["namespace"].as_str().unwrap_or("default") == ns
    })?;
    let spec = &svc["spec"];
    let mut ips: Vec<IpAddr> = spec["clusterIPs"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    if ips.is_empty()
        && let Some(ip) = spec["clusterIP"].as_str().and_then(|s| s.parse().ok())
    {
        ips.push(ip);
    }
    Some(ips)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::PortSpec;

    #[test]
    fn namespace_gets_its_name_label() {
        let ns = namespace(&NamespaceSpec::new("shop").label("team", "a"));
        assert_eq!(ns["metadata"]["labels"][NAMESPACE_NAME_LABEL], "shop");
        assert_eq!(ns["metadata"]["labels"]["team"], "a");
    }

    #[test]
    fn pod_lists_ports_and_ips_ipv4_first() {
        let spec = PodSpec::new("x", "a")
            .label("app", "a")
            .port(PortSpec::tcp(80))
            .port(PortSpec::udp(53));
        let ips: Vec<IpAddr> = vec!["fd00::5".parse().unwrap(), "10.0.0.5".parse().unwrap()];
        let p = pod(&spec, "uid-1", "node", &ips);
        assert_eq!(p["spec"]["nodeName"], "node");
        assert_eq!(p["spec"]["containers"][0]["ports"][1]["protocol"], "UDP");
        assert_eq!(
            p["spec"]["containers"][0]["ports"][0]["name"],
            "serve-80-tcp"
        );
        assert_eq!(p["status"]["podIP"], "10.0.0.5");
        assert_eq!(p["status"]["podIPs"][1]["ip"], "fd00::5");
        let pending = pod(&spec, "uid-1", "node", &[]);
        assert!(pending["status"].get("podIPs").is_none());
        assert!(
            p["spec"].get("hostNetwork").is_none(),
            "only hostNetwork pods say so"
        );
    }

    #[test]
    fn host_network_pod_says_so_and_has_the_node_addresses() {
        let spec = PodSpec::new("x", "h")
            .host_network()
            .port(PortSpec::tcp(8080));
        let node_ips: Vec<IpAddr> = vec![
            "172.31.0.1".parse().unwrap(),
            "fd00:172:31::1".parse().unwrap(),
        ];
        let p = pod(&spec, "u", "n", &node_ips);
        assert_eq!(p["spec"]["hostNetwork"], true);
        assert_eq!(p["status"]["podIP"], "172.31.0.1");
        assert_eq!(p["status"]["podIPs"][1]["ip"], "fd00:172:31::1");
        let n = node("n", &["10.244.0.0/24".into()], &node_ips);
        assert_eq!(n["kind"], "Node");
        assert_eq!(n["status"]["addresses"][0]["type"], "InternalIP");
        assert_eq!(n["status"]["addresses"][1]["address"], "fd00:172:31::1");
        assert_eq!(n["spec"]["podCIDRs"][0], "10.244.0.0/24");
    }

    #[test]
    fn written_files_read_back_as_the_same_documents() {
        let dir = std::env::temp_dir().join(format!("weirlab-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let docs = vec![
            namespace(&NamespaceSpec::new("x")),
            pod(
                &PodSpec::new("x", "a"),
                "u",
                "n",
                &["10.0.0.1".parse().unwrap()],
            ),
        ];
        write(&dir, "t.yaml", &docs).unwrap();
        let text = fs::read_to_string(dir.join("t.yaml")).unwrap();
        let back: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        assert_eq!(back, docs);
        write(&dir, "t.yaml", &[]).unwrap();
        assert!(!dir.join("t.yaml").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finds_service_ips() {
        let docs = vec![
            json!({"kind": "Service", "metadata": {"name": "web", "namespace": "x"},
                   "spec": {"clusterIP": "10.96.0.10"}}),
            json!({"kind": "Service", "metadata": {"name": "dual", "namespace": "x"},
                   "spec": {"clusterIPs": ["10.96.0.11", "fd00:96::11"]}}),
        ];
        assert_eq!(
            service_ips(&docs, "x", "web"),
            Some(vec!["10.96.0.10".parse().unwrap()])
        );
        assert_eq!(service_ips(&docs, "x", "dual").unwrap().len(), 2);
        assert_eq!(service_ips(&docs, "y", "web"), None);
    }
}
