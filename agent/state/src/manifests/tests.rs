use std::fs;
use std::net::IpAddr;

use super::*;
use crate::model::{ContainerPort, Namespace, Pod, Protocol};

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().expect("tempdir"))
    }
    fn write(&self, name: &str, text: &str) {
        let path = self.0.path().join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(path, text).unwrap();
    }
    fn remove(&self, name: &str) {
        fs::remove_file(self.0.path().join(name)).unwrap();
    }
    fn load(&self) -> LoadResult {
        load_dir(self.0.path())
    }
}

fn pods(objects: &[LoadedObject]) -> Vec<&Pod> {
    objects
        .iter()
        .filter_map(|o| match &o.object {
            Object::Pod(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn error_texts(r: &LoadResult) -> Vec<String> {
    r.errors.iter().map(ToString::to_string).collect()
}

/// Loads one file and returns its only error's text.
fn only_error(name: &str, text: &str) -> String {
    let d = Dir::new();
    d.write(name, text);
    let r = d.load();
    assert_eq!(
        r.errors.len(),
        1,
        "expected exactly one error, got {:?}",
        error_texts(&r)
    );
    r.errors[0].to_string()
}

const MULTI: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    team: payments
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d9f8-abcde
  namespace: shop
  uid: 1234-5678
  labels:
    app: web
    pod-template-hash: 7d9f8
  annotations:
    example.com/note: "free text, any value"
  ownerReferences:
    - apiVersion: apps/v1
      kind: ReplicaSet
      name: web-7d9f8
      controller: true
spec:
  nodeName: node-1
  serviceAccountName: web
  containers:
    - name: app
      image: nginx
      ports:
        - containerPort: 80
          name: http
        - containerPort: 5353
          protocol: UDP
    - name: sidecar
      ports:
        - containerPort: 9090
          protocol: SCTP
status:
  podIP: 10.0.0.5
  podIPs:
    - ip: 10.0.0.5
    - ip: fd00::5
---
# an empty document between two is not counted
---
apiVersion: v1
kind: Pod
metadata:
  name: plain
spec:
  hostNetwork: true
"#;

#[test]
fn multi_document_yaml() {
    let d = Dir::new();
    d.write("all.yaml", MULTI);
    let r = d.load();
    assert!(r.errors.is_empty(), "{:?}", error_texts(&r));
    assert!(r.complete);
    assert_eq!(r.files, 1);
    assert_eq!(r.objects.len(), 3);
    let ns = &r.objects[0];
    assert_eq!(
        ns.position,
        Position {
            document: 1,
            item: None
        }
    );
    let Object::Namespace(Namespace { name, labels, .. }) = &ns.object else {
        panic!("first object should be the namespace: {ns:?}");
    };
    assert_eq!(name, "shop");
    assert_eq!(labels.get("team").map(String::as_str), Some("payments"));
    assert_eq!(
        labels
            .get("kubernetes.io/metadata.name")
            .map(String::as_str),
        Some("shop"),
        "the API server's automatic namespace label is added"
    );

    let p = pods(&r.objects);
    let web = p[0];
    assert_eq!(
        (web.namespace.as_str(), web.name.as_str()),
        ("shop", "web-7d9f8-abcde")
    );
    assert_eq!(web.uid, "1234-5678");
    assert_eq!(web.labels.len(), 2);
    assert_eq!(web.annotations["example.com/note"], "free text, any value");
    assert_eq!(web.node_name, "node-1");
    assert_eq!(web.service_account, "web");
    assert!(!web.host_network);
    assert_eq!(
        web.workload(),
        Some("web"),
        "ReplicaSet owner maps to its Deployment"
    );
    assert_eq!(
        web.pod_ips,
        vec![
            "10.0.0.5".parse::<IpAddr>().unwrap(),
            "fd00::5".parse().unwrap()
        ]
    );
    assert_eq!(
        web.ports,
        vec![
            ContainerPort {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Tcp
            },
            ContainerPort {
                name: None,
                port: 5353,
                protocol: Protocol::Udp
            },
            ContainerPort {
                name: None,
                port: 9090,
                protocol: Protocol::Sctp
            },
        ]
    );
    let plain = p[1];
    assert_eq!(plain.namespace, "default", "namespace defaults to default");
    assert!(plain.host_network);
    assert!(plain.pod_ips.is_empty());
    assert_eq!(
        r.objects[2].position.document, 3,
        "empty documents are not counted"
    );
}

#[test]
fn list_and_json() {
    let d = Dir::new();
    d.write(
        "a-list.yaml",
        r#"
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Namespace
    metadata: {name: one}
  - apiVersion: v1
    kind: Pod
    metadata: {name: p1, namespace: one}
    status: {podIP: "fd00::1"}
"#,
    );
    d.write(
        "b.json",
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p2", "namespace": "one",
            "labels": {"app": "db"}}, "status": {"podIPs": [{"ip": "10.1.0.2"}]}}
           {"apiVersion": "v1", "kind": "PodList", "items": [
             {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p3"}}]}"#,
    );
    d.write(
        "sub/dir/c.yml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: two\n",
    );
    d.write("ignored.txt", "not: a manifest\n");
    d.write(".hidden.yaml", "this: [is not read\n");
    let r = d.load();
    assert!(r.errors.is_empty(), "{:?}", error_texts(&r));
    assert_eq!(
        r.files, 3,
        "only .yaml/.yml/.json, hidden skipped, recursive"
    );
    let keys: Vec<String> = r
        .objects
        .iter()
        .map(|o| o.object.key().to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "Namespace one",
            "Pod one/p1",
            "Pod one/p2",
            "Pod default/p3",
            "Namespace two"
        ],
        "sorted file order, then document and item order"
    );
    assert_eq!(
        r.objects[1].position,
        Position {
            document: 1,
            item: Some(2)
        }
    );
    assert_eq!(
        r.objects[3].position,
        Position {
            document: 2,
            item: Some(1)
        }
    );
    assert_eq!(r.objects[4].file, PathBuf::from("sub/dir/c.yml"));
    let p = pods(&r.objects);
    assert_eq!(p[0].pod_ips, vec!["fd00::1".parse::<IpAddr>().unwrap()]);
    assert_eq!(p[1].pod_ips, vec!["10.1.0.2".parse::<IpAddr>().unwrap()]);
    assert_eq!(p[1].labels["app"], "db");
}

#[test]
fn unknown_kinds_are_skipped_and_counted() {
    let d = Dir::new();
    d.write(
        "mixed.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: e}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\n",
    );
    let r = d.load();
    assert!(r.errors.is_empty(), "{:?}", error_texts(&r));
    assert_eq!(r.objects.len(), 1);
    assert_eq!(r.skipped_kinds.get("apps/v1 Deployment"), Some(&2));
    assert_eq!(r.skipped_kinds.get("v1 ConfigMap"), Some(&1));
}

const POD_A: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: first\n  namespace: x\n";

#[test]
fn error_names_file_object_and_field() {
    let bad = format!(
        "{POD_A}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: x\nspec:\n  containers:\n  - name: c\n    ports:\n    - containerPort: 80\n    - containerPort: 81\n      protocol: TCPX\n"
    );
    assert_eq!(
        only_error("pods.yaml", &bad),
        r#"pods.yaml: document 2 (Pod x/a): field spec.containers[0].ports[1].protocol: unknown protocol "TCPX" (expected TCP, UDP or SCTP)"#
    );
}

fn pod_with(extra: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: x\n{extra}")
}

#[test]
fn each_validation_error() {
    let cases: &[(&str, String, &str)] = &[
        (
            "missing name",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  namespace: x\n".into(),
            "p.yaml: document 1 (Pod x/<unnamed>): field metadata.name: required value",
        ),
        (
            "no metadata",
            "apiVersion: v1\nkind: Namespace\n".into(),
            "p.yaml: document 1 (Namespace <unnamed>): field metadata.name: required value",
        ),
        (
            "pod name",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: Web_1\n".into(),
            "p.yaml: document 1 (Pod default/Web_1): field metadata.name: \"Web_1\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ),
        (
            "namespace name",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a.b\n".into(),
            "p.yaml: document 1 (Namespace a.b): field metadata.name: \"a.b\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        ),
        (
            "pod namespace",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: Prod\n".into(),
            "p.yaml: document 1 (Pod Prod/a): field metadata.namespace: \"Prod\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        ),
        (
            "label key",
            pod_with("  labels:\n    bad key: v\n"),
            "p.yaml: document 1 (Pod x/a): field metadata.labels: key \"bad key\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        ),
        (
            "label key prefix",
            pod_with("  labels:\n    Example.com/app: v\n"),
            "p.yaml: document 1 (Pod x/a): field metadata.labels: key \"Example.com/app\": prefix part must be a lowercase RFC 1123 subdomain (at most 253 characters)",
        ),
        (
            "label key length",
            pod_with(&format!("  labels:\n    {}: v\n", "k".repeat(64))),
            &*Box::leak(format!("p.yaml: document 1 (Pod x/a): field metadata.labels: key \"{}\": name part must be no more than 63 characters", "k".repeat(64)).into_boxed_str()),
        ),
        (
            "label value",
            pod_with("  labels:\n    app: \"-web\"\n"),
            "p.yaml: document 1 (Pod x/a): field metadata.labels[app]: value \"-web\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        ),
        (
            "label value type",
            pod_with("  labels:\n    version: 2\n"),
            "p.yaml: document 1 (Pod x/a): field metadata.labels[version]: expected a string, found number 2",
        ),
        (
            "port range",
            pod_with("spec:\n  containers:\n  - ports:\n    - containerPort: 70000\n"),
            "p.yaml: document 1 (Pod x/a): field spec.containers[0].ports[0].containerPort: 70000: must be between 1 and 65535, inclusive",
        ),
        (
            "port zero",
            pod_with("spec:\n  containers:\n  - ports:\n    - containerPort: 0\n"),
            "p.yaml: document 1 (Pod x/a): field spec.containers[0].ports[0].containerPort: 0: must be between 1 and 65535, inclusive",
        ),
        (
            "port type",
            pod_with("spec:\n  containers:\n  - ports:\n    - containerPort: \"80\"\n"),
            "p.yaml: document 1 (Pod x/a): field spec.containers[0].ports[0].containerPort: expected an integer, found string \"80\"",
        ),
        (
            "port missing",
            pod_with("spec:\n  containers:\n  - ports:\n    - name: http\n"),
            "p.yaml: document 1 (Pod x/a): field spec.containers[0].ports[0].containerPort: required value",
        ),
        (
            "port name",
            pod_with("spec:\n  containers:\n  - ports:\n    - containerPort: 80\n      name: web--http\n"),
            "p.yaml: document 1 (Pod x/a): field spec.containers[0].ports[0].name: \"web--http\": must not contain consecutive hyphens",
        ),
        (
            "pod ip",
            pod_with("status:\n  podIP: 10.0.0.300\n"),
            "p.yaml: document 1 (Pod x/a): field status.podIP: \"10.0.0.300\": must be a valid IP address",
        ),
        (
            "pod ips mismatch",
            pod_with("status:\n  podIP: 10.0.0.1\n  podIPs:\n  - ip: 10.0.0.2\n"),
            "p.yaml: document 1 (Pod x/a): field status.podIPs[0].ip: 10.0.0.2 must be the same as status.podIP (10.0.0.1)",
        ),
        (
            "host network type",
            pod_with("spec:\n  hostNetwork: \"yes\"\n"),
            "p.yaml: document 1 (Pod x/a): field spec.hostNetwork: expected a boolean, found string \"yes\"",
        ),
        (
            "containers type",
            pod_with("spec:\n  containers: {}\n"),
            "p.yaml: document 1 (Pod x/a): field spec.containers: expected a list, found a mapping",
        ),
        (
            "missing kind",
            "apiVersion: v1\nmetadata:\n  name: a\n".into(),
            "p.yaml: document 1 (object a): field kind: required value",
        ),
        (
            "not an object",
            "- just\n- a list\n".into(),
            "p.yaml: document 1: expected a Kubernetes object (a mapping with apiVersion and kind), found a list",
        ),
        (
            "list item",
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: ok}\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: b, namespace: x}\n  status: {podIPs: [{}]}\n".into(),
            "p.yaml: document 1, item 2 (Pod x/b): field status.podIPs[0].ip: required value",
        ),
    ];
    for (what, text, expected) in cases {
        assert_eq!(&only_error("p.yaml", text), expected, "case {what:?}");
    }
}

#[test]
fn duplicates_keep_the_first() {
    let d = Dir::new();
    d.write("a.yaml", POD_A);
    d.write("b.yaml", &format!("{POD_A}  labels: {{v: two}}\n"));
    let r = d.load();
    assert_eq!(r.objects.len(), 1);
    assert_eq!(r.objects[0].file, PathBuf::from("a.yaml"));
    assert_eq!(
        error_texts(&r),
        [
            "b.yaml: document 1 (Pod x/first): field metadata.name: duplicate: already defined in a.yaml: document 1 (this one is ignored)"
        ]
    );
}

#[test]
fn syntax_errors_name_file_and_line() {
    let yaml = only_error(
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n",
    );
    assert!(yaml.starts_with("broken.yaml: line "), "{yaml}");
    assert!(yaml.contains("invalid YAML"), "{yaml}");
    let json = only_error(
        "broken.json",
        "{\"apiVersion\": \"v1\",\n \"kind\": \"Pod\"\n \"metadata\": {}}",
    );
    assert!(
        json.starts_with("broken.json: line 3: invalid JSON"),
        "{json}"
    );
    let d = Dir::new();
    d.write("broken.yaml", "a: b\n  c: [\n");
    let r = d.load();
    let ManifestError::Syntax { line, .. } = &r.errors[0] else {
        panic!("expected a syntax error: {:?}", r.errors);
    };
    assert!(*line >= 1, "line is known");
    assert_eq!(r.failed_paths, [PathBuf::from("broken.yaml")]);
}

#[test]
fn missing_directory() {
    let d = Dir::new();
    let r = load_dir(&d.0.path().join("nope"));
    assert!(!r.complete);
    assert!(matches!(r.errors[..], [ManifestError::Directory { .. }]));
    assert!(r.errors[0].to_string().contains("nope"), "{}", r.errors[0]);
}

fn served_pod<'a>(s: &'a Snapshot, ns: &str, name: &str) -> Option<&'a Pod> {
    let key = ObjectKey {
        kind: Kind::Pod,
        namespace: ns.into(),
        name: name.into(),
    };
    match s.get(&key) {
        Some(Object::Pod(p)) => Some(p),
        _ => None,
    }
}

#[test]
fn last_good_version_is_kept() {
    let d = Dir::new();
    let mut src = ManifestSource::new(d.0.path());
    let good = |label: &str| {
        format!(
            "{POD_A}  labels: {{v: \"{label}\"}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: other, namespace: x}}\n"
        )
    };
    d.write("pods.yaml", &good("one"));
    let s1 = src.reload();
    assert!(s1.errors.is_empty());
    assert_eq!(served_pod(&s1, "x", "first").unwrap().labels["v"], "one");
    assert_eq!(s1.status.objects[&Kind::Pod], 2);
    assert!(s1.status.last_success.is_some());

    // Invalid new version: old one stays, the other object takes its update.
    d.write(
        "pods.yaml",
        &format!(
            "{POD_A}  labels: {{v: \"bad value\"}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: other, namespace: x, labels: {{new: \"yes\"}}}}\n"
        ),
    );
    let s2 = src.reload();
    assert_eq!(
        s2.errors.len(),
        1,
        "{:?}",
        s2.errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    assert!(
        s2.errors[0]
            .to_string()
            .contains("(Pod x/first): field metadata.labels[v]")
    );
    assert_eq!(
        served_pod(&s2, "x", "first").unwrap().labels["v"],
        "one",
        "last good kept"
    );
    assert_eq!(
        served_pod(&s2, "x", "other").unwrap().labels["new"],
        "yes",
        "others keep working"
    );
    assert!(s2.generation > s1.generation);
    assert_eq!(s2.status.errors, 1);
    assert_eq!(s2.status.errors_total, 1);

    // Same bad content again: nothing new, the error is not counted twice.
    let s3 = src.reload();
    assert_eq!(
        s3.generation, s2.generation,
        "unchanged content, same generation"
    );
    assert_eq!(s3.status.errors_total, 1);
    assert_eq!(s3.status.scans_total, 3);

    // Fixed: the new version is served.
    d.write("pods.yaml", &good("two"));
    let s4 = src.reload();
    assert!(s4.errors.is_empty());
    assert_eq!(served_pod(&s4, "x", "first").unwrap().labels["v"], "two");
    assert_eq!(s4.status.errors, 0);

    // Whole file broken: all its objects stay; another file's removal still applies.
    d.write(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
    );
    let s5 = src.reload();
    assert_eq!(s5.objects.len(), 3);
    d.write("pods.yaml", "apiVersion: v1\nkind: Pod\nmetadata: [oops\n");
    d.remove("ns.yaml");
    let s6 = src.reload();
    assert_eq!(s6.errors.len(), 1);
    assert!(matches!(s6.errors[0], ManifestError::Syntax { .. }));
    assert!(served_pod(&s6, "x", "first").is_some());
    assert!(served_pod(&s6, "x", "other").is_some());
    assert_eq!(
        s6.objects.len(),
        2,
        "the namespace of the removed file is gone"
    );

    // Object removed from a valid file: removed.
    d.write("pods.yaml", POD_A);
    let s7 = src.reload();
    assert!(s7.errors.is_empty());
    assert!(served_pod(&s7, "x", "first").is_some());
    assert!(
        served_pod(&s7, "x", "other").is_none(),
        "removed from the files: removed"
    );

    // Invalid object that never was valid: not served.
    d.write(
        "new.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: fresh, labels: {a: \"b c\"}}\n",
    );
    let s8 = src.reload();
    assert!(served_pod(&s8, "default", "fresh").is_none());
    assert_eq!(s8.errors.len(), 1);

    // Directory gone: everything is kept, last success does not move.
    let dir = d.0.path().to_path_buf();
    let last = s8.status.last_success;
    fs::remove_dir_all(&dir).unwrap();
    let s9 = src.reload();
    assert!(matches!(s9.errors[..], [ManifestError::Directory { .. }]));
    assert_eq!(s9.objects, s8.objects);
    assert_eq!(s9.status.last_success, last);
}

const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: web}
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {team: payments}}
          podSelector: {matchExpressions: [{key: app, operator: In, values: [api]}]}
        - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
      ports:
        - port: 80
        - {protocol: UDP, port: dns}
        - {port: 8000, endPort: 8080}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicyList
items:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: deny-all, namespace: shop}
    spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#;

fn served_policy<'a>(
    s: &'a Snapshot,
    ns: &str,
    name: &str,
) -> Option<&'a weir_policy::NetworkPolicy> {
    let key = ObjectKey {
        kind: Kind::NetworkPolicy,
        namespace: ns.into(),
        name: name.into(),
    };
    match s.get(&key) {
        Some(Object::NetworkPolicy(p)) => Some(p),
        _ => None,
    }
}

#[test]
fn network_policies_are_parsed() {
    let d = Dir::new();
    d.write("policies.yaml", POLICIES);
    let r = d.load();
    assert!(r.errors.is_empty(), "{:?}", error_texts(&r));
    assert_eq!(r.objects.len(), 2);
    let Object::NetworkPolicy(web) = &r.objects[0].object else {
        panic!("{:?}", r.objects[0]);
    };
    assert_eq!((web.namespace.as_str(), web.name.as_str()), ("shop", "web"));
    assert_eq!(web.pod_selector.match_labels["app"], "web");
    assert!(web.ingress_type && !web.egress_type);
    assert_eq!(web.ingress[0].peers.len(), 2);
    assert_eq!(web.ingress[0].ports.len(), 3);
    assert_eq!(web.ingress[0].ports[2].end_port, Some(8080));
    let deny = &r.objects[1];
    assert_eq!(
        deny.position,
        Position {
            document: 2,
            item: Some(1)
        }
    );
    assert_eq!(
        deny.object.key(),
        ObjectKey {
            kind: Kind::NetworkPolicy,
            namespace: "shop".into(),
            name: "deny-all".into()
        }
    );
    assert_eq!(deny.object.key().to_string(), "NetworkPolicy shop/deny-all");
    // Serializable like every object (the kind is the tag).
    let v = serde_json::to_value(&deny.object).unwrap();
    assert_eq!(v["kind"], "NetworkPolicy");
    let back: Object = serde_json::from_value(v).unwrap();
    assert_eq!(back, deny.object);
}

#[test]
fn invalid_network_policies_name_file_object_and_field() {
    let policy = |spec: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np, namespace: x}}\nspec:\n{spec}"
        )
    };
    let cases: &[(String, &str)] = &[
        (
            policy(
                "  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/16]}\n",
            ),
            "field spec.egress[0].to[0].ipBlock.except[0]: 10.1.0.0/16 is not inside cidr 10.0.0.0/16",
        ),
        (
            policy("  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/40}\n"),
            "field spec.ingress[0].from[0].ipBlock.cidr: \"10.0.0.0/40\": must be a valid CIDR",
        ),
        (
            policy("  ingress:\n  - ports:\n    - {protocol: ICMP, port: 1}\n"),
            "field spec.ingress[0].ports[0].protocol: \"ICMP\": supported values",
        ),
        (
            policy("  podSelector:\n    matchExpressions: [{key: app, operator: In}]\n"),
            "field spec.podSelector.matchExpressions[0].values: must be specified",
        ),
    ];
    for (text, want) in cases {
        let got = only_error("np.yaml", text);
        assert!(
            got.starts_with("np.yaml: document 1 (NetworkPolicy x/np): "),
            "{got}"
        );
        assert!(got.contains(want), "{got}\nshould contain: {want}");
    }
}

