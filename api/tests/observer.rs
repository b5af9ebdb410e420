//! The Observer service's request semantics, called in process (the wire is
//! tested end to end in integration/tests/flow_api_*.rs): last and first N,
//! time windows, follow without gaps or duplicates while flows keep coming, a
//! slow client's losses reported in place, upstream losses, refusals.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tonic::Request;
use weir_api::observer::{NodeInfo, ObserverService};
use weir_api::proto::flow as pf;
use weir_api::proto::observer::observer_server::Observer;
use weir_api::proto::observer::{GetFlowsRequest, GetFlowsResponse, get_flows_response};
use weir_flows::flow::{Flow, Layer4, LostEventSource, Tcp, Timestamp};
use weir_flows::metrics::Metrics;
use weir_flows::store::FlowStore;

/// Flow number `n`: its source port carries `n`, its time is `n` seconds.
fn flow(n: u32) -> Flow {
    Flow {
        time: Some(Timestamp {
            seconds: 1_700_000_000 + i64::from(n),
            nanos: 0,
        }),
        uuid: uuid::Uuid::new_v4(),
        l4: Some(Layer4::Tcp(Tcp {
            source_port: n,
            destination_port: if n.is_multiple_of(2) { 80 } else { 443 },
            flags: None,
        })),
        ..Flow::default()
    }
}

fn service(store: &FlowStore, queue: usize) -> (ObserverService, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(false);
    let svc = ObserverService::new(
        store.clone(),
        NodeInfo {
            name: "n1".into(),
            ..NodeInfo::default()
        },
        queue,
        Arc::new(Metrics::new().unwrap()),
        Arc::new(Vec::new),
        rx,
    );
    (svc, tx)
}

fn port_of(r: &GetFlowsResponse) -> Option<u32> {
    match &r.response_types {
        Some(get_flows_response::ResponseTypes::Flow(f)) => match &f.l4.as_ref()?.protocol {
            Some(pf::layer4::Protocol::Tcp(t)) => Some(t.source_port),
            _ => None,
        },
        _ => None,
    }
}

fn lost_of(r: &GetFlowsResponse) -> Option<(i32, u64)> {
    match &r.response_types {
        Some(get_flows_response::ResponseTypes::LostEvents(l)) => {
            Some((l.source, l.num_events_lost))
        }
        _ => None,
    }
}

async fn collect(svc: &ObserverService, req: GetFlowsRequest) -> Vec<GetFlowsResponse> {
    let stream = svc
        .get_flows(Request::new(req))
        .await
        .expect("accepted")
        .into_inner();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.map(|r| r.unwrap()).collect(),
    )
    .await
    .expect("a non-follow stream ends")
}

