use std::net::IpAddr;
use std::time::Instant;

use super::*;
use crate::identity::{CLUSTER_LOCAL_MAX, IDENTITY_HOST, IDENTITY_INIT};
use crate::model::OwnerReference;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn namespace(name: &str, pairs: &[(&str, &str)]) -> Object {
    let mut l = labels(pairs);
    l.insert(NAMESPACE_NAME_LABEL.into(), name.into());
    Object::Namespace(Namespace {
        name: name.into(),
        labels: l,
        annotations: Labels::new(),
    })
}

fn pod(ns: &str, name: &str, pairs: &[(&str, &str)], ips: &[&str]) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(pairs),
        node_name: "node-2".into(),
        pod_ips: ips.iter().map(|s| ip(s)).collect(),
        ..Pod::default()
    }
}

fn reg(container: &str, ns: &str, pod: &str, ips: &[&str]) -> EndpointRegistration {
    EndpointRegistration {
        container_id: container.into(),
        ifname: "eth0".into(),
        netns: format!("/var/run/netns/{container}"),
        namespace: ns.into(),
        pod: pod.into(),
        host_ifname: format!("weir{container}"),
        host_ifindex: 7,
        ips: ips.iter().map(|s| ip(s)).collect(),
        mac: String::new(),
    }
}

#[test]
fn hubble_label_form() {
    let ns = labels(&[("team", "payments"), (NAMESPACE_NAME_LABEL, "shop")]);
    let pod_labels = labels(&[
        ("app", "web"),
        ("pod-template-hash", "7d9f8"),
        ("io.kubernetes.pod.namespace", "kube-system"),
        ("app.kubernetes.io/name", "web"),
    ]);
    assert_eq!(
        hubble_labels("shop", Some(&ns), &pod_labels),
        [
            "k8s:app.kubernetes.io/name=web",
            "k8s:app=web",
            "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop",
            "k8s:io.cilium.k8s.namespace.labels.team=payments",
            "k8s:io.kubernetes.pod.namespace=shop",
        ],
        "sorted; per-rollout and spoofed namespace labels dropped"
    );
    assert_eq!(
        hubble_labels("other", None, &Labels::new()),
        [
            "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=other",
            "k8s:io.kubernetes.pod.namespace=other",
        ],
        "unknown namespace object: the automatic name label is assumed"
    );
}

#[test]
fn index_contents_v4_and_v6() {
    let mut st = ClusterState::new();
    let mut web = pod(
        "shop",
        "web-7d9f8-abcde",
        &[("app", "web")],
        &["10.0.0.5", "fd00::5"],
    );
    web.owner = Some(OwnerReference {
        kind: "ReplicaSet".into(),
        name: "web-7d9f8".into(),
    });
    web.labels
        .insert("pod-template-hash".into(), "7d9f8".into());
    let local = pod("shop", "db", &[("app", "db")], &["10.0.1.9"]);
    let host = Pod {
        host_network: true,
        ..pod("shop", "agent", &[("app", "agent")], &["192.168.1.10"])
    };
    assert!(st.set_manifests([
        namespace("shop", &[("team", "payments")]),
        Object::Pod(web),
        Object::Pod(local),
        Object::Pod(host),
    ]));
    let ep = st.upsert_endpoint(&reg("c1", "shop", "db", &["10.0.1.9", "fd00::1:9"]));
    let index = st.endpoint_index("node-1");

    let w4 = index
        .lookup(&ip("10.0.0.5"))
        .expect("remote pod IPv4 indexed");
    let w6 = index
        .lookup(&ip("fd00::5"))
        .expect("remote pod IPv6 indexed");
    assert!(Arc::ptr_eq(w4, w6), "one shared meta per pod");
    assert_eq!(w4.namespace, "shop");
    assert_eq!(w4.pod_name, "web-7d9f8-abcde");
    assert_eq!(w4.endpoint_id, 0, "not local");
    assert_eq!(w4.node_name, "node-2");
    assert_eq!(w4.workload, "web");
    assert_eq!(
        w4.labels,
        [
            "k8s:app=web",
            "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop",
            "k8s:io.cilium.k8s.namespace.labels.team=payments",
            "k8s:io.kubernetes.pod.namespace=shop",
        ]
    );
    assert!(w4.identity >= CLUSTER_LOCAL_MIN);
    assert_eq!(st.identities().labels(w4.identity), Some(&w4.labels[..]));

    let d4 = index.lookup(&ip("10.0.1.9")).expect("local endpoint IPv4");
    let d6 = index
        .lookup(&ip("fd00::1:9"))
        .expect("local endpoint IPv6 (only in the registration)");
    assert_eq!(d4, d6);
    assert_eq!(
        d4.endpoint_id, ep.id,
        "local endpoint wins over the pod status entry"
    );
    assert_eq!(d4.node_name, "node-1");
    assert_eq!(d4.pod_name, "db");
    assert!(d4.labels.contains(&"k8s:app=db".to_string()));
    assert_ne!(d4.identity, w4.identity);

    assert!(
        index.lookup(&ip("192.168.1.10")).is_none(),
        "host-network pod IP is the node's"
    );
    // A host-network pod has an identity of its own (policies select it
    // by its labels; the datapath knows its traffic by its cgroup).
    let agent = st.pod_meta("shop", "agent").unwrap().identity;
    assert!(agent >= CLUSTER_LOCAL_MIN && agent != IDENTITY_HOST);
    assert_ne!(agent, w4.identity);
    assert_eq!(index.len(), 4);
}