#[test]
fn invalid_policy_keeps_its_last_good_version_and_others_stay() {
    let d = Dir::new();
    let mut src = ManifestSource::new(d.0.path());
    let two = |web_cidr: &str, other_port: u16| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: web, namespace: x}}\n\
             spec:\n  egress:\n  - to:\n    - ipBlock: {{cidr: \"{web_cidr}\"}}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: other, namespace: x}}\n\
             spec:\n  ingress:\n  - ports:\n    - port: {other_port}\n"
        )
    };
    d.write("np.yaml", &two("10.0.0.0/8", 80));
    let s1 = src.reload();
    assert!(s1.errors.is_empty(), "{:?}", s1.errors);
    assert_eq!(s1.status.objects[&Kind::NetworkPolicy], 2);

    d.write("np.yaml", &two("10.0.0.0/99", 81));
    let s2 = src.reload();
    assert_eq!(s2.errors.len(), 1);
    assert!(
        s2.errors[0]
            .to_string()
            .contains("(NetworkPolicy x/web): field spec.egress[0].to[0].ipBlock.cidr"),
        "{}",
        s2.errors[0]
    );
    let web = served_policy(&s2, "x", "web").expect("last good version kept");
    let weir_policy::Peer::IpBlock(b) = &web.egress[0].peers[0] else {
        panic!("{web:?}");
    };
    assert_eq!(b.cidr.to_string(), "10.0.0.0/8");
    assert_eq!(
        served_policy(&s2, "x", "other").unwrap().ingress[0].ports[0].port,
        Some(weir_policy::PortValue::Number(81)),
        "the other policy takes its update"
    );
    assert_eq!(s2.status.errors_total, 1);

    d.write("np.yaml", &two("172.16.0.0/12", 81));
    let s3 = src.reload();
    assert!(s3.errors.is_empty());
    let weir_policy::Peer::IpBlock(b) = &served_policy(&s3, "x", "web").unwrap().egress[0].peers[0]
    else {
        panic!();
    };
    assert_eq!(b.cidr.to_string(), "172.16.0.0/12");
}

