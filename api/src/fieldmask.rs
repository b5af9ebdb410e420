//! The field mask of `GetFlowsRequest` (`field_mask`, or
//! `experimental.field_mask` from older clients): which `flow.Flow` fields a
//! client wants back.
//!
//! Paths are proto field names joined by dots, starting at `flow.Flow`:
//! `time`, `verdict`, `source.pod_name`, `IP.source`, `l4.TCP.destination_port`
//! (a oneof member is named like any field). As in protobuf's `FieldMask`
//! validation, a path may go through singular message fields only (not
//! through repeated ones), and a path covered by a shorter one adds nothing.
//! An unknown name is an error naming the path. An empty mask keeps every
//! field.
//!
//! Applying keeps the listed fields and clears the rest. Top-level fields and
//! `Endpoint` (the usual targets of nested paths, e.g. Hubble UI's
//! `source.pod_name`) are handled directly on the structs, moving values
//! without copying them; a nested path into any other message re-encodes that
//! one sub-message and keeps the listed fields on the wire, which works for
//! every message of the API. One difference from Hubble: a nested path on a
//! field the flow does not have leaves it absent (Hubble creates an empty
//! parent message), so a UDP flow masked with `l4.TCP.source_port` has no
//! `l4` rather than an empty TCP one.
//!
//! Pure: no I/O.

use std::collections::BTreeMap;

use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint};
use prost_reflect::{Cardinality, Kind, MessageDescriptor};

use crate::proto::flow as pb;
use crate::proto::{descriptor_pool, observer};

/// Why a field mask was refused (sent to the client as INVALID_ARGUMENT).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldMaskError {
    /// A path names a field that does not exist where the path says.
    #[error("field_mask path {path:?}: {message} has no field {field:?}")]
    UnknownField {
        path: String,
        message: String,
        field: String,
    },
    /// A path goes through a field that is not a singular message.
    #[error(
        "field_mask path {path:?}: {field:?} is not a singular message, so the path cannot go into it"
    )]
    NotAMessage { path: String, field: String },
    /// An empty path or an empty component (`a..b`).
    #[error("field_mask path {path:?} is empty or has an empty component")]
    Empty { path: String },
}

/// Selected fields of one message, by field number: `None` keeps the whole
/// field, `Some` keeps only the listed fields inside it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Node {
    fields: BTreeMap<u32, Option<Node>>,
}

impl Node {
    fn add(&mut self, numbers: &[u32]) {
        let Some((&first, rest)) = numbers.split_first() else {
            return;
        };
        if rest.is_empty() {
            // The whole field: it also covers any nested path seen before.
            self.fields.insert(first, None);
            return;
        }
        match self.fields.entry(first) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                if let Some(child) = e.get_mut() {
                    child.add(rest);
                }
                // `None`: already whole; the nested path adds nothing.
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                let mut child = Node::default();
                child.add(rest);
                e.insert(Some(child));
            }
        }
    }

    fn get(&self, number: u32) -> Option<Option<&Node>> {
        self.fields.get(&number).map(Option::as_ref)
    }
}

/// A compiled field mask for `flow.Flow`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowMask {
    root: Node,
}

impl FlowMask {
    /// Compiles `mask`; no paths keeps everything.
    pub fn compile(mask: &prost_types::FieldMask) -> Result<Self, FieldMaskError> {
        let mut root = Node::default();
        let flow = descriptor_pool()
            .get_message_by_name("flow.Flow")
            .expect("flow.Flow is in Weir's descriptor set");
        for path in &mask.paths {
            root.add(&resolve(&flow, path)?);
        }
        Ok(Self { root })
    }

    /// The request's mask: `field_mask`, else the `experimental.field_mask`
    /// that older clients send.
    pub fn from_request(req: &observer::GetFlowsRequest) -> Result<Self, FieldMaskError> {
        let mask = req
            .field_mask
            .as_ref()
            .filter(|m| !m.paths.is_empty())
            .or_else(|| {
                req.experimental
                    .as_ref()
                    .and_then(|e| e.field_mask.as_ref())
            });
        mask.map_or_else(|| Ok(Self::default()), Self::compile)
    }

    /// Whether the mask keeps every field (applying it changes nothing).
    pub fn is_empty(&self) -> bool {
        self.root.fields.is_empty()
    }

