"""OTLP test receiver for weir-otel's tests.

Serves OTLP/gRPC (LogsService, MetricsService from opentelemetry-proto's
generated stubs) and OTLP/HTTP with protobuf bodies (POST /v1/logs,
/v1/metrics, decoded with the same official classes) on 127.0.0.1, and
writes one JSON line per request to --out, flattened so tests can check it
field by field:

  {"signal": "logs", "transport": "grpc"|"http", "outcome": "ok"|"failed",
   "resource": {attr: value}, "scope": name,
   "records": [{"time_unix_nano": int, "observed_time_unix_nano": int,
                "severity_number": int, "severity_text": str, "event_name": str,
                "body": value, "attributes": {attr: value}}]}
  {"signal": "metrics", ..., "metrics": [{"name", "description", "type":
   "sum"|"gauge"|"histogram"|"summary", "is_monotonic", "temporality",
   "points": [{"attributes", "value" | "count","sum","bucket_counts","explicit_bounds",
               "start_time_unix_nano", "time_unix_nano"}]}]}

Failure injection: the first --fail-first requests (both signals together)
fail with --grpc-code (gRPC, default UNAVAILABLE, with a RetryInfo of
--retry-after seconds when given) or --http-status (default 503, with a
Retry-After header when given). --reject N answers every successful logs
request with a partial success rejecting N records.

Prints "READY grpc=<port> http=<port>" once listening; exits when stdin
closes (so a dying test never leaves it behind).
"""

import argparse
import json
import os
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)


def any_value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def attrs(kvs):
    out = {}
    for kv in kvs:
        if kv.key in out:
            raise ValueError(f"duplicate attribute {kv.key}")
        out[kv.key] = any_value(kv.value)
    return out


def flatten_logs(req):
    out = {"signal": "logs", "records": []}
    for rl in req.resource_logs:
        out["resource"] = attrs(rl.resource.attributes)
        for sl in rl.scope_logs:
            out["scope"] = sl.scope.name
            for r in sl.log_records:
                out["records"].append(
                    {
                        "time_unix_nano": r.time_unix_nano,
                        "observed_time_unix_nano": r.observed_time_unix_nano,
                        "severity_number": r.severity_number,
                        "severity_text": r.severity_text,
                        "event_name": r.event_name,
                        "body": any_value(r.body),
                        "attributes": attrs(r.attributes),
                    }
                )
    return out


def number(p):
    kind = p.WhichOneof("value")
    return None if kind is None else getattr(p, kind)


def flatten_metrics(req):
    out = {"signal": "metrics", "metrics": []}
    for rm in req.resource_metrics:
        out["resource"] = attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            out["scope"] = sm.scope.name
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                e = {"name": m.name, "description": m.description, "type": kind, "points": []}
                data = getattr(m, kind)
                if kind == "sum":
                    e["is_monotonic"] = data.is_monotonic
                    e["temporality"] = data.aggregation_temporality
                if kind == "histogram":
                    e["temporality"] = data.aggregation_temporality
                for p in data.data_points:
                    d = {
                        "attributes": attrs(p.attributes),
                        "start_time_unix_nano": p.start_time_unix_nano,
                        "time_unix_nano": p.time_unix_nano,
                    }
                    if kind in ("sum", "gauge"):
                        d["value"] = number(p)
                    elif kind == "histogram":
                        d.update(
                            count=p.count,
                            sum=p.sum,
                            bucket_counts=list(p.bucket_counts),
                            explicit_bounds=list(p.explicit_bounds),
                        )
                    elif kind == "summary":
                        d.update(count=p.count, sum=p.sum)
                    e["points"].append(d)
                out["metrics"].append(e)
    return out


def varint(n):
    b = bytearray()
    while True:
        x = n & 0x7F
        n >>= 7
        if n:
            b.append(x | 0x80)
        else:
            b.append(x)
            return bytes(b)


def field(num, wire, payload):
    key = varint((num << 3) | wire)
    if wire == 0:
        return key + varint(payload)
    return key + varint(len(payload)) + payload


def status_with_retry_info(code, message, seconds):
    """google.rpc.Status{code, message, details=[Any(RetryInfo{retry_delay})]},
    hand-encoded: the googleapis protos are not among this receiver's deps."""
    duration = field(1, 0, seconds)
    retry_info = field(1, 2, duration)
    any_msg = field(1, 2, b"type.googleapis.com/google.rpc.RetryInfo") + field(2, 2, retry_info)
    return field(1, 0, code) + field(2, 2, message.encode()) + field(3, 2, any_msg)


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.requests = 0
        self.out = open(args.out, "a", buffering=1)

    def admit(self):
        """True when this request must fail."""
        with self.lock:
            self.requests += 1
            return self.requests <= self.args.fail_first

    def write(self, entry):
        line = json.dumps(entry)
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()


class Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, state):
        self.state = state

    def Export(self, request, context):
        return grpc_export(self.state, context, "logs", request)


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, state):
        self.state = state

    def Export(self, request, context):
        return grpc_export(self.state, context, "metrics", request)


def response(state, signal):
    if signal == "logs":
        resp = logs_service_pb2.ExportLogsServiceResponse()
        if state.args.reject:
            resp.partial_success.rejected_log_records = state.args.reject
            resp.partial_success.error_message = "test rejection"
        return resp
    return metrics_service_pb2.ExportMetricsServiceResponse()


def grpc_export(state, context, signal, request):
    if state.admit():
        state.write({"signal": signal, "transport": "grpc", "outcome": "failed"})
        code = getattr(grpc.StatusCode, state.args.grpc_code)
        if state.args.retry_after is not None:
            details = status_with_retry_info(code.value[0], "test failure", state.args.retry_after)
            context.set_trailing_metadata((("grpc-status-details-bin", details),))
        context.abort(code, "test failure")
    flat = flatten_logs(request) if signal == "logs" else flatten_metrics(request)
    flat.update(transport="grpc", outcome="ok")
    state.write(flat)
    return response(state, signal)


def make_http_handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, status, body=b"", headers=()):
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            signal = {"/v1/logs": "logs", "/v1/metrics": "metrics"}.get(self.path)
            if signal is None:
                state.write({"transport": "http", "outcome": "bad_path", "path": self.path})
                return self.reply(404)
            if self.headers.get("Content-Type") != "application/x-protobuf":
                state.write({"signal": signal, "transport": "http", "outcome": "bad_content_type"})
                return self.reply(415)
            if state.admit():
                state.write({"signal": signal, "transport": "http", "outcome": "failed"})
                headers = []
                if state.args.retry_after is not None:
                    headers.append(("Retry-After", str(state.args.retry_after)))
                return self.reply(state.args.http_status, b"", headers)
            if signal == "logs":
                req = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
                flat = flatten_logs(req)
            else:
                req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                flat = flatten_metrics(req)
            flat.update(transport="http", outcome="ok")
            flat["headers"] = {k.lower(): v for k, v in self.headers.items()}
            state.write(flat)
            self.reply(200, response(state, signal).SerializeToString())

    return Handler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--fail-first", type=int, default=0)
    ap.add_argument("--grpc-code", default="UNAVAILABLE")
    ap.add_argument("--http-status", type=int, default=503)
    ap.add_argument("--retry-after", type=int, default=None)
    ap.add_argument("--reject", type=int, default=0)
    args = ap.parse_args()
    state = State(args)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(state), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(state), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_http_handler(state))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    print(f"READY grpc={grpc_port} http={httpd.server_address[1]}", flush=True)
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    main()
