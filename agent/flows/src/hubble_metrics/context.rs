//! Context label values (`source`, `destination`, `labelsContext`) of a flow,
//! written as a length-prefixed byte key into a caller's buffer so that the
//! per-event path looks series up without allocating; the strings are only
//! materialised when a series is created.

use std::io::Write as _;
use std::net::IpAddr;

use crate::flow::{Endpoint, Flow, TrafficDirection};

use super::spec::{ContextId, ContextLabel, ContextOptions};

/// The label Hubble prefers for `reserved-identity`.
const KUBE_APISERVER: &str = "reserved:kube-apiserver";
/// Pod labels that name the app, by preference (Hubble's list).
const APP_LABELS: [&str; 3] = ["k8s:app.kubernetes.io/name=", "k8s:k8s-app=", "k8s:app="];

/// Appends the context values of `flow` to `out`, each as a u32 little-endian
/// length followed by the bytes, in [`ContextOptions::label_names`] order.
pub(crate) fn encode(opts: &ContextOptions, flow: &Flow, out: &mut Vec<u8>) {
    let src = flow.source.as_deref();
    let dst = flow.destination.as_deref();
    let ip = flow.ip.as_ref();
    for label in &opts.labels {
        let at = begin(out);
        match label {
            ContextLabel::SourceIp => write_ip(out, ip.and_then(|i| i.source)),
            ContextLabel::SourcePod => put(out, src.map_or("", |e| &e.pod_name)),
            ContextLabel::SourceNamespace => put(out, src.map_or("", |e| &e.namespace)),
            ContextLabel::SourceWorkload => put(out, workload(src).0),
            ContextLabel::SourceWorkloadKind => put(out, workload(src).1),
            ContextLabel::SourceApp => put(out, app(src)),
            ContextLabel::DestinationIp => write_ip(out, ip.and_then(|i| i.destination)),
            ContextLabel::DestinationPod => put(out, dst.map_or("", |e| &e.pod_name)),
            ContextLabel::DestinationNamespace => put(out, dst.map_or("", |e| &e.namespace)),
            ContextLabel::DestinationWorkload => put(out, workload(dst).0),
            ContextLabel::DestinationWorkloadKind => put(out, workload(dst).1),
            ContextLabel::DestinationApp => put(out, app(dst)),
            ContextLabel::TrafficDirection => put(
                out,
                match flow.traffic_direction {
                    TrafficDirection::Ingress => "ingress",
                    TrafficDirection::Egress => "egress",
                    TrafficDirection::Unknown => "unknown",
                },
            ),
        }
        end(out, at);
    }
    let dir = flow.traffic_direction;
    if !opts.source.is_empty() {
        let ids = pick(&opts.source, &opts.source_ingress, &opts.source_egress, dir);
        let at = begin(out);
        first_non_empty(out, at, ids, |out, id| {
            endpoint_context(out, id, src, ip.and_then(|i| i.source))
        });
        end(out, at);
    }
    if !opts.destination.is_empty() {
        let ids = pick(
            &opts.destination,
            &opts.destination_ingress,
            &opts.destination_egress,
            dir,
        );
        let at = begin(out);
        first_non_empty(out, at, ids, |out, id| {
            endpoint_context(out, id, dst, ip.and_then(|i| i.destination))
        });
        end(out, at);
    }
}

/// Splits an encoded key part back into label values (only when a series is created).
pub(crate) fn decode(mut bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let end = (4 + len).min(bytes.len());
        out.push(String::from_utf8_lossy(&bytes[4..end]).into_owned());
        bytes = &bytes[end..];
    }
    out
}

/// The directional list overrides the plain one for flows in that direction.
fn pick<'a>(
    plain: &'a [ContextId],
    ingress: &'a [ContextId],
    egress: &'a [ContextId],
    dir: TrafficDirection,
) -> &'a [ContextId] {
    match dir {
        TrafficDirection::Ingress if !ingress.is_empty() => ingress,
        TrafficDirection::Egress if !egress.is_empty() => egress,
        _ => plain,
    }
}