    /// Clears every field of `flow` the mask does not list.
    pub fn apply(&self, flow: &mut pb::Flow) {
        if self.is_empty() {
            return;
        }
        let mut src = std::mem::take(flow);
        for (&number, sub) in &self.root.fields {
            move_flow_field(flow, &mut src, number);
            if let Some(sub) = sub {
                mask_flow_field(flow, number, sub);
            }
        }
    }
}

/// Field numbers along `path`, checked against the descriptors.
fn resolve(root: &MessageDescriptor, path: &str) -> Result<Vec<u32>, FieldMaskError> {
    let names: Vec<&str> = path.split('.').collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err(FieldMaskError::Empty { path: path.into() });
    }
    let mut numbers = Vec::with_capacity(names.len());
    let mut message = root.clone();
    for (i, name) in names.iter().enumerate() {
        let field =
            message
                .get_field_by_name(name)
                .ok_or_else(|| FieldMaskError::UnknownField {
                    path: path.into(),
                    message: message.full_name().into(),
                    field: (*name).into(),
                })?;
        numbers.push(field.number());
        if i + 1 < names.len() {
            message = match field.kind() {
                Kind::Message(m) if field.cardinality() != Cardinality::Repeated => m,
                _ => {
                    return Err(FieldMaskError::NotAMessage {
                        path: path.into(),
                        field: (*name).into(),
                    });
                }
            };
        }
    }
    Ok(numbers)
}

/// Moves field `number` from `src` to `dst` (no copy, no allocation).
#[allow(deprecated)] // `drop_reason` and `reply` are fields like any other here.
fn move_flow_field(dst: &mut pb::Flow, src: &mut pb::Flow, number: u32) {
    use std::mem::take;
    match number {
        1 => dst.time = take(&mut src.time),
        2 => dst.verdict = src.verdict,
        3 => dst.drop_reason = src.drop_reason,
        4 => dst.ethernet = take(&mut src.ethernet),
        5 => dst.ip = take(&mut src.ip),
        6 => dst.l4 = take(&mut src.l4),
        8 => dst.source = take(&mut src.source),
        9 => dst.destination = take(&mut src.destination),
        10 => dst.r#type = src.r#type,
        11 => dst.node_name = take(&mut src.node_name),
        13 => dst.source_names = take(&mut src.source_names),
        14 => dst.destination_names = take(&mut src.destination_names),
        15 => dst.l7 = take(&mut src.l7),
        16 => dst.reply = src.reply,
        19 => dst.event_type = take(&mut src.event_type),
        20 => dst.source_service = take(&mut src.source_service),
        21 => dst.destination_service = take(&mut src.destination_service),
        22 => dst.traffic_direction = src.traffic_direction,
        23 => dst.policy_match_type = src.policy_match_type,
        24 => dst.trace_observation_point = src.trace_observation_point,
        25 => dst.drop_reason_desc = src.drop_reason_desc,
        26 => dst.is_reply = src.is_reply,
        27 => dst.debug_capture_point = src.debug_capture_point,
        28 => dst.interface = take(&mut src.interface),
        29 => dst.proxy_port = src.proxy_port,
        30 => dst.trace_context = take(&mut src.trace_context),
        31 => dst.sock_xlate_point = src.sock_xlate_point,
        32 => dst.socket_cookie = src.socket_cookie,
        33 => dst.cgroup_id = src.cgroup_id,
        34 => dst.uuid = take(&mut src.uuid),
        35 => dst.auth_type = src.auth_type,
        36 => dst.trace_reason = src.trace_reason,
        37 => dst.node_labels = take(&mut src.node_labels),
        38 => dst.file = take(&mut src.file),
        39 => dst.tunnel = take(&mut src.tunnel),
        40 => dst.ip_trace_id = take(&mut src.ip_trace_id),
        41 => dst.emitter = take(&mut src.emitter),
        100_000 => dst.summary = take(&mut src.summary),
        150_000 => dst.extensions = take(&mut src.extensions),
        21_001 => dst.egress_allowed_by = take(&mut src.egress_allowed_by),
        21_002 => dst.ingress_allowed_by = take(&mut src.ingress_allowed_by),
        21_004 => dst.egress_denied_by = take(&mut src.egress_denied_by),
        21_005 => dst.ingress_denied_by = take(&mut src.ingress_denied_by),
        21_006 => dst.policy_log = take(&mut src.policy_log),
        21_007 => dst.aggregate = take(&mut src.aggregate),
        // Validated against the descriptors, so every number is one of the
        // above; a field added to the proto without a line here is caught by
        // the test `every_flow_field_can_be_kept_alone`.
        _ => {}
    }
}