fn port_filter(port: &str) -> pf::FlowFilter {
    pf::FlowFilter {
        destination_port: vec![port.into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn last_first_and_windows() {
    let store = FlowStore::with_capacity(100).unwrap();
    for n in 0..150 {
        store.push(flow(n));
    }
    let (svc, _stop) = service(&store, 16);
    // The ring holds 50..150; the last 5 to port 80 are the newest even ones, oldest first.
    let r = collect(
        &svc,
        GetFlowsRequest {
            number: 5,
            whitelist: vec![port_filter("80")],
            ..Default::default()
        },
    )
    .await;
    let ports: Vec<u32> = r.iter().filter_map(port_of).collect();
    assert_eq!(ports, vec![140, 142, 144, 146, 148]);
    assert!(r.iter().all(|x| x.node_name == "n1" && x.time.is_some()));
    // First 3 of the ring, blacklisting port 80.
    let r = collect(
        &svc,
        GetFlowsRequest {
            number: 3,
            first: true,
            blacklist: vec![port_filter("80")],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        r.iter().filter_map(port_of).collect::<Vec<_>>(),
        vec![51, 53, 55]
    );
    // since/until: seconds 100..=104 inclusive.
    let ts = |n: i64| prost_types::Timestamp {
        seconds: 1_700_000_000 + n,
        nanos: 0,
    };
    let r = collect(
        &svc,
        GetFlowsRequest {
            since: Some(ts(100)),
            until: Some(ts(104)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        r.iter().filter_map(port_of).collect::<Vec<_>>(),
        vec![100, 101, 102, 103, 104]
    );
    // No number: the whole ring.
    let r = collect(&svc, GetFlowsRequest::default()).await;
    assert_eq!(r.len(), 100);
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_reason() {
    let store = FlowStore::new();
    let (svc, _stop) = service(&store, 16);
    let cases = [
        (
            GetFlowsRequest {
                first: true,
                follow: true,
                ..Default::default()
            },
            "first and follow",
        ),
        (
            GetFlowsRequest {
                whitelist: vec![pf::FlowFilter {
                    source_ip: vec!["10.0.0.0/33".into()],
                    ..Default::default()
                }],
                ..Default::default()
            },
            "whitelist[0].source_ip",
        ),
        (
            GetFlowsRequest {
                blacklist: vec![pf::FlowFilter {
                    http_path: vec!["/x".into()],
                    ..Default::default()
                }],
                ..Default::default()
            },
            "http_path",
        ),
        (
            GetFlowsRequest {
                field_mask: Some(prost_types::FieldMask {
                    paths: vec!["no_such_field".into()],
                }),
                ..Default::default()
            },
            "no_such_field",
        ),
    ];
    for (req, want) in cases {
        let Err(status) = svc.get_flows(Request::new(req)).await else {
            panic!("{want}: accepted");
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{want}");
        assert!(
            status.message().contains(want),
            "{want}: {}",
            status.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_has_no_gap_and_no_duplicate_while_flows_keep_coming() {
    let store = FlowStore::with_capacity(65_535).unwrap();
    for n in 0..1000 {
        store.push(flow(n));
    }
    let (svc, stop) = service(&store, 65_535);
    let pusher = {
        let store = store.clone();
        std::thread::spawn(move || {
            for n in 1000..30_000 {
                store.push(flow(n));
            }
        })
    };
    let mut stream = svc
        .get_flows(Request::new(GetFlowsRequest {
            number: 100,
            follow: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    pusher.join().unwrap();
    let mut got = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
        let r = r.unwrap();
        assert_eq!(lost_of(&r), None, "a big enough queue loses nothing");
        got.push(port_of(&r).unwrap());
        if got.last() == Some(&29_999) {
            break;
        }
    }
    assert_eq!(got.last(), Some(&29_999), "followed to the end");
    let first = got[0];
    let want: Vec<u32> = (first..30_000).collect();
    assert_eq!(got, want, "contiguous, in order, no duplicate");
    assert_eq!(got.len() as u32, 30_000 - first);
    // Stopping the API ends the stream.
    stop.send(true).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(2), stream.next()).await;
    assert!(matches!(end, Ok(None)), "stream ends on stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_loses_flows_and_is_told_in_place() {
    let store = FlowStore::with_capacity(65_535).unwrap();
    let (svc, _stop) = service(&store, 10);
    let mut stream = svc
        .get_flows(Request::new(GetFlowsRequest {
            follow: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    // The client does not read while 5 000 flows arrive.
    for n in 0..5000 {
        store.push(flow(n));
    }
    store.report_lost(LostEventSource::PerfEventRingBuffer, 7);
    let mut flows = 0u64;
    let mut lost_ring = 0u64;
    let mut lost_kernel = 0u64;
    let mut last_port = None;
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
        let r = r.unwrap();
        match lost_of(&r) {
            Some((s, n)) if s == pf::LostEventSource::HubbleRingBuffer as i32 => lost_ring += n,
            Some((s, n)) if s == pf::LostEventSource::PerfEventRingBuffer as i32 => {
                lost_kernel += n
            }
            Some(other) => panic!("unexpected lost event {other:?}"),
            None => {
                let p = port_of(&r).unwrap();
                assert!(last_port.is_none_or(|l| p > l), "in order");
                last_port = Some(p);
                flows += 1;
            }
        }
    }
    assert!(lost_ring > 0, "the slow client lost flows");
    assert_eq!(
        flows + lost_ring,
        5000,
        "every flow is either delivered or reported lost"
    );
    assert_eq!(
        lost_kernel, 7,
        "upstream losses reach the client with their source"
    );
    let stats = store.subscriber_stats();
    assert_eq!(stats[0].name, "flow_api");
    assert_eq!(
        stats[0].dropped, lost_ring,
        "the drops are counted for metrics"
    );
}

#[tokio::test]
async fn extensions_only_when_the_field_mask_asks_for_them() {
    let store = FlowStore::new();
    let mut f = flow(1);
    f.extensions = Some(weir_flows::flow::FlowExtensions {
        packets_forward: 3,
        ..Default::default()
    });
    store.push(f);
    let (svc, _stop) = service(&store, 16);
    let flow_of = |r: &GetFlowsResponse| match &r.response_types {
        Some(get_flows_response::ResponseTypes::Flow(f)) => f.clone(),
        _ => panic!("not a flow"),
    };
    // Upstream clients cannot print an Any of a type they do not know.
    let r = collect(&svc, GetFlowsRequest::default()).await;
    assert!(flow_of(&r[0]).extensions.is_none());
    assert!(flow_of(&r[0]).l4.is_some());
    let r = collect(
        &svc,
        GetFlowsRequest {
            field_mask: Some(prost_types::FieldMask {
                paths: vec!["extensions".into(), "l4".into()],
            }),
            ..Default::default()
        },
    )
    .await;
    let f = flow_of(&r[0]);
    assert!(f.extensions.is_some(), "asked for by name");
    assert!(f.l4.is_some() && f.source.is_none(), "mask applied");
}
