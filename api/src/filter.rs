//! Hubble's flow filters (`flow.FlowFilter`), compiled once per request and
//! evaluated on `weir_flows::Flow` before anything is converted to protobuf.
//!
//! A flow passes [`FlowFilters`] when the whitelist is empty or at least one
//! whitelist filter matches it, and no blacklist filter matches it. Within one
//! `FlowFilter` every field that is set must match (AND); within one field any
//! listed value may match (OR). A filter with no field set matches every flow.
//!
//! Compiling parses everything once (addresses and CIDRs, label selectors,
//! namespaced names, node-name patterns, ports, protocols), so
//! [`FlowFilters::matches`] only compares and never allocates.
//!
//! Field by field (Hubble's meaning unless said otherwise):
//!
//! | field | meaning in Weir |
//! |---|---|
//! | `uuid` | the flow's UUID (any textual UUID form; refused if not a UUID) |
//! | `source_ip`, `destination_ip` | exact address (compared as addresses, so `fd00::01` equals `fd00::1`) or CIDR `addr/len` |
//! | `ip_version` | `IP.ipVersion`; a flow without IP has `IP_NOT_USED` |
//! | `source_pod`, `destination_pod` | `ns/prefix`: pods in `ns` whose name starts with `prefix`; `ns/`: the whole namespace; `/prefix`: any namespace; `prefix` alone: namespace `default` (as Hubble's parser does). Endpoints with neither namespace nor pod name never match. |
//! | `source_service`, `destination_service` | same syntax, checked; Weir's flows carry no service yet, so these match no flow (as Hubble does for flows without a service) |
//! | `source_label`, `destination_label` | Kubernetes label selectors (`k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, `k>n`, `k<n`, comma = AND) over the endpoint's labels; a key may carry a Cilium source (`k8s:app=web`, `reserved:world`); a key without one matches labels of any source |
//! | `source_port`, `destination_port` | decimal port of a TCP, UDP or SCTP flow; other flows never match |
//! | `protocol` | `tcp`, `udp`, `sctp`, `icmpv4`, `icmpv6`, `icmp` (either ICMP), case-insensitive; `http`, `dns`, `kafka` are accepted and match nothing, because Weir produces no L7 flows; anything else is refused |
//! | `verdict`, `drop_reason_desc`, `traffic_direction` | enum membership |
//! | `event_type` | `type` (0 = any) and, with `match_sub_type`, `sub_type` |
//! | `tcp_flags` | a TCP flow matches one listed `TCPFlags` when it has all of that value's set flags |
//! | `reply` | `is_reply`; a DROPPED flow with unknown `is_reply` counts as not a reply, any other unknown never matches (Hubble's rule) |
//! | `node_name` | patterns `[cluster/]node`, `*` matching any run of `[-.0-9a-z]`, an empty side matching any name; a flow's node name without a cluster is in cluster `default` |
//! | `source_identity`, `destination_identity` | numeric security identity |
//! | `source_workload`, `destination_workload` | an endpoint workload whose name and kind equal the given ones (an empty one matches any) |
//! | `source_cluster_name`, `destination_cluster_name` | the endpoint's cluster name (empty values refused) |
//! | `interface` | index (0 = any) and name ("" = any) |
//! | `encrypted` | `IP.encrypted` (always false for Weir's own flows) |
//!
//! Refused with [`FilterError::Unsupported`], so the server answers
//! INVALID_ARGUMENT instead of silently returning nothing: `source_ip_xlated`
//! (no SNAT data), `source_fqdn`, `destination_fqdn` (no DNS names),
//! `dns_query` and every `http_*` field (no L7 visibility), `node_labels`
//! (flows carry no node labels), `trace_id`, `ip_trace_id` (not extracted)
//! and `experimental.cel_expression` (no CEL evaluator).
//!
//! Known limit: protobuf decoding drops fields this build does not know, so
//! a filter field added upstream after these protos cannot be detected and is
//! ignored.
//!
//! Pure: no I/O, no locks.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use uuid::Uuid;
use weir_flows::Flow;
use weir_flows::flow::{Endpoint, Layer4, TcpFlags, Verdict};

use crate::proto::flow as pb;

/// Which list of a request a filter came from (for error messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    Whitelist,
    Blacklist,
}

impl fmt::Display for ListKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ListKind::Whitelist => "whitelist",
            ListKind::Blacklist => "blacklist",
        })
    }
}

/// Why a request's filters could not be compiled. The `Display` text names the
/// list, the filter's index in it and the field, and is meant to be sent to
/// the client as is (gRPC INVALID_ARGUMENT).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A value of a supported field does not parse or is out of range.
    #[error("{list}[{index}].{field}: {value:?} {reason}")]
    Invalid {
        list: ListKind,
        index: usize,
        field: &'static str,
        value: String,
        reason: String,
    },
    /// The field needs data Weir does not have.
    #[error("{list}[{index}].{field}: not supported by Weir ({why}); remove this filter")]
    Unsupported {
        list: ListKind,
        index: usize,
        field: &'static str,
        why: &'static str,
    },
}

/// A request's compiled whitelist and blacklist.
#[derive(Debug, Clone, Default)]
pub struct FlowFilters {
    whitelist: Vec<Compiled>,
    blacklist: Vec<Compiled>,
}

/// Compiles a request's filters; see the module documentation for each
/// field's meaning.
pub fn compile(
    whitelist: &[pb::FlowFilter],
    blacklist: &[pb::FlowFilter],
) -> Result<FlowFilters, FilterError> {
    FlowFilters::compile(whitelist, blacklist)
}

impl FlowFilters {
    /// Same as [`compile`].
    pub fn compile(
        whitelist: &[pb::FlowFilter],
        blacklist: &[pb::FlowFilter],
    ) -> Result<Self, FilterError> {
        let build = |list: ListKind, filters: &[pb::FlowFilter]| {
            filters
                .iter()
                .enumerate()
                .map(|(index, ff)| Compiled::new(ff, &Ctx { list, index }))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            whitelist: build(ListKind::Whitelist, whitelist)?,
            blacklist: build(ListKind::Blacklist, blacklist)?,
        })
    }

    /// Whether every flow passes (no filters at all).
    pub fn is_empty(&self) -> bool {
        self.whitelist.is_empty() && self.blacklist.is_empty()
    }

    /// Whether `f` passes: (no whitelist, or one whitelist filter matches)
    /// and no blacklist filter matches.
    pub fn matches(&self, f: &Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|c| c.matches(f)))
            && !self.blacklist.iter().any(|c| c.matches(f))
    }
}

/// Where a filter sits in the request, for errors.
struct Ctx {
    list: ListKind,
    index: usize,
}