/// Keeps only `node`'s fields inside the (singular message) field `number`.
fn mask_flow_field(flow: &mut pb::Flow, number: u32, node: &Node) {
    match number {
        1 => mask_opt(&mut flow.time, node),
        4 => mask_opt(&mut flow.ethernet, node),
        5 => mask_opt(&mut flow.ip, node),
        6 => mask_opt(&mut flow.l4, node),
        8 => mask_endpoint(&mut flow.source, node),
        9 => mask_endpoint(&mut flow.destination, node),
        15 => mask_opt(&mut flow.l7, node),
        19 => mask_opt(&mut flow.event_type, node),
        20 => mask_opt(&mut flow.source_service, node),
        21 => mask_opt(&mut flow.destination_service, node),
        // `is_reply` is a BoolValue: its only field is `value`, so any
        // nested path keeps it whole.
        26 => {}
        28 => mask_opt(&mut flow.interface, node),
        30 => mask_opt(&mut flow.trace_context, node),
        38 => mask_opt(&mut flow.file, node),
        39 => mask_opt(&mut flow.tunnel, node),
        40 => mask_opt(&mut flow.ip_trace_id, node),
        41 => mask_opt(&mut flow.emitter, node),
        150_000 => mask_opt(&mut flow.extensions, node),
        21_007 => mask_opt(&mut flow.aggregate, node),
        _ => {}
    }
}

fn mask_endpoint(ep: &mut Option<pb::Endpoint>, node: &Node) {
    use std::mem::take;
    let Some(src) = ep.as_mut() else { return };
    let mut dst = pb::Endpoint::default();
    for &number in node.fields.keys() {
        // Endpoint has no message fields a path could go into except
        // `workloads`, which is repeated: every entry here is whole.
        match number {
            1 => dst.id = src.id,
            2 => dst.identity = src.identity,
            3 => dst.namespace = take(&mut src.namespace),
            4 => dst.labels = take(&mut src.labels),
            5 => dst.pod_name = take(&mut src.pod_name),
            6 => dst.workloads = take(&mut src.workloads),
            7 => dst.cluster_name = take(&mut src.cluster_name),
            _ => {}
        }
    }
    *ep = Some(dst);
}

/// Generic nested masking: re-encode the sub-message, keep the listed fields
/// on the wire, decode it back.
fn mask_opt<M: Message + Default>(m: &mut Option<M>, node: &Node) {
    let Some(inner) = m.as_ref() else { return };
    let bytes = inner.encode_to_vec();
    let mut kept = Vec::with_capacity(bytes.len());
    let masked =
        filter_wire(&bytes, node, &mut kept).and_then(|()| M::decode(kept.as_slice()).ok());
    // A message we encoded ourselves always parses; if not, dropping the
    // field is the safe answer to "send only what was asked for".
    *m = masked;
}