/// Everything a load reports, comparable.
fn summary(r: &LoadResult) -> String {
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{} {}",
        r.objects,
        error_texts(r),
        r.rejected,
        r.failed_paths,
        r.skipped_kinds,
        r.files,
        r.complete
    )
}

#[test]
fn unchanged_files_are_not_read_again_and_the_result_is_a_fresh_loads() {
    let d = Dir::new();
    d.write("a.yaml", MULTI);
    d.write("b.yaml", &pod_with("  labels: {app: b}\n"));
    d.write(
        "sub/c.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: shop}\n",
    );
    d.write("broken.yaml", "kind: [\n");
    // A duplicate of a.yaml's namespace: the check spans files, cached or not.
    d.write(
        "dup.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    );
    let mut cache = FileCache {
        settle: std::time::Duration::ZERO,
        ..FileCache::default()
    };
    let same_as_fresh = |cache: &mut FileCache, what: &str| {
        let cached = load_dir_cached(d.0.path(), cache);
        assert_eq!(summary(&cached), summary(&d.load()), "{what}");
    };
    same_as_fresh(&mut cache, "first load");
    assert_eq!(cache.reads(), 5);
    same_as_fresh(&mut cache, "nothing changed");
    assert_eq!(cache.reads(), 5, "nothing read again");

    d.write("b.yaml", &pod_with("  labels: {app: bee}\n"));
    same_as_fresh(&mut cache, "b rewritten");
    assert_eq!(cache.reads(), 6, "only b read again");

    // Replaced by a rename (as editors and ConfigMap volumes do), same size.
    let tmp = d.0.path().join(".c.tmp");
    fs::write(
        &tmp,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: shop}\n",
    )
    .unwrap();
    fs::rename(&tmp, d.0.path().join("sub/c.yaml")).unwrap();
    same_as_fresh(&mut cache, "c replaced");
    assert_eq!(cache.reads(), 7, "only c read again");

    d.remove("dup.yaml");
    d.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: fixed}\n",
    );
    same_as_fresh(&mut cache, "dup removed, broken fixed");
    assert_eq!(cache.reads(), 8, "only the fixed file read again");
    assert_eq!(cache.parses(), 8);
}