fn first_non_empty(
    out: &mut Vec<u8>,
    at: usize,
    ids: &[ContextId],
    mut write: impl FnMut(&mut Vec<u8>, ContextId),
) {
    for id in ids {
        write(out, *id);
        if out.len() > at + 4 {
            return;
        }
    }
}

fn endpoint_context(out: &mut Vec<u8>, id: ContextId, ep: Option<&Endpoint>, ip: Option<IpAddr>) {
    let ns = ep.map_or("", |e| e.namespace.as_str());
    match id {
        ContextId::Namespace => put(out, ns),
        ContextId::Identity => {
            if let Some(e) = ep {
                for (i, l) in e.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    put(out, l);
                }
            }
        }
        ContextId::Pod => {
            if !ns.is_empty() {
                put(out, ns);
                out.push(b'/');
            }
            put(out, ep.map_or("", |e| &e.pod_name));
        }
        ContextId::PodShort => {
            if !ns.is_empty() {
                put(out, ns);
                out.push(b'/');
            }
            put(out, short_pod_name(ep.map_or("", |e| &e.pod_name)));
        }
        ContextId::PodName => put(out, ep.map_or("", |e| &e.pod_name)),
        ContextId::Ip => write_ip(out, ip),
        ContextId::ReservedIdentity => put(out, reserved_identity(ep)),
        ContextId::Workload => {
            let name = workload(ep).0;
            if !name.is_empty() {
                if !ns.is_empty() {
                    put(out, ns);
                    out.push(b'/');
                }
                put(out, name);
            }
        }
        ContextId::WorkloadName => put(out, workload(ep).0),
        ContextId::App => put(out, app(ep)),
    }
}

fn begin(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    at
}

fn end(out: &mut [u8], at: usize) {
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

fn put(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
}

fn write_ip(out: &mut Vec<u8>, ip: Option<IpAddr>) {
    if let Some(ip) = ip {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{ip}");
    }
}

/// (name, kind) of the endpoint's first workload.
fn workload(ep: Option<&Endpoint>) -> (&str, &str) {
    ep.and_then(|e| e.workloads.first())
        .map_or(("", ""), |w| (w.name.as_str(), w.kind.as_str()))
}

fn app(ep: Option<&Endpoint>) -> &str {
    let Some(ep) = ep else { return "" };
    for label in &ep.labels {
        for prefix in APP_LABELS {
            if let Some(v) = label.strip_prefix(prefix)
                && !v.is_empty()
            {
                return v;
            }
        }
    }
    ""
}

fn reserved_identity(ep: Option<&Endpoint>) -> &str {
    let Some(ep) = ep else { return "" };
    if ep.labels.iter().any(|l| l == KUBE_APISERVER) {
        return KUBE_APISERVER;
    }
    ep.labels
        .iter()
        .find(|l| l.starts_with("reserved:"))
        .map_or("", |l| l.as_str())
}

/// Hubble's deprecated `pod-short`: drops the last one or two `-[a-z0-9]+`
/// parts (a ReplicaSet hash and a pod suffix), keeping at least one character.
pub(crate) fn short_pod_name(name: &str) -> &str {
    let is_suffix = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let mut cut = name.len();
    for _ in 0..2 {
        let head = &name[..cut];
        match head.rfind('-') {
            Some(i) if i > 0 && is_suffix(&head[i + 1..]) => cut = i,
            _ => break,
        }
    }
    &name[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_pod_name_strips_up_to_two_suffixes() {
        for (name, short) in [
            ("server-5c6d7e8f9-abcde", "server"),
            ("my-app-5c6d7e8f9-abcde", "my-app"),
            ("web-0", "web"),
            ("web", "web"),
            ("a-b-c-d", "a-b"),
            ("Web-X1", "Web-X1"),
            ("-abc", "-abc"),
            ("", ""),
        ] {
            assert_eq!(short_pod_name(name), short, "{name}");
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut out = Vec::new();
        let at = begin(&mut out);
        put(&mut out, "a/b");
        end(&mut out, at);
        let at = begin(&mut out);
        end(&mut out, at);
        assert_eq!(decode(&out), vec!["a/b".to_owned(), String::new()]);
    }
}