/// Copies to `out` the fields of the encoded message `input` that `node`
/// lists (recursing into partially selected sub-messages). `None` on
/// malformed input.
fn filter_wire(mut input: &[u8], node: &Node, out: &mut Vec<u8>) -> Option<()> {
    while !input.is_empty() {
        let start = input;
        let (number, wire_type) = decode_key(&mut input).ok()?;
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut input).ok()?;
            }
            WireType::SixtyFourBit => input = input.get(8..)?,
            WireType::ThirtyTwoBit => input = input.get(4..)?,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut input).ok()?).ok()?;
                let body = input.get(..len)?;
                if let Some(Some(child)) = node.get(number) {
                    let mut sub = Vec::with_capacity(body.len());
                    filter_wire(body, child, &mut sub)?;
                    encode_key(number, WireType::LengthDelimited, out);
                    encode_varint(sub.len() as u64, out);
                    out.extend_from_slice(&sub);
                    input = &input[len..];
                    continue;
                }
                input = &input[len..];
            }
            // Groups do not exist in proto3.
            WireType::StartGroup | WireType::EndGroup => return None,
        }
        if node.get(number).is_some() {
            out.extend_from_slice(&start[..start.len() - input.len()]);
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use prost_reflect::{DynamicMessage, ReflectMessage as _, Value};

    use super::*;

    /// A message of type `desc` with every field set to a non-default value
    /// (one member per oneof: the last one set wins), nested to `depth`.
    fn populated(desc: &MessageDescriptor, depth: u32) -> DynamicMessage {
        let mut m = DynamicMessage::new(desc.clone());
        for field in desc.fields() {
            let single = match field.kind() {
                Kind::Bool => Value::Bool(true),
                Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(7),
                Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(7),
                Kind::Uint32 | Kind::Fixed32 => Value::U32(7),
                Kind::Uint64 | Kind::Fixed64 => Value::U64(7),
                Kind::Float => Value::F32(1.5),
                Kind::Double => Value::F64(1.5),
                Kind::String => Value::String(format!("{}-x", field.name())),
                Kind::Bytes => Value::Bytes(vec![1, 2, 3].into()),
                Kind::Enum(e) => {
                    Value::EnumNumber(e.values().map(|v| v.number()).max().unwrap_or(0))
                }
                Kind::Message(sub) => {
                    if depth == 0 {
                        continue;
                    }
                    Value::Message(populated(&sub, depth - 1))
                }
            };
            let value = if field.is_list() {
                Value::List(vec![single])
            } else {
                single
            };
            m.set_field(&field, value);
        }
        m
    }

    fn full_flow() -> pb::Flow {
        let desc = descriptor_pool().get_message_by_name("flow.Flow").unwrap();
        populated(&desc, 4)
            .transcode_to()
            .expect("transcodes to flow.Flow")
    }

    fn mask(paths: &[&str]) -> Result<FlowMask, FieldMaskError> {
        FlowMask::compile(&prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        })
    }

    fn dynamic(f: &pb::Flow) -> DynamicMessage {
        let desc = descriptor_pool().get_message_by_name("flow.Flow").unwrap();
        DynamicMessage::decode(desc, f.encode_to_vec().as_slice()).unwrap()
    }

    fn set_fields(m: &DynamicMessage) -> Vec<String> {
        m.fields().map(|(f, _)| f.name().to_owned()).collect()
    }

    #[test]
    fn every_flow_field_can_be_kept_alone() {
        let full = full_flow();
        let full_dyn = dynamic(&full);
        let desc = full_dyn.descriptor();
        // Every field of the descriptor is populated, or the test proves little.
        assert_eq!(set_fields(&full_dyn).len(), desc.fields().len());
        for field in desc.fields() {
            let mut f = full.clone();
            mask(&[field.name()]).unwrap().apply(&mut f);
            let got = dynamic(&f);
            assert_eq!(set_fields(&got), [field.name()], "mask [{}]", field.name());
            assert_eq!(
                got.get_field(&field),
                full_dyn.get_field(&field),
                "value of {}",
                field.name()
            );
        }
    }

    #[test]
    fn empty_mask_keeps_everything() {
        let full = full_flow();
        for m in [FlowMask::default(), mask(&[]).unwrap()] {
            assert!(m.is_empty());
            let mut f = full.clone();
            m.apply(&mut f);
            assert_eq!(f, full);
        }
    }

    #[test]
    fn nested_paths_keep_only_the_named_inner_fields() {
        let full = full_flow();
        let mut f = full.clone();
        mask(&[
            "source.pod_name",
            "source.namespace",
            "IP.source",
            "time",
            "Summary",
        ])
        .unwrap()
        .apply(&mut f);
        let src = f.source.as_ref().unwrap();
        assert_eq!(src.pod_name, full.source.as_ref().unwrap().pod_name);
        assert_eq!(src.namespace, full.source.as_ref().unwrap().namespace);
        assert_eq!(src.labels, Vec::<String>::new());
        assert_eq!(src.identity, 0);
        let ip = f.ip.as_ref().unwrap();
        assert_eq!(ip.source, full.ip.as_ref().unwrap().source);
        assert!(ip.destination.is_empty() && ip.ip_version == 0);
        assert_eq!(f.time, full.time);
        assert_eq!(f.summary, full.summary);
        assert_eq!(
            set_fields(&dynamic(&f)),
            ["time", "IP", "source", "Summary"],
            "nothing else is left"
        );

        // Through a oneof member, two levels down.
        let mut tcp = full.clone();
        tcp.l4 = Some(pb::Layer4 {
            protocol: Some(pb::layer4::Protocol::Tcp(pb::Tcp {
                source_port: 1,
                destination_port: 2,
                flags: Some(pb::TcpFlags {
                    syn: true,
                    ..Default::default()
                }),
            })),
        });
        let mut t = tcp.clone();
        mask(&["l4.TCP.destination_port", "l4.TCP.flags.SYN"])
            .unwrap()
            .apply(&mut t);
        assert_eq!(
            t.l4,
            Some(pb::Layer4 {
                protocol: Some(pb::layer4::Protocol::Tcp(pb::Tcp {
                    source_port: 0,
                    destination_port: 2,
                    flags: Some(pb::TcpFlags {
                        syn: true,
                        ..Default::default()
                    }),
                })),
            })
        );
        // The path names another oneof member: nothing of l4 is left.
        let mut u = tcp.clone();
        mask(&["l4.UDP.source_port"]).unwrap().apply(&mut u);
        assert_eq!(u.l4, Some(pb::Layer4 { protocol: None }));
        // A nested path on an absent field leaves it absent.
        let mut none = pb::Flow::default();
        mask(&["source.pod_name"]).unwrap().apply(&mut none);
        assert_eq!(none.source, None);
    }

    #[test]
    fn a_whole_field_covers_its_nested_paths_in_any_order() {
        let full = full_flow();
        for paths in [["source", "source.pod_name"], ["source.pod_name", "source"]] {
            let mut f = full.clone();
            mask(&paths).unwrap().apply(&mut f);
            assert_eq!(f.source, full.source, "{paths:?}");
        }
    }

    #[test]
    fn bad_paths_are_refused_by_name() {
        assert_eq!(
            mask(&["nope"]).unwrap_err().to_string(),
            r#"field_mask path "nope": flow.Flow has no field "nope""#
        );
        assert_eq!(
            mask(&["source.podname"]).unwrap_err().to_string(),
            r#"field_mask path "source.podname": flow.Endpoint has no field "podname""#
        );
        assert!(matches!(
            mask(&["verdict.x"]).unwrap_err(),
            FieldMaskError::NotAMessage { field, .. } if field == "verdict"
        ));
        assert!(matches!(
            mask(&["egress_allowed_by.name"]).unwrap_err(),
            FieldMaskError::NotAMessage { field, .. } if field == "egress_allowed_by"
        ));
        assert!(matches!(
            mask(&[""]).unwrap_err(),
            FieldMaskError::Empty { .. }
        ));
        assert!(matches!(
            mask(&["source..id"]).unwrap_err(),
            FieldMaskError::Empty { .. }
        ));
        // Case matters: proto names are `IP`, `Type`, `Summary`.
        assert!(mask(&["ip"]).is_err());
        assert!(mask(&["IP", "Type", "Summary", "source.ID"]).is_ok());
    }

    #[test]
    fn request_mask_and_the_older_experimental_one() {
        let m = |paths: &[&str]| prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        };
        let req = observer::GetFlowsRequest {
            experimental: Some(observer::get_flows_request::Experimental {
                field_mask: Some(m(&["uuid"])),
            }),
            ..Default::default()
        };
        let mut f = full_flow();
        FlowMask::from_request(&req).unwrap().apply(&mut f);
        assert_eq!(set_fields(&dynamic(&f)), ["uuid"]);
        let req = observer::GetFlowsRequest {
            field_mask: Some(m(&["verdict"])),
            ..req
        };
        let mut f = full_flow();
        FlowMask::from_request(&req).unwrap().apply(&mut f);
        assert_eq!(set_fields(&dynamic(&f)), ["verdict"]);
        assert!(
            FlowMask::from_request(&observer::GetFlowsRequest::default())
                .unwrap()
                .is_empty()
        );
    }
}
