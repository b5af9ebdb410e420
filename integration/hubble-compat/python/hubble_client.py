#!/usr/bin/env python3
"""A Hubble API client made only from the upstream Hubble protos.

At every run the gRPC stubs are generated with grpcio-tools from the proto
directory given with --protos (into a temporary directory, with the
well-known types grpcio-tools bundles), then one command runs against
--server (`unix:///path`, `host:port` or `http://host:port`, plain).

Output: every answer is one line of canonical protobuf JSON with proto field
names (json_format, preserving_proto_field_name=True).

Exit status: 0 done; 2 bad usage; 3 the RPC failed (stderr:
`ERROR <StatusCode name> <details>`); 4 an answer could not be printed as
JSON (stderr: `ERROR JSON <reason>`); 5 the stubs could not be generated.
"""

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import threading

PROTO_FILES = [
    "flow/flow.proto",
    "observer/observer.proto",
    "peer/peer.proto",
    "relay/relay.proto",
]


def fail(status, message):
    print(message, file=sys.stderr, flush=True)
    sys.exit(status)


def generate_stubs(protos, out_dir):
    """Runs protoc (from grpcio-tools) over the upstream protos into out_dir
    and imports the generated modules."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    missing = [p for p in PROTO_FILES if not os.path.isfile(os.path.join(protos, p))]
    if missing:
        fail(5, f"ERROR PROTOS {protos} lacks {', '.join(missing)}")
    args = [
        "grpc_tools.protoc",
        f"-I{protos}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        fail(5, f"ERROR PROTOC generating stubs from {protos} failed")
    # The generated modules import each other as `flow.flow_pb2` etc.:
    # namespace packages rooted at out_dir.
    sys.path.insert(0, out_dir)
    return {
        "observer_pb2": importlib.import_module("observer.observer_pb2"),
        "observer_grpc": importlib.import_module("observer.observer_pb2_grpc"),
        "peer_pb2": importlib.import_module("peer.peer_pb2"),
        "peer_grpc": importlib.import_module("peer.peer_pb2_grpc"),
        "flow_pb2": importlib.import_module("flow.flow_pb2"),
        "relay_pb2": importlib.import_module("relay.relay_pb2"),
    }


def channel_target(server):
    """The grpc target and channel options for --server."""
    if server.startswith("unix://"):
        # gRPC C-core (>= 1.57) sends the percent-encoded socket path as
        # :authority, which HTTP/2 servers built on Rust's h2 (tonic) reject
        # with RST_STREAM PROTOCOL_ERROR; grpc-go (the hubble CLI), grpcurl and
        # the kubelet send "localhost" for unix sockets, and so do we.
        return server, [("grpc.default_authority", "localhost")]
    if server.startswith("http://"):
        return server[len("http://"):], []
    if "://" in server:
        fail(2, f"ERROR USAGE unsupported server {server!r} (unix:///path, host:port, http://host:port)")
    return server, []


# Stands in for a flow's `extensions` whose Any holds a type the upstream
# protos do not define: json_format cannot print it (nor can Go's protojson),
# so it is printed as {"@type": <type URL>, "@unresolvable": true}, exactly
# as the Rust client does.
UNRESOLVABLE_ANY = "@unresolvable"


def to_dict(message):
    from google.protobuf import descriptor_pool, json_format

    unresolvable = None
    if (
        message.DESCRIPTOR.full_name == "observer.GetFlowsResponse"
        and message.HasField("flow")
        and message.flow.HasField("extensions")
    ):
        type_url = message.flow.extensions.type_url
        try:
            descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[-1])
        except KeyError:
            copy = type(message)()
            copy.CopyFrom(message)
            copy.flow.ClearField("extensions")
            message, unresolvable = copy, type_url
    try:
        d = json_format.MessageToDict(message, preserving_proto_field_name=True)
        if unresolvable is not None:
            d["flow"]["extensions"] = {"@type": unresolvable, UNRESOLVABLE_ANY: True}
        return d
    except (TypeError, json_format.Error) as e:
        # What `hubble observe -o json` would also fail on, e.g. an Any
        # whose type the upstream protos do not define.
        fail(4, f"ERROR JSON {type(message).__name__}: {e}")


def emit(message):
    print(json.dumps(to_dict(message), separators=(",", ":")), flush=True)


def parse(message_class, text):
    from google.protobuf import json_format

    try:
        return json_format.Parse(text, message_class())
    except json_format.ParseError as e:
        fail(2, f"ERROR USAGE {message_class.__name__}: {e}")


def rpc_failed(e):
    fail(3, f"ERROR {e.code().name} {e.details()}")


def stream_responses(call, limit, duration):
    """Prints responses of a streaming call, stopping after `limit` of them
    (0: no limit) or `duration` seconds (0: none); the call is cancelled
    when the client stops it, which is then not an error."""
    import grpc

    stopped = threading.Event()
    timer = None
    if duration > 0:
        def stop():
            stopped.set()
            call.cancel()
        timer = threading.Timer(duration, stop)
        timer.daemon = True
        timer.start()
    count = 0
    try:
        # Headers arrive once the server has accepted the call: from here
        # on a `follow` request sees every new flow.
        call.initial_metadata()
        print("# started", file=sys.stderr, flush=True)
        for response in call:
            emit(response)
            count += 1
            if limit and count >= limit:
                stopped.set()
                call.cancel()
                break
    except grpc.RpcError as e:
        if not (stopped.is_set() and e.code() == grpc.StatusCode.CANCELLED):
            rpc_failed(e)
    finally:
        if timer:
            timer.cancel()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protos", required=True, help="upstream Hubble proto directory (holds flow/, observer/, peer/, relay/)")
    ap.add_argument("--server", default="unix:///var/run/cilium/hubble.sock")
    ap.add_argument("--timeout", type=float, default=10.0, help="deadline of unary and finite calls, seconds")
    ap.add_argument("--token", help="sent as `authorization: Bearer <token>`")
    sub = ap.add_subparsers(dest="command", required=True)
    gf = sub.add_parser("get-flows", help="Observer.GetFlows; one GetFlowsResponse per line")
    gf.add_argument("--request", default="{}", help="GetFlowsRequest as protobuf JSON")
    gf.add_argument("--max", type=int, default=0, help="stop after this many responses (0: no limit)")
    gf.add_argument("--duration", type=float, default=0.0, help="follow: stop after this many seconds")
    sub.add_parser("server-status", help="Observer.ServerStatus")
    sub.add_parser("get-nodes", help="Observer.GetNodes")
    sub.add_parser("get-namespaces", help="Observer.GetNamespaces")
    ae = sub.add_parser("get-agent-events", help="Observer.GetAgentEvents")
    ae.add_argument("--request", default="{}", help="GetAgentEventsRequest as protobuf JSON")
    pn = sub.add_parser("peer-notify", help="Peer.Notify; reads --count notifications then exits")
    pn.add_argument("--count", type=int, default=1)
    bt = sub.add_parser("batch", help="many finite GetFlows calls over one channel")
    bt.add_argument("--requests", required=True, help="file with one GetFlowsRequest JSON per line ('-': stdin)")
    en = sub.add_parser("encode", help="print the wire bytes (hex) of a message given as JSON; no server")
    en.add_argument("--message", required=True, help="full name, e.g. observer.GetFlowsRequest")
    en.add_argument("--json", required=True)
    args = ap.parse_args()

    out_dir = tempfile.mkdtemp(prefix="hubble-stubs-")
    try:
        run(args, generate_stubs(args.protos, out_dir))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def run(args, mods):
    import grpc
    from google.protobuf import symbol_database

    if args.command == "encode":
        try:
            cls = symbol_database.Default().GetSymbol(args.message)
        except KeyError:
            fail(2, f"ERROR USAGE no message {args.message}")
        print(parse(cls, args.json).SerializeToString(deterministic=True).hex())
        return

    observer_pb2, peer_pb2 = mods["observer_pb2"], mods["peer_pb2"]
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    target, options = channel_target(args.server)
    with grpc.insecure_channel(target, options=options) as channel:
        observer = mods["observer_grpc"].ObserverStub(channel)
        try:
            if args.command == "get-flows":
                request = parse(observer_pb2.GetFlowsRequest, args.request)
                # A follow call has no deadline: --duration ends it.
                timeout = None if request.follow else args.timeout
                call = observer.GetFlows(request, timeout=timeout, metadata=metadata)
                stream_responses(call, args.max, args.duration)
            elif args.command == "server-status":
                emit(observer.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=args.timeout, metadata=metadata))
            elif args.command == "get-nodes":
                emit(observer.GetNodes(observer_pb2.GetNodesRequest(), timeout=args.timeout, metadata=metadata))
            elif args.command == "get-namespaces":
                emit(observer.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=args.timeout, metadata=metadata))
            elif args.command == "get-agent-events":
                request = parse(observer_pb2.GetAgentEventsRequest, args.request)
                for response in observer.GetAgentEvents(request, timeout=args.timeout, metadata=metadata):
                    emit(response)
            elif args.command == "peer-notify":
                peer = mods["peer_grpc"].PeerStub(channel)
                call = peer.Notify(peer_pb2.NotifyRequest(), timeout=args.timeout, metadata=metadata)
                stream_responses(call, args.count, 0.0)
            elif args.command == "batch":
                run_batch(args, observer, observer_pb2, metadata)
        except grpc.RpcError as e:
            rpc_failed(e)


def run_batch(args, observer, observer_pb2, metadata):
    """One output line per request line, in order:
    {"index": i, "responses": [...]} or {"index": i, "error": {"code": ..., "details": ...}}."""
    import grpc

    source = sys.stdin if args.requests == "-" else open(args.requests, encoding="utf-8")
    with source:
        lines = [l for l in source.read().splitlines() if l.strip()]
    for index, line in enumerate(lines):
        request = parse(observer_pb2.GetFlowsRequest, line)
        if request.follow:
            fail(2, f"ERROR USAGE batch request {index} has follow set")
        try:
            responses = [to_dict(r) for r in observer.GetFlows(request, timeout=args.timeout, metadata=metadata)]
            result = {"index": index, "responses": responses}
        except grpc.RpcError as e:
            result = {"index": index, "error": {"code": e.code().name, "details": e.details()}}
        print(json.dumps(result, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