impl Ctx {
    fn invalid(&self, field: &'static str, value: &str, reason: impl Into<String>) -> FilterError {
        FilterError::Invalid {
            list: self.list,
            index: self.index,
            field,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }

    fn unsupported(&self, field: &'static str, why: &'static str) -> FilterError {
        FilterError::Unsupported {
            list: self.list,
            index: self.index,
            field,
            why,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Source,
    Destination,
}

impl Side {
    fn endpoint(self, f: &Flow) -> Option<&Endpoint> {
        match self {
            Side::Source => f.source.as_deref(),
            Side::Destination => f.destination.as_deref(),
        }
    }

    fn ip(self, f: &Flow) -> Option<IpAddr> {
        let ip = f.ip.as_ref()?;
        match self {
            Side::Source => ip.source,
            Side::Destination => ip.destination,
        }
    }

    fn port(self, f: &Flow) -> Option<u16> {
        let (s, d) = match f.l4.as_ref()? {
            Layer4::Tcp(t) => (t.source_port, t.destination_port),
            Layer4::Udp(u) | Layer4::Sctp(u) => (u.source_port, u.destination_port),
            _ => return None,
        };
        Some(match self {
            Side::Source => s as u16,
            Side::Destination => d as u16,
        })
    }
}

/// One compiled `FlowFilter`: all conditions must hold.
#[derive(Debug, Clone)]
struct Compiled {
    conds: Vec<Cond>,
}

#[derive(Debug, Clone)]
enum Cond {
    Uuid(Box<[Uuid]>),
    Ip(Side, IpMatch),
    IpVersion(Box<[i32]>),
    Name(Side, Box<[NameMatch]>),
    /// A condition no Weir flow satisfies (service names: flows carry none).
    Never,
    Labels(Side, Box<[Selector]>),
    Port(Side, Box<[u16]>),
    /// Bit set of [`proto_bit`] values.
    Protocol(u8),
    Verdict(Box<[i32]>),
    DropReason(Box<[i32]>),
    TrafficDirection(Box<[i32]>),
    EventType(Box<[EventTypeMatch]>),
    /// Each entry is a bit set of [`tcp_flag_bits`]; one fully present suffices.
    TcpFlags(Box<[u16]>),
    Reply {
        yes: bool,
        no: bool,
    },
    NodeName(Box<[NodePattern]>),
    Identity(Side, Box<[u32]>),
    Workload(Side, Box<[(Box<str>, Box<str>)]>),
    ClusterName(Side, Box<[Box<str>]>),
    Interface(Box<[(u32, Box<str>)]>),
    Encrypted {
        yes: bool,
        no: bool,
    },
}

impl Cond {
    /// Rough evaluation cost, so cheap conditions reject a flow first.
    fn cost(&self) -> u8 {
        match self {
            Cond::Never
            | Cond::Protocol(_)
            | Cond::Verdict(_)
            | Cond::DropReason(_)
            | Cond::TrafficDirection(_)
            | Cond::EventType(_)
            | Cond::Reply { .. }
            | Cond::Encrypted { .. }
            | Cond::IpVersion(_)
            | Cond::TcpFlags(_)
            | Cond::Port(..)
            | Cond::Identity(..)
            | Cond::Interface(_) => 0,
            Cond::Uuid(_) | Cond::Ip(..) => 1,
            Cond::Name(..) | Cond::ClusterName(..) | Cond::Workload(..) | Cond::NodeName(_) => 2,
            Cond::Labels(..) => 3,
        }
    }

    fn matches(&self, f: &Flow) -> bool {
        match self {
            Cond::Uuid(ids) => ids.contains(&f.uuid),
            Cond::Ip(side, m) => side.ip(f).is_some_and(|ip| m.matches(ip)),
            Cond::IpVersion(v) => v.contains(&f.ip.map_or(0, |ip| ip.ip_version as i32)),
            Cond::Name(side, names) => side.endpoint(f).is_some_and(|ep| {
                (!ep.namespace.is_empty() || !ep.pod_name.is_empty())
                    && names.iter().any(|n| n.matches(&ep.namespace, &ep.pod_name))
            }),
            Cond::Never => false,
            Cond::Labels(side, selectors) => {
                let labels = side.endpoint(f).map_or(&[][..], |ep| ep.labels.as_slice());
                selectors.iter().any(|s| s.matches(labels))
            }
            Cond::Port(side, ports) => side.port(f).is_some_and(|p| ports.contains(&p)),
            Cond::Protocol(bits) => proto_bit(f.l4.as_ref()) & bits != 0,
            Cond::Verdict(v) => v.contains(&(f.verdict as i32)),
            Cond::DropReason(v) => v.contains(&(f.drop_reason_desc as i32)),
            Cond::TrafficDirection(v) => v.contains(&(f.traffic_direction as i32)),
            Cond::EventType(types) => f
                .event_type
                .is_some_and(|e| types.iter().any(|t| t.matches(e.r#type, e.sub_type))),
            Cond::TcpFlags(sets) => match &f.l4 {
                Some(Layer4::Tcp(t)) => t.flags.is_some_and(|fl| {
                    let have = tcp_flag_bits(&fl);
                    sets.iter().any(|want| have & want == *want)
                }),
                _ => false,
            },
            Cond::Reply { yes, no } => match f.is_reply {
                Some(true) => *yes,
                Some(false) => *no,
                None => f.verdict == Verdict::Dropped && *no,
            },
            Cond::NodeName(patterns) => {
                let name = &*f.node_name;
                if name.is_empty() {
                    return false;
                }
                let (cluster, node) = name.split_once('/').unwrap_or(("default", name));
                patterns.iter().any(|p| p.matches(cluster, node))
            }
            Cond::Identity(side, ids) => side
                .endpoint(f)
                .is_some_and(|ep| ids.contains(&ep.identity)),
            Cond::Workload(side, wanted) => side.endpoint(f).is_some_and(|ep| {
                ep.workloads.iter().any(|w| {
                    wanted.iter().any(|(name, kind)| {
                        (name.is_empty() || **name == *w.name)
                            && (kind.is_empty() || **kind == *w.kind)
                    })
                })
            }),
            Cond::ClusterName(side, names) => {
                let cluster = side.endpoint(f).map_or("", |ep| ep.cluster_name.as_str());
                names.iter().any(|n| **n == *cluster)
            }
            Cond::Interface(wanted) => f.interface.as_ref().is_some_and(|i| {
                wanted.iter().any(|(index, name)| {
                    (*index == 0 || *index == i.index) && (name.is_empty() || **name == *i.name)
                })
            }),
            Cond::Encrypted { yes, no } => {
                if f.ip.is_some_and(|ip| ip.encrypted) {
                    *yes
                } else {
                    *no
                }
            }
        }
    }
}

const PROTO_TCP: u8 = 1;
const PROTO_UDP: u8 = 1 << 1;
const PROTO_ICMPV4: u8 = 1 << 2;
const PROTO_ICMPV6: u8 = 1 << 3;
const PROTO_SCTP: u8 = 1 << 4;

fn proto_bit(l4: Option<&Layer4>) -> u8 {
    match l4 {
        Some(Layer4::Tcp(_)) => PROTO_TCP,
        Some(Layer4::Udp(_)) => PROTO_UDP,
        Some(Layer4::Icmpv4(_)) => PROTO_ICMPV4,
        Some(Layer4::Icmpv6(_)) => PROTO_ICMPV6,
        Some(Layer4::Sctp(_)) => PROTO_SCTP,
        // VRRP, IGMP: no protocol filter value names them.
        _ => 0,
    }
}

fn tcp_flag_bits(f: &TcpFlags) -> u16 {
    (f.fin as u16)
        | (f.syn as u16) << 1
        | (f.rst as u16) << 2
        | (f.psh as u16) << 3
        | (f.ack as u16) << 4
        | (f.urg as u16) << 5
        | (f.ece as u16) << 6
        | (f.cwr as u16) << 7
        | (f.ns as u16) << 8
}

fn pb_tcp_flag_bits(f: &pb::TcpFlags) -> u16 {
    tcp_flag_bits(&TcpFlags {
        fin: f.fin,
        syn: f.syn,
        rst: f.rst,
        psh: f.psh,
        ack: f.ack,
        urg: f.urg,
        ece: f.ece,
        cwr: f.cwr,
        ns: f.ns,
    })
}

impl Compiled {
    fn new(ff: &pb::FlowFilter, cx: &Ctx) -> Result<Self, FilterError> {
        // Refused fields first, so the answer names them whatever else is wrong.
        let unsupported: [(&'static str, bool, &'static str); 13] = [
            (
                "source_ip_xlated",
                !ff.source_ip_xlated.is_empty(),
                "flows carry no SNAT translation",
            ),
            (
                "source_fqdn",
                !ff.source_fqdn.is_empty(),
                "no DNS names are known for flows",
            ),
            (
                "destination_fqdn",
                !ff.destination_fqdn.is_empty(),
                "no DNS names are known for flows",
            ),
            (
                "http_status_code",
                !ff.http_status_code.is_empty(),
                "no L7 (HTTP) visibility",
            ),
            (
                "dns_query",
                !ff.dns_query.is_empty(),
                "no L7 (DNS) visibility",
            ),
            (
                "http_method",
                !ff.http_method.is_empty(),
                "no L7 (HTTP) visibility",
            ),
            (
                "http_path",
                !ff.http_path.is_empty(),
                "no L7 (HTTP) visibility",
            ),
            (
                "http_url",
                !ff.http_url.is_empty(),
                "no L7 (HTTP) visibility",
            ),
            (
                "http_header",
                !ff.http_header.is_empty(),
                "no L7 (HTTP) visibility",
            ),
            (
                "node_labels",
                !ff.node_labels.is_empty(),
                "flows carry no node labels",
            ),
            (
                "trace_id",
                !ff.trace_id.is_empty(),
                "trace contexts are not extracted",
            ),
            (
                "ip_trace_id",
                !ff.ip_trace_id.is_empty(),
                "IP trace IDs are not extracted",
            ),
            (
                "experimental.cel_expression",
                ff.experimental
                    .as_ref()
                    .is_some_and(|e| !e.cel_expression.is_empty()),
                "no CEL evaluator",
            ),
        ];
        if let Some((field, _, why)) = unsupported.iter().find(|(_, set, _)| *set) {
            return Err(cx.unsupported(field, why));
        }

        let mut conds = Vec::new();
        if !ff.uuid.is_empty() {
            let ids = ff
                .uuid
                .iter()
                .map(|s| Uuid::try_parse(s).map_err(|_| cx.invalid("uuid", s, "is not a UUID")))
                .collect::<Result<_, _>>()?;
            conds.push(Cond::Uuid(ids));
        }
        for (side, field, values) in [
            (Side::Source, "source_ip", &ff.source_ip),
            (Side::Destination, "destination_ip", &ff.destination_ip),
        ] {
            if !values.is_empty() {
                conds.push(Cond::Ip(side, IpMatch::parse(values, field, cx)?));
            }
        }
        if !ff.ip_version.is_empty() {
            conds.push(Cond::IpVersion(ff.ip_version.clone().into()));
        }
        for (side, field, values) in [
            (Side::Source, "source_pod", &ff.source_pod),
            (Side::Destination, "destination_pod", &ff.destination_pod),
        ] {
            if !values.is_empty() {
                let names = values
                    .iter()
                    .map(|v| NameMatch::parse(v).map_err(|r| cx.invalid(field, v, r)))
                    .collect::<Result<_, _>>()?;
                conds.push(Cond::Name(side, names));
            }
        }
        for (field, values) in [
            ("source_service", &ff.source_service),
            ("destination_service", &ff.destination_service),
        ] {
            if !values.is_empty() {
                for v in values {
                    NameMatch::parse(v).map_err(|r| cx.invalid(field, v, r))?;
                }
                conds.push(Cond::Never);
            }
        }
        for (side, field, values) in [
            (Side::Source, "source_label", &ff.source_label),
            (
                Side::Destination,
                "destination_label",
                &ff.destination_label,
            ),
        ] {
            if !values.is_empty() {
                let selectors = values
                    .iter()
                    .map(|v| Selector::parse(v).map_err(|r| cx.invalid(field, v, r)))
                    .collect::<Result<_, _>>()?;
                conds.push(Cond::Labels(side, selectors));
            }
        }
        for (side, field, values) in [
            (Side::Source, "source_port", &ff.source_port),
            (Side::Destination, "destination_port", &ff.destination_port),
        ] {
            if !values.is_empty() {
                let ports = values
                    .iter()
                    .map(|v| {
                        parse_port(v)
                            .ok_or_else(|| cx.invalid(field, v, "is not a port number (0-65535)"))
                    })
                    .collect::<Result<_, _>>()?;
                conds.push(Cond::Port(side, ports));
            }
        }
        if !ff.protocol.is_empty() {
            let mut bits = 0;
            for p in &ff.protocol {
                bits |= match p.to_ascii_lowercase().as_str() {
                    "tcp" => PROTO_TCP,
                    "udp" => PROTO_UDP,
                    "sctp" => PROTO_SCTP,
                    "icmpv4" => PROTO_ICMPV4,
                    "icmpv6" => PROTO_ICMPV6,
                    "icmp" => PROTO_ICMPV4 | PROTO_ICMPV6,
                    // L7 protocols: Weir produces no L7 flows, so none matches.
                    "http" | "dns" | "kafka" => 0,
                    _ => {
                        return Err(cx.invalid(
                            "protocol",
                            p,
                            "is not a known protocol (tcp, udp, sctp, icmp, icmpv4, icmpv6, http, dns, kafka)",
                        ));
                    }
                };
            }
            conds.push(Cond::Protocol(bits));
        }
        if !ff.verdict.is_empty() {
            conds.push(Cond::Verdict(ff.verdict.clone().into()));
        }
        if !ff.drop_reason_desc.is_empty() {
            conds.push(Cond::DropReason(ff.drop_reason_desc.clone().into()));
        }
        if !ff.traffic_direction.is_empty() {
            conds.push(Cond::TrafficDirection(ff.traffic_direction.clone().into()));
        }
        if !ff.event_type.is_empty() {
            conds.push(Cond::EventType(
                ff.event_type
                    .iter()
                    .map(|e| EventTypeMatch {
                        r#type: e.r#type,
                        sub_type: e.match_sub_type.then_some(e.sub_type),
                    })
                    .collect(),
            ));
        }
        if !ff.tcp_flags.is_empty() {
            conds.push(Cond::TcpFlags(
                ff.tcp_flags.iter().map(pb_tcp_flag_bits).collect(),
            ));
        }
        if !ff.reply.is_empty() {
            conds.push(Cond::Reply {
                yes: ff.reply.contains(&true),
                no: ff.reply.contains(&false),
            });
        }
        if !ff.node_name.is_empty() {
            let patterns = ff
                .node_name
                .iter()
                .map(|v| NodePattern::parse(v).map_err(|r| cx.invalid("node_name", v, r)))
                .collect::<Result<_, _>>()?;
            conds.push(Cond::NodeName(patterns));
        }
        for (side, values) in [
            (Side::Source, &ff.source_identity),
            (Side::Destination, &ff.destination_identity),
        ] {
            if !values.is_empty() {
                conds.push(Cond::Identity(side, values.clone().into()));
            }
        }
        for (side, values) in [
            (Side::Source, &ff.source_workload),
            (Side::Destination, &ff.destination_workload),
        ] {
            if !values.is_empty() {
                conds.push(Cond::Workload(
                    side,
                    values
                        .iter()
                        .map(|w| (w.name.as_str().into(), w.kind.as_str().into()))
                        .collect(),
                ));
            }
        }
        for (side, field, values) in [
            (Side::Source, "source_cluster_name", &ff.source_cluster_name),
            (
                Side::Destination,
                "destination_cluster_name",
                &ff.destination_cluster_name,
            ),
        ] {
            if !values.is_empty() {
                if values.iter().any(String::is_empty) {
                    return Err(cx.invalid(field, "", "is empty; give a cluster name"));
                }
                conds.push(Cond::ClusterName(
                    side,
                    values.iter().map(|v| v.as_str().into()).collect(),
                ));
            }
        }
        if !ff.interface.is_empty() {
            conds.push(Cond::Interface(
                ff.interface
                    .iter()
                    .map(|i| (i.index, i.name.as_str().into()))
                    .collect(),
            ));
        }
        if !ff.encrypted.is_empty() {
            conds.push(Cond::Encrypted {
                yes: ff.encrypted.contains(&true),
                no: ff.encrypted.contains(&false),
            });
        }
        conds.sort_by_key(Cond::cost);
        Ok(Self { conds })
    }

    fn matches(&self, f: &Flow) -> bool {
        self.conds.iter().all(|c| c.matches(f))
    }
}

/// A decimal port as Go's `strconv.ParseUint(s, 10, 16)` reads it (digits
/// only: no sign, no spaces).
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Exact addresses and CIDR prefixes of one IP field.
#[derive(Debug, Clone)]
struct IpMatch {
    exact: Box<[IpAddr]>,
    nets: Box<[IpNetwork]>,
}

impl IpMatch {
    fn parse(values: &[String], field: &'static str, cx: &Ctx) -> Result<Self, FilterError> {
        let (mut exact, mut nets) = (Vec::new(), Vec::new());
        for v in values {
            let bad = || cx.invalid(field, v, "is not an IP or CIDR");
            match v.split_once('/') {
                None => exact.push(v.parse::<IpAddr>().map_err(|_| bad())?),
                Some((addr, len)) => {
                    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
                    let len = if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) {
                        len.parse::<u8>().map_err(|_| bad())?
                    } else {
                        return Err(bad());
                    };
                    nets.push(IpNetwork::new(addr, len).map_err(|_| bad())?);
                }
            }
        }
        Ok(Self {
            exact: exact.into(),
            nets: nets.into(),
        })
    }

    fn matches(&self, ip: IpAddr) -> bool {
        self.exact.contains(&ip) || self.nets.iter().any(|n| n.contains(ip))
    }
}

/// `[namespace/][name-prefix]`.
#[derive(Debug, Clone)]
struct NameMatch {
    /// `None`: any namespace.
    namespace: Option<Box<str>>,
    prefix: Box<str>,
}

impl NameMatch {
    fn parse(v: &str) -> Result<Self, &'static str> {
        let (namespace, prefix) = match v.split_once('/') {
            None if v.is_empty() => return Err("is empty; use [namespace/][name-prefix]"),
            None => (Some("default"), v),
            Some(("", "")) => {
                return Err("names neither a namespace nor a name; use [namespace/][name-prefix]");
            }
            Some(("", prefix)) => (None, prefix),
            Some((ns, prefix)) => (Some(ns), prefix),
        };
        Ok(Self {
            namespace: namespace.map(Into::into),
            prefix: prefix.into(),
        })
    }

    fn matches(&self, namespace: &str, name: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && name.starts_with(&*self.prefix)
    }
}

#[derive(Debug, Clone, Copy)]
struct EventTypeMatch {
    /// 0 matches any type.
    r#type: i32,
    /// Compared only when the filter asked to.
    sub_type: Option<i32>,
}

impl EventTypeMatch {
    fn matches(&self, r#type: i32, sub_type: i32) -> bool {
        (self.r#type == 0 || self.r#type == r#type) && self.sub_type.is_none_or(|s| s == sub_type)
    }
}

/// A Kubernetes label selector: every requirement must hold.
#[derive(Debug, Clone)]
struct Selector {
    reqs: Box<[Requirement]>,
}

#[derive(Debug, Clone)]
struct Requirement {
    /// Cilium label source (`k8s`, `reserved`, ...); `None` matches any source.
    source: Option<Box<str>>,
    key: Box<str>,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Exists,
    NotExists,
    In(Box<[Box<str>]>),
    NotIn(Box<[Box<str>]>),
    Gt(i64),
    Lt(i64),
}

/// Splits a flow label `source:key=value` (Cilium's form; the source is
/// `unspec` when there is no `:` before the `=`).
fn split_label(l: &str) -> (&str, &str, &str) {
    let eq = l.find('=');
    let (source, rest) = match l.find(':') {
        Some(c) if eq.is_none_or(|e| c < e) => (&l[..c], &l[c + 1..]),
        _ => ("unspec", l),
    };
    match rest.split_once('=') {
        Some((k, v)) => (source, k, v),
        None => (source, rest, ""),
    }
}

impl Requirement {
    fn values<'a>(&'a self, labels: &'a [String]) -> impl Iterator<Item = &'a str> + 'a {
        labels.iter().filter_map(move |l| {
            let (source, key, value) = split_label(l);
            (key == &*self.key && self.source.as_deref().is_none_or(|s| s == source))
                .then_some(value)
        })
    }

    fn matches(&self, labels: &[String]) -> bool {
        let mut values = self.values(labels);
        match &self.op {
            Op::Exists => values.next().is_some(),
            Op::NotExists => values.next().is_none(),
            Op::In(set) => values.any(|v| set.iter().any(|s| **s == *v)),
            Op::NotIn(set) => !values.any(|v| set.iter().any(|s| **s == *v)),
            Op::Gt(n) => values.any(|v| v.parse::<i64>().is_ok_and(|x| x > *n)),
            Op::Lt(n) => values.any(|v| v.parse::<i64>().is_ok_and(|x| x < *n)),
        }
    }
}

impl Selector {
    fn matches(&self, labels: &[String]) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }

    fn parse(s: &str) -> Result<Self, String> {
        let mut p = SelectorParser {
            s: s.as_bytes(),
            i: 0,
        };
        let mut reqs = Vec::new();
        p.skip_ws();
        if p.peek().is_none() {
            // Kubernetes: the empty selector selects everything.
            return Ok(Self { reqs: reqs.into() });
        }
        loop {
            reqs.push(p.requirement()?);
            p.skip_ws();
            match p.peek() {
                None => break,
                Some(b',') => p.i += 1,
                Some(c) => {
                    return Err(format!(
                        "has {:?} where ',' or the end was expected",
                        c as char
                    ));
                }
            }
        }
        Ok(Self { reqs: reqs.into() })
    }
}

struct SelectorParser<'a> {
    s: &'a [u8],
    i: usize,
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/' | b':')
}

fn is_value_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
}

impl SelectorParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &str {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        // Only ASCII bytes are accepted by the predicates, so this is valid UTF-8.
        std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default()
    }

