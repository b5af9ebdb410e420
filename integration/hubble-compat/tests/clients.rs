//! The two independent clients agree with each other without any server:
//! Python's stubs (grpcio-tools, generated at run time) and the Rust ones
//! (tonic-prost-build, generated at build time) turn the same protobuf JSON
//! into the same wire bytes, for a request that touches every kind of field
//! the compatibility tests use. Needs `target/pyenv` (cargo xtask setup):
//! skips without it, fails under CI=true.

use serde_json::{Value, json};
use weir_hubble_compat::python::{PythonClient, PythonError, python_client};
use weir_hubble_compat::{in_ci, protos_dir};

fn python(test: &str) -> Option<PythonClient> {
    match python_client() {
        Ok(p) => Some(p),
        Err(e) if in_ci() => panic!("{test}: {e} (CI=true forbids skipping)"),
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            None
        }
    }
}

#[test]
fn the_upstream_protos_were_found() {
    match protos_dir() {
        Ok(dir) => assert!(dir.join("observer/observer.proto").is_file()),
        Err(e) if in_ci() => panic!("{e} (CI=true forbids skipping)"),
        Err(e) => eprintln!("skipping the_upstream_protos_were_found: {e}"),
    }
}

fn requests() -> Vec<(&'static str, Value)> {
    vec![
        (
            "observer.GetFlowsRequest",
            json!({
                "number": "7",
                "first": true,
                "whitelist": [
                    {
                        "uuid": ["0a4e4a6c-6f58-4a6e-8d8a-3a1c2f9d1e01"],
                        "source_ip": ["10.244.0.2", "fd00:10:244::/112"],
                        "source_pod": ["x/a", "y/"],
                        "source_label": ["k8s:app=web", "app in (web, db)"],
                        "destination_port": ["80", "53"],
                        "protocol": ["tcp", "icmpv6"],
                        "verdict": ["FORWARDED", "DROPPED"],
                        "event_type": [{"type": 4, "match_sub_type": true, "sub_type": 5}],
                        "tcp_flags": [{"SYN": true, "ACK": true}],
                        "traffic_direction": ["INGRESS"],
                        "reply": [true, false],
                        "node_name": ["weir-*"],
                        "ip_version": ["IPv4", "IPv6"],
                        "source_identity": [258, 70000],
                        "drop_reason_desc": ["POLICY_DENIED"]
                    },
                    {"destination_pod": ["y/c"]}
                ],
                "blacklist": [{"source_pod": ["x/"]}],
                "since": "2026-01-02T03:04:05.123456789Z",
                "until": "2026-01-02T03:04:06Z",
                "field_mask": "source.podName,destination.namespace,uuid,l4"
            }),
        ),
        (
            "observer.GetFlowsRequest",
            json!({"follow": true, "number": "0"}),
        ),
        ("observer.GetAgentEventsRequest", json!({"number": "3"})),
        ("peer.NotifyRequest", json!({})),
    ]
}

#[tokio::test]
async fn rust_and_python_make_the_same_wire_bytes() {
    let Some(python) = python("rust_and_python_make_the_same_wire_bytes") else {
        return;
    };
    for (message, request) in requests() {
        let rust = weir_hubble_compat::json::json_to_bytes(message, &request)
            .unwrap_or_else(|e| panic!("Rust parses {message} {request}: {e}"));
        let py = python
            .encode(message, &request)
            .await
            .unwrap_or_else(|e| panic!("Python parses {message} {request}: {e}"));
        assert_eq!(rust, py, "{message} {request}");
        // And back: the bytes print as the JSON they came from.
        let printed = weir_hubble_compat::json::bytes_to_json(message, &py).unwrap();
        let reparsed = weir_hubble_compat::json::json_to_bytes(message, &printed).unwrap();
        assert_eq!(reparsed, py, "{message}: {printed}");
    }
}

#[tokio::test]
async fn python_reports_an_unreachable_server_as_an_rpc_error() {
    let Some(python) = python("python_reports_an_unreachable_server_as_an_rpc_error") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = format!("unix://{}/none.sock", dir.path().display());
    let err = python.server_status(&server).await.unwrap_err();
    assert_eq!(err.code(), Some("UNAVAILABLE"), "{err}");
    let err = python
        .get_flows(&server, &json!({"nope": true}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PythonError::Failed { stderr, .. } if stderr.contains("nope")),
        "an unknown field is a usage error naming it: {err}"
    );
}

#[tokio::test]
async fn rust_client_connect_errors_name_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = format!("unix://{}/none.sock", dir.path().display());
    let err = weir_hubble_compat::HubbleClient::connect(&server)
        .await
        .unwrap_err();
    if protos_dir().is_ok() {
        assert!(err.to_string().contains("none.sock"), "{err}");
    } else {
        assert!(err.to_string().contains("Hubble protos"), "{err}");
    }
}
