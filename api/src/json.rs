//! Protobuf JSON ("protojson") of the generated messages, as `hubble observe
//! -o json` / `-o jsonpb` print them: proto field names (`node_name`, `IP`,
//! `Summary`), enums by name, 64-bit integers as strings, `Timestamp` in RFC
//! 3339, wrapper types unwrapped, default values omitted, and an `Any` as its
//! `@type` plus the fields of the message inside.
//!
//! Driven by the descriptor set that build.rs writes next to the generated
//! code, so every field of every message prints, including ones
//! `weir_flows::Flow` does not model (L7, policies, ... from a foreign
//! server). Owns formatting only.

use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::Value;

use crate::proto::observer;
use crate::proto::{descriptor_pool, flow as pb};

/// Errors turning a message into JSON.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The message's type is not in Weir's descriptor set.
    #[error("message type {0} is not part of Weir's API")]
    UnknownMessage(String),
    /// The encoded message did not decode against its descriptor.
    #[error("re-decoding {name} for JSON")]
    Decode {
        name: String,
        #[source]
        source: prost::DecodeError,
    },
    /// Serialization failed (for example an `Any` of an unknown type).
    #[error("serializing {name} as JSON")]
    Serialize {
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

fn options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true)
        .stringify_64_bit_integers(true)
        .use_enum_numbers(false)
}

/// Any message of Weir's API as protobuf JSON.
pub fn message_to_json<M: Message + prost::Name>(m: &M) -> Result<Value, JsonError> {
    let name = M::full_name();
    let desc = descriptor_pool()
        .get_message_by_name(&name)
        .ok_or_else(|| JsonError::UnknownMessage(name.clone()))?;
    let dynamic = DynamicMessage::decode(desc, m.encode_to_vec().as_slice()).map_err(|source| {
        JsonError::Decode {
            name: name.clone(),
            source,
        }
    })?;
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options())
        .map_err(|source| JsonError::Serialize { name, source })
}

/// Whether JSON can print this `Any` (its type is in the descriptor set).
fn any_is_printable(any: &prost_types::Any) -> bool {
    any.type_url
        .rsplit_once('/')
        .is_some_and(|(_, name)| descriptor_pool().get_message_by_name(name).is_some())
}

/// A flow as protobuf JSON (`hubble observe -o json` prints one per line).
///
/// An `extensions` value of a type Weir does not know (sent by another
/// implementation) cannot be printed as protojson; it is left out rather
/// than failing the whole flow.
pub fn flow_to_json(f: &pb::Flow) -> Value {
    let printable = f.extensions.as_ref().is_none_or(any_is_printable);
    let result = if printable {
        message_to_json(f)
    } else {
        let mut stripped = f.clone();
        stripped.extensions = None;
        message_to_json(&stripped)
    };
    // Cannot fail: the type is ours and the only Any has a known type.
    result.unwrap_or_else(|e| {
        tracing::error!(error = %e, "flow has no JSON form");
        Value::Null
    })
}

/// A GetFlows response as protobuf JSON (`hubble observe -o jsonpb`).
pub fn response_to_json(r: &observer::GetFlowsResponse) -> Value {
    use observer::get_flows_response::ResponseTypes;
    let unprintable = matches!(&r.response_types, Some(ResponseTypes::Flow(f))
        if !f.extensions.as_ref().is_none_or(any_is_printable));
    let result = if unprintable {
        let mut stripped = r.clone();
        if let Some(ResponseTypes::Flow(f)) = &mut stripped.response_types {
            f.extensions = None;
        }
        message_to_json(&stripped)
    } else {
        message_to_json(r)
    };
    result.unwrap_or_else(|e| {
        tracing::error!(error = %e, "response has no JSON form");
        Value::Null
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn protojson_shape() {
        let f = pb::Flow {
            time: Some(prost_types::Timestamp {
                seconds: 1_764_417_601,
                nanos: 500_000_000,
            }),
            verdict: pb::Verdict::Forwarded as i32,
            ip: Some(pb::Ip {
                source: "10.0.0.1".into(),
                ip_version: pb::IpVersion::IPv4 as i32,
                ..Default::default()
            }),
            is_reply: Some(false),
            node_name: "n1".into(),
            socket_cookie: 1 << 60,
            summary: "x".into(),
            ..Default::default()
        };
        assert_eq!(
            flow_to_json(&f),
            json!({
                "time": "2025-11-29T12:00:01.500Z",
                "verdict": "FORWARDED",
                "IP": {"source": "10.0.0.1", "ipVersion": "IPv4"},
                "is_reply": false,
                "node_name": "n1",
                "socket_cookie": "1152921504606846976",
                "Summary": "x",
            })
        );
    }

    #[test]
    fn foreign_extensions_are_left_out_instead_of_failing() {
        let f = pb::Flow {
            uuid: "u".into(),
            extensions: Some(prost_types::Any {
                type_url: "type.googleapis.com/other.Thing".into(),
                value: vec![8, 1],
            }),
            ..Default::default()
        };
        assert!(message_to_json(&f).is_err(), "protojson cannot print it");
        assert_eq!(flow_to_json(&f), json!({"uuid": "u"}));
        let r = observer::GetFlowsResponse {
            response_types: Some(observer::get_flows_response::ResponseTypes::Flow(f)),
            node_name: "n1".into(),
            time: None,
        };
        assert_eq!(
            response_to_json(&r),
            json!({"flow": {"uuid": "u"}, "node_name": "n1"})
        );
    }

    #[test]
    fn lost_events_in_a_response() {
        let r = observer::GetFlowsResponse {
            response_types: Some(observer::get_flows_response::ResponseTypes::LostEvents(
                pb::LostEvent {
                    source: pb::LostEventSource::HubbleRingBuffer as i32,
                    num_events_lost: 3,
                    cpu: Some(1),
                    ..Default::default()
                },
            )),
            node_name: "n1".into(),
            time: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
        };
        assert_eq!(
            response_to_json(&r),
            json!({
                "lost_events": {"source": "HUBBLE_RING_BUFFER", "num_events_lost": "3", "cpu": 1},
                "node_name": "n1",
                "time": "1970-01-01T00:00:00Z",
            })
        );
    }
}