    fn key(&mut self) -> Result<(Option<Box<str>>, Box<str>), String> {
        self.skip_ws();
        let raw = self.take_while(is_key_char);
        if raw.is_empty() {
            return Err("has a requirement without a label key".into());
        }
        let (source, key) = match raw.split_once(':') {
            Some((source, key)) => (Some(source), key),
            None => (None, raw),
        };
        if key.is_empty() || key.contains(':') || source.is_some_and(str::is_empty) {
            return Err(format!(
                "has an invalid label key {raw:?} (use [source:]key)"
            ));
        }
        let source = source.filter(|s| *s != "any").map(Into::into);
        Ok((source, key.into()))
    }

    fn value(&mut self) -> Result<Box<str>, String> {
        self.skip_ws();
        let v = self.take_while(is_value_char);
        if v.len() > 63 {
            return Err(format!("has label value {v:?} longer than 63 characters"));
        }
        Ok(v.into())
    }

    fn set(&mut self) -> Result<Box<[Box<str>]>, String> {
        self.skip_ws();
        if self.peek() != Some(b'(') {
            return Err("expects '(' after in/notin".into());
        }
        self.i += 1;
        let mut values = Vec::new();
        loop {
            values.push(self.value()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b')') => {
                    self.i += 1;
                    break;
                }
                _ => return Err("has an unterminated value set (missing ')')".into()),
            }
        }
        if values.iter().all(|v| v.is_empty()) {
            return Err("has an empty value set".into());
        }
        Ok(values.into())
    }

    fn number(&mut self) -> Result<i64, String> {
        self.skip_ws();
        let v = self.take_while(|c| c.is_ascii_digit() || c == b'-');
        v.parse()
            .map_err(|_| format!("needs an integer after '>' or '<', got {v:?}"))
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        self.skip_ws();
        if self.peek() == Some(b'!') {
            self.i += 1;
            let (source, key) = self.key()?;
            return Ok(Requirement {
                source,
                key,
                op: Op::NotExists,
            });
        }
        let (source, key) = self.key()?;
        self.skip_ws();
        let op = match self.peek() {
            None | Some(b',') => Op::Exists,
            Some(b'=') => {
                self.i += 1;
                if self.peek() == Some(b'=') {
                    self.i += 1;
                }
                Op::In([self.value()?].into())
            }
            Some(b'!') => {
                self.i += 1;
                if self.peek() != Some(b'=') {
                    return Err("has '!' where '!=' was expected".into());
                }
                self.i += 1;
                Op::NotIn([self.value()?].into())
            }
            Some(b'>') => {
                self.i += 1;
                Op::Gt(self.number()?)
            }
            Some(b'<') => {
                self.i += 1;
                Op::Lt(self.number()?)
            }
            Some(_) => match self.take_while(|c| c.is_ascii_alphabetic()) {
                "in" => Op::In(self.set()?),
                "notin" => Op::NotIn(self.set()?),
                other => {
                    return Err(format!(
                        "has unknown operator {other:?} (use =, ==, !=, in, notin, >, <)"
                    ));
                }
            },
        };
        Ok(Requirement { source, key, op })
    }
}

