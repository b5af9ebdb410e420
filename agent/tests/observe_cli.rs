//! The `weir observe` binary from the outside: exit statuses and messages
//! for bad flags and an unreachable flow API, and, against an Observer
//! server on a unix socket in a temporary directory, the request it sends
//! (Hubble's filter translation), what it prints, token refusal, and a clean
//! end of `--follow` on Ctrl-C. The server here records requests and
//! answers fixed flows: it tests the client; the agent's own service is
//! tested end to end elsewhere.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt as _;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use weir_api::proto::flow as pf;
use weir_api::proto::observer::observer_server::{Observer, ObserverServer};
use weir_api::proto::observer::{self as po, get_flows_response::ResponseTypes};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn weir(args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(WEIR);
    c.arg("observe")
        .args(args)
        .env_remove("WEIR_SERVER")
        .env_remove("HUBBLE_SERVER")
        .env_remove("WEIR_TOKEN_FILE")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

async fn run(args: &[&str]) -> Output {
    tokio::time::timeout(Duration::from_secs(60), weir(args).output())
        .await
        .expect("weir observe finishes within a minute")
        .expect("weir runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn bad_flags_exit_64_naming_the_flag() {
    for (args, want) in [
        (
            &["--verdict", "BOGUS"][..],
            "invalid --verdict value \"BOGUS\"",
        ),
        (&["--from-ip", "300.1.1.1"][..], "invalid --from-ip value"),
        (&["--not"][..], "trailing --not"),
        (
            &["--first", "1", "--last", "1"][..],
            "cannot set both --first and --last",
        ),
        (&["-o", "yaml"][..], "invalid output format: yaml"),
        (&["--no-such-flag"][..], "--no-such-flag"),
    ] {
        let out = run(args).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[tokio::test]
async fn missing_socket_says_how_to_enable_the_flow_api() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("hubble.sock");
    let server = format!("unix://{}", sock.display());
    let local = dir.path().join("weir.sock");
    let out = run(&[
        "--server",
        &server,
        "--socket",
        local.to_str().expect("utf-8"),
    ])
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        format!(
            "weir: the flow API is not reachable at {server} (no such socket): it is off by default; \
             enable it with `weir flows enable`"
        )
    );
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
}

#[tokio::test]
async fn stale_socket_is_refused_with_the_same_hint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("hubble.sock");
    // Bound and closed: the file stays, nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
    let server = format!("unix://{}", sock.display());
    let local = dir.path().join("weir.sock");
    let out = run(&[
        "--server",
        &server,
        "--socket",
        local.to_str().expect("utf-8"),
    ])
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("(connection refused)"), "{err}");
    assert!(err.contains("enable it with `weir flows enable`"), "{err}");
}

/// An Observer that records GetFlows requests and answers two flows and a
/// lost event; with `follow` it then keeps the stream open.
#[derive(Clone, Default)]
struct Recorder {
    requests: Arc<Mutex<Vec<po::GetFlowsRequest>>>,
    token: Option<String>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn flow(sport: u32, reply: bool) -> pf::Flow {
    let ep = |ns: &str, pod: &str, id| pf::Endpoint {
        identity: id,
        namespace: ns.into(),
        pod_name: pod.into(),
        ..Default::default()
    };
    let (src, dst, sp, dp) = if reply {
        (ep("y", "b", 5678), ep("x", "a", 1234), 80, sport)
    } else {
        (ep("x", "a", 1234), ep("y", "b", 5678), sport, 80)
    };
    pf::Flow {
        time: Some(prost_types::Timestamp {
            seconds: 1_732_892_645,
            nanos: 123_000_000,
        }),
        verdict: pf::Verdict::Forwarded as i32,
        ip: Some(pf::Ip {
            source: "10.0.0.1".into(),
            destination: "10.0.0.2".into(),
            ip_version: 1,
            ..Default::default()
        }),
        l4: Some(pf::Layer4 {
            protocol: Some(pf::layer4::Protocol::Tcp(pf::Tcp {
                source_port: sp,
                destination_port: dp,
                flags: Some(pf::TcpFlags {
                    syn: true,
                    ack: reply,
                    ..Default::default()
                }),
            })),
        }),
        source: Some(src),
        destination: Some(dst),
        node_name: "node-1".into(),
        event_type: Some(pf::CiliumEventType {
            r#type: 4,
            sub_type: if reply { 5 } else { 0 },
        }),
        is_reply: Some(reply),
        summary: if reply {
            "TCP Flags: SYN, ACK".into()
        } else {
            "TCP Flags: SYN".into()
        },
        ..Default::default()
    }
}

fn answers() -> Vec<po::GetFlowsResponse> {
    let res = |r| po::GetFlowsResponse {
        node_name: "node-1".into(),
        time: None,
        response_types: Some(r),
    };
    vec![
        res(ResponseTypes::Flow(flow(43210, false))),
        res(ResponseTypes::Flow(flow(43210, true))),
        res(ResponseTypes::LostEvents(pf::LostEvent {
            source: pf::LostEventSource::HubbleRingBuffer as i32,
            num_events_lost: 12,
            cpu: Some(0),
            ..Default::default()
        })),
    ]
}

#[tonic::async_trait]
impl Observer for Recorder {
    type GetFlowsStream = BoxStream<po::GetFlowsResponse>;
    type GetAgentEventsStream = BoxStream<po::GetAgentEventsResponse>;
    type GetDebugEventsStream = BoxStream<po::GetDebugEventsResponse>;