#[test]
fn a_file_changed_again_within_its_timestamp_granularity_is_read_again() {
    // With coarse file times, two writes of the same size in one clock tick
    // leave the file's size and times as they were. Simulated: after the
    // second write, the cache is made to hold the file's new fingerprint for
    // the first version. A fingerprint younger than the settle time is not
    // trusted, so the second version is still seen.
    let d = Dir::new();
    let mut cache = FileCache::default();
    d.write("p.yaml", &pod_with("  labels: {app: one}\n"));
    load_dir_cached(d.0.path(), &mut cache);
    d.write("p.yaml", &pod_with("  labels: {app: two}\n"));
    let now = Fingerprint::of(&fs::metadata(d.0.path().join("p.yaml")).unwrap());
    cache
        .files
        .get_mut(Path::new("p.yaml"))
        .unwrap()
        .fingerprint = now;
    let r = load_dir_cached(d.0.path(), &mut cache);
    assert_eq!(pods(&r.objects)[0].labels["app"], "two");
    assert_eq!((cache.reads(), cache.parses()), (2, 2));
    // Read again while not settled, but the same text is not parsed again.
    load_dir_cached(d.0.path(), &mut cache);
    assert_eq!((cache.reads(), cache.parses()), (3, 2));
    // Once settled, the same fingerprint is trusted: not read again.
    let cached = cache.files.get_mut(Path::new("p.yaml")).unwrap();
    assert!(!cached.settled, "just written: not settled");
    cached.settled = true;
    load_dir_cached(d.0.path(), &mut cache);
    assert_eq!(cache.reads(), 3);
}