/// `[cluster/]node`, each side a pattern (see [`NodeElem`]).
#[derive(Debug, Clone)]
struct NodePattern {
    cluster: NodeElem,
    node: NodeElem,
}

/// One side of a node-name pattern.
#[derive(Debug, Clone)]
enum NodeElem {
    /// Empty in the pattern: any DNS-like name.
    AnyName,
    /// Lower-case literal bytes and `*` (any run of `[-.0-9a-z]`). At most
    /// 127 bytes, so matching can track its states in a `u128`.
    Glob(Box<[u8]>),
}

impl NodePattern {
    fn parse(v: &str) -> Result<Self, String> {
        if v.is_empty() {
            return Err("is empty; use [cluster/]node with * as wildcard".into());
        }
        let mut parts = v.split('/');
        let (cluster, node) = match (parts.next(), parts.next(), parts.next()) {
            (Some(node), None, _) => ("", node),
            (Some(cluster), Some(node), None) => (cluster, node),
            _ => return Err("has more than one '/'".into()),
        };
        Ok(Self {
            cluster: NodeElem::parse(cluster)?,
            node: NodeElem::parse(node)?,
        })
    }

    fn matches(&self, cluster: &str, node: &str) -> bool {
        !node.contains('/') && self.cluster.matches(cluster) && self.node.matches(node)
    }
}

