//! Canonical protobuf JSON for the generated messages: the JSON mapping of
//! the protobuf spec with proto field names, as Python's
//! `json_format.MessageToJson(preserving_proto_field_name=True)` prints and
//! `json_format.Parse` reads (well-known types included: `Timestamp` as
//! RFC 3339, `FieldMask` as a comma-separated camelCase string, `Any` by its
//! `@type`, 64-bit integers as strings, enums by name, defaults omitted).
//!
//! Messages cross through their wire encoding into a `DynamicMessage` built
//! from the descriptor set of the same upstream protos, so what is printed is
//! exactly what was on the wire, with no hand-written mapping in between.

use std::sync::LazyLock;

use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};
use serde_json::Value;

/// The `FileDescriptorSet` of the upstream protos and their imports (empty
/// when the build found no protos).
#[cfg(not(hubble_protos_missing))]
pub const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/hubble_descriptor.bin"));

/// The `FileDescriptorSet` of the upstream protos (the build found none).
#[cfg(hubble_protos_missing)]
pub const DESCRIPTOR_SET: &[u8] = &[];

// The error kept as text: `DescriptorError` is not `Clone`.
static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(DESCRIPTOR_SET).map_err(|e| e.to_string()));

/// Failures of the JSON mapping.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The crate was built without the upstream protos.
    #[error(transparent)]
    ProtosMissing(#[from] crate::ProtosMissing),
    /// The descriptor set written by the build does not decode.
    #[error("the generated descriptor set is invalid: {0}")]
    Descriptor(String),
    /// No message of that full name in the upstream protos.
    #[error("no message {0} in the upstream Hubble protos")]
    UnknownMessage(String),
    /// The JSON is not a valid `message` in the protobuf JSON mapping.
    #[error("{message} from JSON: {source}")]
    Parse {
        message: String,
        #[source]
        source: serde_json::Error,
    },
    /// A message could not be printed (e.g. an `Any` of a type the upstream
    /// protos do not define).
    #[error("{message} to JSON: {source}")]
    Print {
        message: String,
        #[source]
        source: serde_json::Error,
    },
    /// The wire bytes are not a valid `message`.
    #[error("decode {message}: {source}")]
    Decode {
        message: String,
        #[source]
        source: prost::DecodeError,
    },
}

/// The descriptor of `full_name` (e.g. `observer.GetFlowsRequest`).
pub fn descriptor(full_name: &str) -> Result<MessageDescriptor, JsonError> {
    crate::protos_dir()?;
    let pool = POOL
        .as_ref()
        .map_err(|e| JsonError::Descriptor(e.clone()))?;
    pool.get_message_by_name(full_name)
        .ok_or_else(|| JsonError::UnknownMessage(full_name.to_string()))
}

/// Prints wire bytes of message `full_name` as canonical JSON.
pub fn bytes_to_json(full_name: &str, bytes: &[u8]) -> Result<Value, JsonError> {
    let desc = descriptor(full_name)?;
    let dynamic = DynamicMessage::decode(desc, bytes).map_err(|source| JsonError::Decode {
        message: full_name.to_string(),
        source,
    })?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|source| JsonError::Print {
            message: full_name.to_string(),
            source,
        })
}

/// Parses canonical JSON (proto or camelCase field names) into the wire
/// bytes of message `full_name`; unknown fields are an error, as in Python.
pub fn json_to_bytes(full_name: &str, json: &Value) -> Result<Vec<u8>, JsonError> {
    let desc = descriptor(full_name)?;
    let dynamic = DynamicMessage::deserialize_with_options(desc, json, &DeserializeOptions::new())
        .map_err(|source| JsonError::Parse {
            message: full_name.to_string(),
            source,
        })?;
    Ok(prost::Message::encode_to_vec(&dynamic))
}

/// A generated message as canonical JSON.
pub fn to_json<M: prost::Message>(full_name: &str, message: &M) -> Result<Value, JsonError> {
    bytes_to_json(full_name, &message.encode_to_vec())
}

/// A generated message from canonical JSON.
pub fn from_json<M: prost::Message + Default>(
    full_name: &str,
    json: &Value,
) -> Result<M, JsonError> {
    let bytes = json_to_bytes(full_name, json)?;
    M::decode(bytes.as_slice()).map_err(|source| JsonError::Decode {
        message: full_name.to_string(),
        source,
    })
}

#[cfg(all(test, not(hubble_protos_missing)))]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::flow::FlowFilter;
    use crate::observer::GetFlowsRequest;

    #[test]
    fn field_numbers_are_the_upstream_ones() {
        // uuid is field 29 of flow.FlowFilter: tag (29 << 3) | 2 as a varint.
        let f = FlowFilter {
            uuid: vec!["u".into()],
            ..Default::default()
        };
        assert_eq!(prost::Message::encode_to_vec(&f), vec![0xea, 0x01, 1, b'u']);
        // first is field 9 of GetFlowsRequest, a bool.
        let r = GetFlowsRequest {
            first: true,
            ..Default::default()
        };
        assert_eq!(prost::Message::encode_to_vec(&r), vec![9 << 3, 1]);
    }

    #[test]
    fn requests_round_trip_through_canonical_json() {
        let request = json!({
            "number": "20",
            "first": true,
            "whitelist": [{
                "source_pod": ["x/a"],
                "verdict": ["FORWARDED"],
                "tcp_flags": [{"SYN": true}],
                "event_type": [{"type": 4, "match_sub_type": true, "sub_type": 5}],
                "ip_version": ["IPv6"],
                "reply": [false],
                "source_identity": [258]
            }],
            "since": "2026-01-02T03:04:05.123456789Z",
            "field_mask": "source.podName,uuid"
        });
        let r: GetFlowsRequest = from_json("observer.GetFlowsRequest", &request).unwrap();
        assert_eq!(r.number, 20);
        assert_eq!(r.whitelist[0].source_pod, ["x/a"]);
        assert_eq!(r.whitelist[0].event_type[0].sub_type, 5);
        assert_eq!(r.since.unwrap().nanos, 123_456_789);
        assert_eq!(
            r.field_mask.as_ref().unwrap().paths,
            ["source.pod_name", "uuid"]
        );
        let back = to_json("observer.GetFlowsRequest", &r).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn unknown_fields_and_messages_are_errors() {
        let err = json_to_bytes("observer.GetFlowsRequest", &json!({"nope": 1})).unwrap_err();
        assert!(matches!(err, JsonError::Parse { .. }), "{err:?}");
        let err = json_to_bytes("observer.Nope", &json!({})).unwrap_err();
        assert!(matches!(err, JsonError::UnknownMessage(_)), "{err:?}");
    }
}