#[test]
fn endpoints_are_idempotent_and_work_without_pod_objects() {
    let mut st = ClusterState::new();
    let a = st.upsert_endpoint(&reg("c1", "default", "a", &["10.0.0.1"]));
    let again = st.upsert_endpoint(&reg("c1", "default", "a", &["10.0.0.1", "fd00::1"]));
    assert_eq!(a.id, again.id, "same container+ifname: same id");
    assert_eq!(again.ips.len(), 2, "registration updated");
    let b = st.upsert_endpoint(&reg("c2", "default", "b", &["10.0.0.2"]));
    assert_ne!(a.id, b.id);
    assert_eq!(st.endpoints().len(), 2);

    let index = st.endpoint_index("node-1");
    let meta = index.lookup(&ip("fd00::1")).unwrap();
    assert_eq!(
        (meta.namespace.as_str(), meta.pod_name.as_str()),
        ("default", "a")
    );
    assert_eq!(meta.endpoint_id, a.id);
    assert_eq!(
        meta.labels,
        [
            "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=default",
            "k8s:io.kubernetes.pod.namespace=default",
        ]
    );
    let meta_b = index.lookup(&ip("10.0.0.2")).unwrap();
    assert_eq!(
        meta.identity, meta_b.identity,
        "same (namespace-only) label set"
    );
    assert_eq!(st.identities().len(), 1);

    // Without a namespace from the CNI the labels are unknown.
    let anon = st.upsert_endpoint(&reg("c3", "", "", &["10.0.0.3"]));
    let idx = st.endpoint_index("node-1");
    let m = idx.lookup(&ip("10.0.0.3")).unwrap();
    assert_eq!((m.identity, m.endpoint_id), (IDENTITY_INIT, anon.id));
    assert!(m.labels.is_empty());

    // The Pod object arriving later replaces the registration-derived metadata.
    st.set_manifests([Object::Pod(pod("default", "a", &[("app", "a")], &[]))]);
    let idx = st.endpoint_index("node-1");
    assert!(
        idx.lookup(&ip("10.0.0.1"))
            .unwrap()
            .labels
            .contains(&"k8s:app=a".to_string())
    );
    assert_eq!(
        st.identities().len(),
        2,
        "pod a's label set and b's namespace-only set"
    );

    assert_eq!(st.remove_endpoint("c2", "eth0").map(|e| e.id), Some(b.id));
    assert_eq!(st.remove_endpoint("c2", "eth0"), None);
    assert_eq!(
        st.identities().len(),
        1,
        "b's identity released with its endpoint"
    );
    assert!(
        st.endpoint_index("node-1")
            .lookup(&ip("10.0.0.2"))
            .is_none()
    );
    let c = st.upsert_endpoint(&reg("c2", "default", "b", &["10.0.0.2"]));
    assert!(c.id > anon.id, "ids are not reused");
}