impl NodeElem {
    fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Ok(NodeElem::AnyName);
        }
        let trimmed = raw.trim();
        let p = trimmed
            .strip_suffix('.')
            .unwrap_or(trimmed)
            .to_ascii_lowercase();
        if p.is_empty() {
            return Err("has an empty pattern".into());
        }
        if p.ends_with('.') {
            return Err("has more than one trailing dot".into());
        }
        if let Some(c) = p
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.' | '*'))
        {
            return Err(format!("has {c:?}, which node name patterns do not allow"));
        }
        if p.len() > 127 {
            return Err("is longer than 127 characters".into());
        }
        Ok(NodeElem::Glob(p.into_bytes().into()))
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            NodeElem::AnyName => {
                !name.is_empty()
                    && name.split('.').all(|part| {
                        !part.is_empty()
                            && part
                                .bytes()
                                .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_'))
                    })
            }
            NodeElem::Glob(p) => glob_match(p, name.as_bytes()),
        }
    }
}

/// Whether `text` matches `pattern` (literal bytes and `*` standing for any
/// run of `[-.0-9a-z]`), by simulating the pattern's automaton with one bit
/// per position: linear in the text, no backtracking, no allocation.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    debug_assert!(pattern.len() < 128);
    // A state i means "pattern[..i] matched"; a star also lets its successor
    // be reached without consuming anything.
    let close = |mut states: u128| {
        for (i, &c) in pattern.iter().enumerate() {
            if c == b'*' && states & (1 << i) != 0 {
                states |= 1 << (i + 1);
            }
        }
        states
    };
    let mut states = close(1);
    for &t in text {
        let star_ok = matches!(t, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.');
        let mut next = 0u128;
        for (i, &c) in pattern.iter().enumerate() {
            if states & (1 << i) == 0 {
                continue;
            }
            if c == b'*' {
                if star_ok {
                    next |= 1 << i;
                }
            } else if c == t {
                next |= 1 << (i + 1);
            }
        }
        if next == 0 {
            return false;
        }
        states = close(next);
    }
    states & (1 << pattern.len()) != 0
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use weir_flows::flow as wf;

    use super::*;

    fn ep(ns: &str, pod: &str, labels: &[&str]) -> Option<Arc<Endpoint>> {
        Some(Arc::new(Endpoint {
            id: 1,
            identity: 1000,
            cluster_name: "lab".into(),
            namespace: ns.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            pod_name: pod.into(),
            workloads: vec![wf::Workload {
                name: pod.trim_end_matches("-0").into(),
                kind: "StatefulSet".into(),
            }],
        }))
    }

    /// x/web-0 (10.0.0.1:40000) -> y/db-0 (10.0.1.2:5432), TCP SYN, forwarded.
    fn flow() -> Flow {
        Flow {
            uuid: Uuid::from_u128(0x1234),
            verdict: wf::Verdict::Forwarded,
            ip: Some(wf::Ip {
                source: Some("10.0.0.1".parse().unwrap()),
                destination: Some("10.0.1.2".parse().unwrap()),
                ip_version: wf::IpVersion::Ipv4,
                encrypted: false,
            }),
            l4: Some(Layer4::Tcp(wf::Tcp {
                source_port: 40000,
                destination_port: 5432,
                flags: Some(TcpFlags {
                    syn: true,
                    ..TcpFlags::default()
                }),
            })),
            source: ep(
                "x",
                "web-0",
                &["k8s:app=web", "k8s:tier=front", "k8s:rank=3"],
            ),
            destination: ep("y", "db-0", &["k8s:app=db", "container:team=data"]),
            node_name: Arc::from("node-1"),
            event_type: Some(wf::CiliumEventType {
                r#type: wf::EVENT_TYPE_TRACE,
                sub_type: wf::TRACE_SUB_TYPE_FROM_ENDPOINT,
            }),
            traffic_direction: wf::TrafficDirection::Egress,
            trace_observation_point: wf::TraceObservationPoint::FromEndpoint,
            is_reply: Some(false),
            interface: Some(wf::NetworkInterface {
                index: 12,
                name: Arc::from("weirabc"),
            }),
            ..Flow::default()
        }
    }

    fn compile_one(ff: pb::FlowFilter) -> FlowFilters {
        compile(&[ff], &[]).unwrap_or_else(|e| panic!("compile: {e}"))
    }

    fn matches(ff: pb::FlowFilter, f: &Flow) -> bool {
        compile_one(ff).matches(f)
    }

    fn err(ff: pb::FlowFilter) -> String {
        compile(&[ff], &[])
            .expect_err("should be refused")
            .to_string()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn empty_lists_and_empty_filters() {
        let f = flow();
        assert!(compile(&[], &[]).unwrap().matches(&f));
        assert!(compile(&[], &[]).unwrap().is_empty());
        let all = pb::FlowFilter::default();
        assert!(
            compile(std::slice::from_ref(&all), &[])
                .unwrap()
                .matches(&f)
        );
        assert!(!compile(&[], &[all]).unwrap().matches(&f));
    }

    #[test]
    fn and_within_a_filter_or_within_a_field_or_across_filters_and_blacklist() {
        let f = flow();
        let ip = |s: &[&str]| pb::FlowFilter {
            source_ip: strings(s),
            ..Default::default()
        };
        // OR within a field.
        assert!(matches(ip(&["10.9.9.9", "10.0.0.1"]), &f));
        // AND across fields.
        let both = pb::FlowFilter {
            source_ip: strings(&["10.0.0.1"]),
            destination_port: strings(&["5432"]),
            ..Default::default()
        };
        assert!(matches(both.clone(), &f));
        let one_wrong = pb::FlowFilter {
            destination_port: strings(&["80"]),
            ..both.clone()
        };
        assert!(!matches(one_wrong.clone(), &f));
        // OR across whitelist filters.
        assert!(
            compile(&[one_wrong.clone(), both.clone()], &[])
                .unwrap()
                .matches(&f)
        );
        assert!(
            !compile(std::slice::from_ref(&one_wrong), &[])
                .unwrap()
                .matches(&f)
        );
        // Blacklist removes what the whitelist let in.
        assert!(
            !compile(std::slice::from_ref(&both), &[ip(&["10.0.0.0/8"])])
                .unwrap()
                .matches(&f)
        );
        assert!(
            compile(
                std::slice::from_ref(&both),
                std::slice::from_ref(&one_wrong)
            )
            .unwrap()
            .matches(&f)
        );
        // Blacklist alone.
        assert!(!compile(&[], &[ip(&["10.0.0.1"])]).unwrap().matches(&f));
        assert!(
            compile(&[], &[ip(&["10.0.0.2"]), one_wrong])
                .unwrap()
                .matches(&f)
        );
    }

    #[test]
    fn ip_exact_cidr_and_errors() {
        let f = flow();
        let src = |s: &str| pb::FlowFilter {
            source_ip: strings(&[s]),
            ..Default::default()
        };
        let dst = |s: &str| pb::FlowFilter {
            destination_ip: strings(&[s]),
            ..Default::default()
        };
        assert!(matches(src("10.0.0.1"), &f));
        assert!(!matches(src("10.0.0.2"), &f));
        assert!(matches(src("10.0.0.0/24"), &f));
        assert!(
            matches(src("10.0.0.77/24"), &f),
            "host bits are ignored, as Go's ParseCIDR does"
        );
        assert!(!matches(src("10.0.1.0/24"), &f));
        assert!(matches(dst("10.0.1.0/24"), &f));
        assert!(matches(src("0.0.0.0/0"), &f));
        assert!(
            !matches(src("::/0"), &f),
            "an IPv6 prefix does not contain IPv4 addresses"
        );
        let mut v6 = flow();
        v6.ip = Some(wf::Ip {
            source: Some("fd00::1".parse().unwrap()),
            destination: Some("fd00::2".parse().unwrap()),
            ip_version: wf::IpVersion::Ipv6,
            encrypted: false,
        });
        assert!(matches(src("fd00::01"), &v6));
        assert!(matches(src("fd00::/64"), &v6));
        assert!(!matches(src("fd01::/16"), &v6));
        let mut no_ip = flow();
        no_ip.ip = None;
        assert!(!matches(src("0.0.0.0/0"), &no_ip));

        assert_eq!(
            err(src("10.0.0.0/33")),
            r#"whitelist[0].source_ip: "10.0.0.0/33" is not an IP or CIDR"#
        );
        for bad in [
            "10.0.0",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "x",
            "fd00::/129",
            "10.0.0.0/8/8",
            "",
        ] {
            assert!(err(src(bad)).contains("is not an IP or CIDR"), "{bad}");
        }
        let e = compile(&[], &[pb::FlowFilter::default(), dst("nope")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"blacklist[1].destination_ip: "nope" is not an IP or CIDR"#
        );
    }

    #[test]
    fn pods_and_namespaces() {
        let f = flow();
        let pod = |v: &[&str]| pb::FlowFilter {
            source_pod: strings(v),
            ..Default::default()
        };
        let dpod = |v: &[&str]| pb::FlowFilter {
            destination_pod: strings(v),
            ..Default::default()
        };
        assert!(matches(pod(&["x/web-0"]), &f));
        assert!(matches(pod(&["x/web"]), &f), "a prefix of the pod name");
        assert!(matches(pod(&["x/"]), &f), "the whole namespace");
        assert!(matches(pod(&["/web"]), &f), "any namespace");
        assert!(!matches(pod(&["web"]), &f), "no namespace means `default`");
        assert!(!matches(pod(&["x/db"]), &f));
        assert!(!matches(pod(&["y/"]), &f));
        assert!(matches(pod(&["y/", "x/w"]), &f));
        assert!(matches(dpod(&["y/db"]), &f));
        let mut in_default = flow();
        in_default.source = ep("default", "web-0", &[]);
        assert!(matches(pod(&["web"]), &in_default));
        let mut world = flow();
        world.source = Some(Arc::new(Endpoint::world()));
        assert!(!matches(pod(&["/w"]), &world));
        world.source = None;
        assert!(!matches(pod(&["x/"]), &world));

        assert!(err(pod(&[""])).starts_with(r#"whitelist[0].source_pod: "" is empty"#));
        assert!(err(pod(&["/"])).contains("neither a namespace nor a name"));
    }

    #[test]
    fn services_are_checked_but_match_nothing() {
        let svc = pb::FlowFilter {
            destination_service: strings(&["y/db"]),
            ..Default::default()
        };
        assert!(!matches(svc.clone(), &flow()));
        // In a blacklist it therefore excludes nothing.
        assert!(compile(&[], &[svc]).unwrap().matches(&flow()));
        let bad = pb::FlowFilter {
            source_service: strings(&[""]),
            ..Default::default()
        };
        assert!(err(bad).starts_with("whitelist[0].source_service:"));
    }

    #[test]
    fn label_selectors() {
        let f = flow();
        let sel = |s: &str| pb::FlowFilter {
            source_label: strings(&[s]),
            ..Default::default()
        };
        let dsel = |s: &str| pb::FlowFilter {
            destination_label: strings(&[s]),
            ..Default::default()
        };
        for yes in [
            "app=web",
            "app==web",
            "k8s:app=web",
            "any:app=web",
            "app",
            "k8s:app",
            "!missing",
            "app!=db",
            "missing!=x",
            "app in (db, web)",
            "app notin (db,cache)",
            "missing notin (a)",
            "app=web,tier=front",
            " app = web , tier in ( front ) ",
            "rank>2",
            "rank<4",
            "",
        ] {
            assert!(matches(sel(yes), &f), "{yes:?} should match");
        }
        for no in [
            "app=db",
            "container:app=web",
            "!app",
            "app!=web",
            "app in (db)",
            "app notin (web)",
            "app=web,tier=back",
            "missing",
            "rank>3",
            "rank<3",
            "app>1",
        ] {
            assert!(!matches(sel(no), &f), "{no:?} should not match");
        }
        assert!(matches(dsel("container:team=data"), &f));
        assert!(matches(dsel("team=data"), &f));
        assert!(!matches(dsel("k8s:team=data"), &f));
        // OR across selectors.
        let either = pb::FlowFilter {
            source_label: strings(&["app=db", "tier=front"]),
            ..Default::default()
        };
        assert!(matches(either, &f));
        // Reserved labels have no value.
        let mut world = flow();
        world.destination = Some(Arc::new(Endpoint::world()));
        assert!(matches(dsel("reserved:world"), &world));
        assert!(!matches(dsel("k8s:world"), &world));
        // No endpoint: no labels.
        world.destination = None;
        assert!(matches(dsel("!app"), &world));
        assert!(!matches(dsel("app"), &world));

        for (bad, why) in [
            ("app in (web", "unterminated"),
            ("app in web", "expects '('"),
            ("app in ()", "empty value set"),
            ("app ! web", "'!='"),
            ("app like web", "unknown operator"),
            ("=web", "without a label key"),
            (":app=web", "invalid label key"),
            ("app=web;", "where ','"),
            ("rank>x", "integer"),
        ] {
            let e = err(sel(bad));
            assert!(
                e.starts_with("whitelist[0].source_label:") && e.contains(why),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn ports() {
        let f = flow();
        let sp = |v: &[&str]| pb::FlowFilter {
            source_port: strings(v),
            ..Default::default()
        };
        let dp = |v: &[&str]| pb::FlowFilter {
            destination_port: strings(v),
            ..Default::default()
        };
        assert!(matches(dp(&["5432"]), &f));
        assert!(matches(dp(&["80", "5432"]), &f));
        assert!(!matches(dp(&["40000"]), &f));
        assert!(matches(sp(&["40000"]), &f));
        let mut udp = flow();
        udp.l4 = Some(Layer4::Udp(wf::Udp {
            source_port: 53,
            destination_port: 5353,
        }));
        assert!(matches(sp(&["53"]), &udp));
        let mut icmp = flow();
        icmp.l4 = Some(Layer4::Icmpv4(wf::Icmp { r#type: 8, code: 0 }));
        assert!(!matches(dp(&["0"]), &icmp), "ICMP has no port");
        for bad in ["+80", "65536", "http", "", " 80", "-1"] {
            assert!(err(dp(&[bad])).contains("is not a port number"), "{bad:?}");
        }
    }

    #[test]
    fn protocols() {
        let p = |v: &[&str]| pb::FlowFilter {
            protocol: strings(v),
            ..Default::default()
        };
        let tcp = flow();
        let mut icmp6 = flow();
        icmp6.l4 = Some(Layer4::Icmpv6(wf::Icmp {
            r#type: 128,
            code: 0,
        }));
        let mut sctp = flow();
        sctp.l4 = Some(Layer4::Sctp(wf::Udp::default()));
        assert!(matches(p(&["tcp"]), &tcp));
        assert!(matches(p(&["TCP"]), &tcp));
        assert!(!matches(p(&["udp"]), &tcp));
        assert!(matches(p(&["icmp"]), &icmp6));
        assert!(matches(p(&["ICMPv6"]), &icmp6));
        assert!(!matches(p(&["icmpv4"]), &icmp6));
        assert!(matches(p(&["sctp"]), &sctp));
        assert!(!matches(p(&["http"]), &tcp), "no L7 flows");
        assert!(matches(p(&["http", "tcp"]), &tcp));
        let mut none = flow();
        none.l4 = None;
        assert!(!matches(p(&["tcp", "udp", "icmp", "sctp"]), &none));
        assert!(
            err(p(&["quic"]))
                .starts_with(r#"whitelist[0].protocol: "quic" is not a known protocol"#)
        );
    }

    #[test]
    fn enums_verdict_drop_reason_direction_ip_version() {
        let f = flow();
        let v = |v: &[pb::Verdict]| pb::FlowFilter {
            verdict: v.iter().map(|x| *x as i32).collect(),
            ..Default::default()
        };
        assert!(matches(v(&[pb::Verdict::Forwarded]), &f));
        assert!(matches(
            v(&[pb::Verdict::Dropped, pb::Verdict::Forwarded]),
            &f
        ));
        assert!(!matches(v(&[pb::Verdict::Dropped]), &f));

        let mut dropped = flow();
        dropped.verdict = wf::Verdict::Dropped;
        dropped.drop_reason_desc = wf::DropReason::PolicyDenied;
        let dr = |r: pb::DropReason| pb::FlowFilter {
            drop_reason_desc: vec![r as i32],
            ..Default::default()
        };
        assert!(matches(dr(pb::DropReason::PolicyDenied), &dropped));
        assert!(!matches(dr(pb::DropReason::PolicyDeny), &dropped));
        assert!(!matches(dr(pb::DropReason::PolicyDenied), &f));

        let td = |d: pb::TrafficDirection| pb::FlowFilter {
            traffic_direction: vec![d as i32],
            ..Default::default()
        };
        assert!(matches(td(pb::TrafficDirection::Egress), &f));
        assert!(!matches(td(pb::TrafficDirection::Ingress), &f));

        let iv = |v: pb::IpVersion| pb::FlowFilter {
            ip_version: vec![v as i32],
            ..Default::default()
        };
        assert!(matches(iv(pb::IpVersion::IPv4), &f));
        assert!(!matches(iv(pb::IpVersion::IPv6), &f));
        let mut no_ip = flow();
        no_ip.ip = None;
        assert!(matches(iv(pb::IpVersion::IpNotUsed), &no_ip));
    }

    #[test]
    fn event_types() {
        let f = flow();
        let et = |t: i32, m: bool, s: i32| pb::FlowFilter {
            event_type: vec![pb::EventTypeFilter {
                r#type: t,
                match_sub_type: m,
                sub_type: s,
            }],
            ..Default::default()
        };
        assert!(
            matches(et(4, false, 99), &f),
            "sub_type ignored unless asked"
        );
        assert!(matches(et(4, true, 5), &f));
        assert!(!matches(et(4, true, 0), &f), "0 is a real sub_type");
        assert!(!matches(et(1, false, 0), &f));
        assert!(matches(et(0, true, 5), &f), "type 0 is any type");
        let mut none = flow();
        none.event_type = None;
        assert!(!matches(et(0, false, 0), &none));
    }

    #[test]
    fn tcp_flags_need_all_flags_of_one_set() {
        let mut f = flow();
        f.l4 = Some(Layer4::Tcp(wf::Tcp {
            source_port: 1,
            destination_port: 2,
            flags: Some(TcpFlags {
                syn: true,
                ack: true,
                ..TcpFlags::default()
            }),
        }));
        let tf = |sets: &[pb::TcpFlags]| pb::FlowFilter {
            tcp_flags: sets.to_vec(),
            ..Default::default()
        };
        let syn = pb::TcpFlags {
            syn: true,
            ..Default::default()
        };
        let syn_ack = pb::TcpFlags {
            syn: true,
            ack: true,
            ..Default::default()
        };
        let syn_fin = pb::TcpFlags {
            syn: true,
            fin: true,
            ..Default::default()
        };
        let rst = pb::TcpFlags {
            rst: true,
            ..Default::default()
        };
        assert!(matches(tf(&[syn]), &f));
        assert!(matches(tf(&[syn_ack]), &f));
        assert!(!matches(tf(&[syn_fin]), &f));
        assert!(!matches(tf(&[rst]), &f));
        assert!(matches(tf(&[rst, syn_fin, syn_ack]), &f));
        let mut udp = flow();
        udp.l4 = Some(Layer4::Udp(wf::Udp::default()));
        assert!(!matches(tf(&[pb::TcpFlags::default()]), &udp));
    }

    #[test]
    fn reply_follows_hubble_including_dropped_unknown() {
        let r = |v: &[bool]| pb::FlowFilter {
            reply: v.to_vec(),
            ..Default::default()
        };
        let mut f = flow();
        assert!(matches(r(&[false]), &f));
        assert!(!matches(r(&[true]), &f));
        f.is_reply = Some(true);
        assert!(matches(r(&[true]), &f));
        assert!(matches(r(&[true, false]), &f));
        f.is_reply = None;
        assert!(!matches(r(&[true, false]), &f), "unknown never matches");
        f.verdict = wf::Verdict::Dropped;
        assert!(
            matches(r(&[false]), &f),
            "dropped + unknown counts as not a reply"
        );
        assert!(!matches(r(&[true]), &f));
    }

    #[test]
    fn node_name_patterns() {
        let nn = |v: &[&str]| pb::FlowFilter {
            node_name: strings(v),
            ..Default::default()
        };
        let f = flow(); // "node-1", cluster default
        for yes in [
            "node-1",
            "node-*",
            "*",
            "default/node-1",
            "default/",
            "/node-1",
            "*/node-1",
            "NODE-1",
            "node-1.",
            "n*-*1",
        ] {
            assert!(matches(nn(&[yes]), &f), "{yes:?}");
        }
        for no in ["node-2", "node", "lab/node-1", "lab/", "node-1.x", "*x"] {
            assert!(!matches(nn(&[no]), &f), "{no:?}");
        }
        let mut g = flow();
        g.node_name = Arc::from("lab/worker.example.com");
        assert!(matches(nn(&["lab/*.example.com"]), &g));
        assert!(matches(nn(&["lab/"]), &g));
        assert!(matches(nn(&["worker.example.com"]), &g));
        assert!(!matches(nn(&["default/worker.example.com"]), &g));
        let mut empty = flow();
        empty.node_name = Arc::from("");
        assert!(!matches(nn(&["*"]), &empty));

        assert!(err(nn(&[""])).contains("is empty"));
        assert!(err(nn(&["a/b/c"])).contains("more than one '/'"));
        assert!(err(nn(&["node$1"])).contains("'$'"));
        assert!(err(nn(&["node.."])).contains("trailing dot"));
    }

    #[test]
    fn glob_matcher() {
        assert!(glob_match(b"a*c", b"abc"));
        assert!(glob_match(b"a*c", b"ac"));
        assert!(glob_match(b"a*c", b"a.b-c"));
        assert!(!glob_match(b"a*c", b"a_c"), "'*' does not cover '_'");
        assert!(glob_match(b"a_c", b"a_c"));
        assert!(glob_match(b"**", b""));
        assert!(!glob_match(b"a", b""));
        assert!(glob_match(b"*a*a*a*", b"xaxaxa"));
        assert!(!glob_match(
            b"*a*a*a*b",
            b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        ));
    }

    #[test]
    fn identity_workload_cluster_interface_encrypted_uuid() {
        let f = flow();
        let id = pb::FlowFilter {
            destination_identity: vec![7, 1000],
            ..Default::default()
        };
        assert!(matches(id, &f));
        assert!(!matches(
            pb::FlowFilter {
                source_identity: vec![7],
                ..Default::default()
            },
            &f
        ));

        let wl = |name: &str, kind: &str| pb::FlowFilter {
            source_workload: vec![pb::Workload {
                name: name.into(),
                kind: kind.into(),
            }],
            ..Default::default()
        };
        assert!(matches(wl("web", "StatefulSet"), &f));
        assert!(matches(wl("web", ""), &f));
        assert!(matches(wl("", "StatefulSet"), &f));
        assert!(!matches(wl("web", "Deployment"), &f));
        assert!(!matches(wl("db", ""), &f));

        let cl = |v: &[&str]| pb::FlowFilter {
            destination_cluster_name: strings(v),
            ..Default::default()
        };
        assert!(matches(cl(&["lab"]), &f));
        assert!(!matches(cl(&["other"]), &f));
        assert!(err(cl(&[""])).starts_with("whitelist[0].destination_cluster_name:"));

        let iface = |index: u32, name: &str| pb::FlowFilter {
            interface: vec![pb::NetworkInterface {
                index,
                name: name.into(),
            }],
            ..Default::default()
        };
        assert!(matches(iface(12, ""), &f));
        assert!(matches(iface(0, "weirabc"), &f));
        assert!(matches(iface(12, "weirabc"), &f));
        assert!(!matches(iface(13, "weirabc"), &f));
        assert!(!matches(iface(0, "eth0"), &f));

        let enc = |v: &[bool]| pb::FlowFilter {
            encrypted: v.to_vec(),
            ..Default::default()
        };
        assert!(matches(enc(&[false]), &f));
        assert!(!matches(enc(&[true]), &f));

        let uuid = |v: &[&str]| pb::FlowFilter {
            uuid: strings(v),
            ..Default::default()
        };
        assert!(matches(uuid(&["00000000-0000-0000-0000-000000001234"]), &f));
        assert!(!matches(
            uuid(&["00000000-0000-0000-0000-000000001235"]),
            &f
        ));
        assert_eq!(
            err(uuid(&["xyz"])),
            r#"whitelist[0].uuid: "xyz" is not a UUID"#
        );
    }

    #[test]
    fn fields_without_data_are_refused_by_name() {
        let cases: Vec<(&str, pb::FlowFilter)> = vec![
            (
                "source_ip_xlated",
                pb::FlowFilter {
                    source_ip_xlated: strings(&["1.1.1.1"]),
                    ..Default::default()
                },
            ),
            (
                "source_fqdn",
                pb::FlowFilter {
                    source_fqdn: strings(&["a.b"]),
                    ..Default::default()
                },
            ),
            (
                "destination_fqdn",
                pb::FlowFilter {
                    destination_fqdn: strings(&["a.b"]),
                    ..Default::default()
                },
            ),
            (
                "http_status_code",
                pb::FlowFilter {
                    http_status_code: strings(&["404"]),
                    ..Default::default()
                },
            ),
            (
                "dns_query",
                pb::FlowFilter {
                    dns_query: strings(&[".*"]),
                    ..Default::default()
                },
            ),
            (
                "http_method",
                pb::FlowFilter {
                    http_method: strings(&["GET"]),
                    ..Default::default()
                },
            ),
            (
                "http_path",
                pb::FlowFilter {
                    http_path: strings(&["/"]),
                    ..Default::default()
                },
            ),
            (
                "http_url",
                pb::FlowFilter {
                    http_url: strings(&["/"]),
                    ..Default::default()
                },
            ),
            (
                "http_header",
                pb::FlowFilter {
                    http_header: vec![pb::HttpHeader::default()],
                    ..Default::default()
                },
            ),
            (
                "node_labels",
                pb::FlowFilter {
                    node_labels: strings(&["a=b"]),
                    ..Default::default()
                },
            ),
            (
                "trace_id",
                pb::FlowFilter {
                    trace_id: strings(&["ab"]),
                    ..Default::default()
                },
            ),
            (
                "ip_trace_id",
                pb::FlowFilter {
                    ip_trace_id: vec![1],
                    ..Default::default()
                },
            ),
            (
                "experimental.cel_expression",
                pb::FlowFilter {
                    experimental: Some(pb::flow_filter::Experimental {
                        cel_expression: strings(&["true"]),
                    }),
                    ..Default::default()
                },
            ),
        ];
        for (field, ff) in cases {
            let e = compile(&[], &[ff]).unwrap_err();
            match &e {
                FilterError::Unsupported {
                    list: ListKind::Blacklist,
                    index: 0,
                    field: got,
                    ..
                } => assert_eq!(*got, field),
                other => panic!("{field}: {other:?}"),
            }
            assert!(
                e.to_string()
                    .starts_with(&format!("blacklist[0].{field}: not supported by Weir")),
                "{e}"
            );
        }
        // An empty experimental block is fine.
        assert!(matches(
            pb::FlowFilter {
                experimental: Some(pb::flow_filter::Experimental::default()),
                ..Default::default()
            },
            &flow()
        ));
    }
}