    async fn get_flows(
        &self,
        request: Request<po::GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        if let Some(token) = &self.token {
            let got = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if got != Some(format!("Bearer {token}").as_str()) {
                return Err(Status::unauthenticated("missing or unknown bearer token"));
            }
        }
        let req = request.into_inner();
        let follow = req.follow;
        self.requests.lock().expect("lock").push(req);
        let items = tokio_stream::iter(answers().into_iter().map(Ok));
        let s: Self::GetFlowsStream = if follow {
            Box::pin(tokio_stream::StreamExt::chain(
                items,
                tokio_stream::pending(),
            ))
        } else {
            Box::pin(items)
        };
        Ok(Response::new(s))
    }

    async fn get_agent_events(
        &self,
        _: Request<po::GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn get_debug_events(
        &self,
        _: Request<po::GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn get_nodes(
        &self,
        _: Request<po::GetNodesRequest>,
    ) -> Result<Response<po::GetNodesResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn get_namespaces(
        &self,
        _: Request<po::GetNamespacesRequest>,
    ) -> Result<Response<po::GetNamespacesResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn server_status(
        &self,
        _: Request<po::ServerStatusRequest>,
    ) -> Result<Response<po::ServerStatusResponse>, Status> {
        Ok(Response::new(po::ServerStatusResponse {
            num_flows: 4095,
            max_flows: 4095,
            seen_flows: 10_000,
            uptime_ns: 100_000_000_000,
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(0),
            flows_rate: 12.34,
            version: "weir-test".into(),
            ..Default::default()
        }))
    }
}

/// Serves `rec` on a unix socket in `dir` until the test ends.
fn serve(rec: Recorder, dir: &Path) -> PathBuf {
    let path = dir.join("hubble.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind the test socket");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(ObserverServer::new(rec))
            .serve_with_incoming(incoming)
            .await;
    });
    path
}

#[tokio::test]
async fn sends_hubble_filters_and_prints_compact_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rec = Recorder::default();
    let sock = serve(rec.clone(), dir.path());
    let server = format!("unix://{}", sock.display());
    let out = run(&[
        "--server",
        &server,
        "--pod",
        "x/a",
        "--not",
        "--verdict",
        "DROPPED",
        "--protocol",
        "tcp",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "Nov 29 15:04:05.123: x/a:43210 (ID:1234) -> y/b:80 (ID:5678) to-endpoint FORWARDED (TCP Flags: SYN)\n\
         Nov 29 15:04:05.123: x/a:43210 (ID:1234) <- y/b:80 (ID:5678) from-endpoint FORWARDED (TCP Flags: SYN, ACK)\n\
         EVENTS LOST: HUBBLE_RING_BUFFER CPU(0) 12\n"
    );
    let reqs = rec.requests.lock().expect("lock").clone();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.number, 20, "no selector: the last 20");
    assert!(!r.follow && !r.first);
    assert_eq!(r.whitelist.len(), 2, "--pod is source OR destination");
    assert_eq!(r.whitelist[0].source_pod, vec!["x/a".to_owned()]);
    assert_eq!(r.whitelist[1].destination_pod, vec!["x/a".to_owned()]);
    assert!(
        r.whitelist
            .iter()
            .all(|f| f.protocol == vec!["tcp".to_owned()])
    );
    assert_eq!(r.blacklist.len(), 1);
    assert_eq!(r.blacklist[0].verdict, vec![pf::Verdict::Dropped as i32]);
}

#[tokio::test]
async fn jsonpb_prints_one_object_per_response() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = serve(Recorder::default(), dir.path());
    let server = format!("unix://{}", sock.display());
    let out = run(&["--server", &server, "-o", "jsonpb", "--last", "3"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["flow"]["source"]["pod_name"], "a");
    assert_eq!(lines[1]["flow"]["is_reply"], true);
    assert_eq!(lines[2]["lost_events"]["num_events_lost"], "12");
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rec = Recorder {
        token: Some("good-token".into()),
        ..Default::default()
    };
    let sock = serve(rec, dir.path());
    let server = format!("unix://{}", sock.display());
    let token = dir.path().join("token");
    std::fs::write(&token, "bad-token\n").expect("write token");
    let token_arg = token.to_str().expect("utf-8");
    let out = run(&["--server", &server, "--token-file", token_arg]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    assert!(
        err.contains(&format!("the bearer token in {token_arg} was not accepted")),
        "{err}"
    );
    let out = run(&["--server", &server]).await;
    assert!(
        text(&out.stderr).contains("pass --token-file"),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(&token, "# the token\ngood-token\n").expect("write token");
    let out = run(&["--server", &server, "--token-file", token_arg]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 3);
}

#[tokio::test]
async fn follow_ends_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = serve(Recorder::default(), dir.path());
    let server = format!("unix://{}", sock.display());
    let mut child = weir(&["--server", &server, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir observe");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a line within 30 s")
            .expect("reading stdout")
            .expect("stdout still open");
        seen.push(line);
    }
    assert!(seen[2].starts_with("EVENTS LOST"), "{seen:?}");
    let pid = nix::unistd::Pid::from_raw(child.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("send SIGINT");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within 10 s of Ctrl-C")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "Ctrl-C ends a follow cleanly");
    assert!(
        lines.next_line().await.expect("read").is_none(),
        "nothing after the stream"
    );
}

#[tokio::test]
async fn status_text_is_hubble_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = serve(Recorder::default(), dir.path());
    let server = format!("unix://{}", sock.display());
    let text = weir_agent::observe::flow_api_status_text(&server)
        .await
        .expect("status of the test server");
    assert_eq!(
        text,
        format!(
            "Healthcheck (via {server}): Ok\nCurrent/Max Flows: 4,095/4,095 (100.00%)\nFlows/s: 12.34\nConnected Nodes: 1/1"
        )
    );
    let missing = format!("unix://{}", dir.path().join("none.sock").display());
    let err = weir_agent::observe::flow_api_status_text(&missing)
        .await
        .expect_err("no server there");
    assert!(err.contains("no such socket"), "{err}");
}