#[test]
fn identities_follow_label_sets() {
    let mut st = ClusterState::new();
    let objs = |web_app: &str, with_db: bool, team: &str| {
        let mut v = vec![
            namespace("shop", &[("team", team)]),
            Object::Pod(pod("shop", "w1", &[("app", web_app)], &["10.0.0.1"])),
            Object::Pod(pod("shop", "w2", &[("app", "web")], &["10.0.0.2"])),
        ];
        if with_db {
            v.push(Object::Pod(pod(
                "shop",
                "db",
                &[("app", "db")],
                &["10.0.0.3"],
            )));
        }
        v
    };
    let id = |st: &ClusterState, name: &str| st.pod_meta("shop", name).unwrap().identity;

    st.set_manifests(objs("web", true, "a"));
    let (w, db) = (id(&st, "w1"), id(&st, "db"));
    assert_eq!(w, id(&st, "w2"), "same labels, same identity");
    assert_ne!(w, db);
    assert_eq!(st.identities().len(), 2);

    assert!(!st.set_manifests(objs("web", true, "a")), "no change");
    st.set_manifests(objs("web", false, "a"));
    assert_eq!(
        id(&st, "w1"),
        w,
        "an unchanged label set keeps its identity"
    );
    assert_eq!(st.identities().len(), 1, "db's identity released");
    assert_eq!(st.identities().labels(db), None);

    st.set_manifests(objs("api", false, "a"));
    assert_ne!(id(&st, "w1"), w, "w1 relabelled");
    assert_eq!(id(&st, "w2"), w, "w2 keeps the web identity");

    st.set_manifests(objs("api", false, "b"));
    let meta = st.pod_meta("shop", "w2").unwrap();
    assert!(
        meta.labels
            .contains(&"k8s:io.cilium.k8s.namespace.labels.team=b".to_string())
    );
    assert_ne!(
        meta.identity, w,
        "namespace labels are part of the identity"
    );
    assert_eq!(st.identities().len(), 2);

    st.set_manifests([]);
    assert!(st.identities().is_empty(), "everything released");
    assert_eq!(st.pods().len(), 0);
    assert_eq!(st.counts().objects[&Kind::Pod], 0);
}

#[test]
fn index_of_5000_pods() {
    let mut st = ClusterState::new();
    let mut objects = Vec::new();
    for n in 0..50 {
        objects.push(namespace(&format!("ns{n}"), &[("tier", "t")]));
    }
    for i in 0..5000u32 {
        let v4 = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff);
        let v6 = format!("fd00::{i:x}");
        let ns = format!("ns{}", i % 50);
        let name = format!("pod-{i}");
        let app = format!("app{}", i % 200);
        objects.push(Object::Pod(pod(
            &ns,
            &name,
            &[("app", &app), ("tier", "web")],
            &[&v4, &v6],
        )));
    }
    let t = Instant::now();
    st.set_manifests(objects);
    let set = t.elapsed();
    for i in 0..100u32 {
        st.upsert_endpoint(&reg(
            &format!("c{i}"),
            "ns0",
            &format!("pod-{}", i * 50),
            &[],
        ));
    }
    let t = Instant::now();
    let index = st.endpoint_index("node-1");
    let build = t.elapsed();
    eprintln!("5000 pods: set_manifests {set:?}, endpoint_index {build:?}");
    assert_eq!(index.len(), 10_000);
    // app = i % 200 fixes the namespace (i % 50), so 200 distinct label sets.
    assert_eq!(st.identities().len(), 200);
    let m = index.lookup(&ip("fd00::1387")).unwrap();
    assert_eq!(m.pod_name, "pod-4999");
    assert!(m.identity <= CLUSTER_LOCAL_MAX);
}

fn network_policy(ns: &str, name: &str, app: &str) -> Object {
    let v = serde_json::json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": {"matchLabels": {"app": app}}}
    });
    Object::NetworkPolicy(std::sync::Arc::new(
        weir_policy::NetworkPolicy::from_value(&v).unwrap(),
    ))
}

#[test]
fn network_policies() {
    let mut st = ClusterState::new();
    let base = vec![
        namespace("shop", &[]),
        Object::Pod(pod("shop", "w", &[("app", "web")], &["10.0.0.1"])),
        network_policy("shop", "web", "web"),
        network_policy("default", "all", "x"),
    ];
    assert!(st.set_manifests(base.clone()));
    let id = st.pod_meta("shop", "w").unwrap().identity;
    let names: Vec<String> = st.policies().map(|p| p.key()).collect();
    assert_eq!(
        names,
        ["default/all", "shop/web"],
        "ordered by namespace and name"
    );
    assert_eq!(st.policy("shop", "web").unwrap().name, "web");
    assert!(st.policy("shop", "nope").is_none());
    assert_eq!(st.counts().objects[&Kind::NetworkPolicy], 2);

    assert!(!st.set_manifests(base.clone()), "no change");
    let mut changed = base.clone();
    changed[3] = network_policy("default", "all", "y");
    assert!(st.set_manifests(changed), "a policy change is a change");
    assert_eq!(
        st.policy("default", "all")
            .unwrap()
            .pod_selector
            .match_labels["app"],
        "y"
    );
    assert_eq!(
        st.pod_meta("shop", "w").unwrap().identity,
        id,
        "identities are untouched by policy changes"
    );
    assert!(st.set_manifests(base[..2].to_vec()));
    assert_eq!(st.policies().len(), 0);
}
