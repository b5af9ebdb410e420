//! The kernel side of an attachment: the veth pair, addresses, routes, neighbours
//! and sysctls that connect a pod's namespace to the node, and their removal and
//! verification.
//!
//! Topology (the same for every pod, so the datapath can rely on it):
//!
//! ```text
//!  pod netns                                  node netns (the plugin's own)
//!  eth0: 10.244.1.2/32, fd00::2/128 (nodad)   weirXXXXXXXXXXX: up, proxy_arp=1, fe80::1/64 (nodad)
//!    169.254.1.1 dev eth0 scope link            10.244.1.2/32 dev weirXXXXXXXXXXX scope link
//!    default via 169.254.1.1 dev eth0           fd00::2/128 dev weirXXXXXXXXXXX
//!    default via fe80::1 dev eth0
//!    neigh 169.254.1.1, fe80::1 -> host veth MAC (permanent)
//! ```
//!
//! The permanent neighbour entries in the pod mean its first packet needs no
//! ARP/NDP round trip and does not depend on the node having a route that
//! proxy ARP could answer for; proxy ARP and fe80::1 on the host side stay as
//! the fallback if a pod flushes its neighbour table. This module never
//! touches IPAM or the agent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use netlink_packet_route::route::RouteScope;
use rtnetlink::Handle;

use crate::netlink::{self, Link, NetlinkError};
use crate::netns::{Netns, NetnsError};
use crate::{GATEWAY_V4, GATEWAY_V6};

/// Failures while wiring, unwiring or checking an attachment.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// Entering the pod's namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A sysctl could not be read or written.
    #[error("sysctl {}: {source}", path.display())]
    Sysctl {
        /// The /proc/sys file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A link we just created cannot be found.
    #[error("link {name} vanished right after it was created")]
    Vanished {
        /// Its name.
        name: String,
    },
    /// CHECK found state that differs from what ADD makes.
    #[error("{}", problems.join("; "))]
    Mismatch {
        /// One line per missing or different item.
        problems: Vec<String>,
    },
}

/// What to build for one attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireSpec {
    /// Host-side veth name (see [`crate::host_veth_name`]).
    pub host_ifname: String,
    /// Pod-side interface name (CNI_IFNAME).
    pub pod_ifname: String,
    /// The pod's addresses.
    pub ips: Vec<IpAddr>,
    /// MTU for both ends; `None` keeps the kernel default.
    pub mtu: Option<u32>,
}

impl WireSpec {
    fn has_v4(&self) -> bool {
        self.ips.iter().any(IpAddr::is_ipv4)
    }
    fn has_v6(&self) -> bool {
        self.ips.iter().any(IpAddr::is_ipv6)
    }
}

/// The two ends of a wired attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wired {
    /// Host-side veth.
    pub host: Link,
    /// Pod-side interface.
    pub pod: Link,
}

/// The address as a host route / interface prefix: /32 or /128.
pub fn host_prefix(ip: IpAddr) -> IpNetwork {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(ip, len).expect("/32 and /128 are valid prefixes")
}

fn default_v4() -> IpNetwork {
    IpNetwork::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).expect("valid")
}

fn default_v6() -> IpNetwork {
    IpNetwork::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).expect("valid")
}

fn gateway_v4_route() -> IpNetwork {
    host_prefix(IpAddr::V4(GATEWAY_V4))
}

/// Builds the attachment. `host` is a netlink handle in the node's namespace
/// (the calling thread's). A stale host veth of the same name (an earlier ADD
/// of the same container and interface) is replaced. On error, whatever was
/// created is left for the caller to remove with [`unwire`].
pub async fn wire(host: &Handle, netns: &Netns, spec: &WireSpec) -> Result<Wired, SetupError> {
    if let Some(stale) = netlink::link_by_name(host, &spec.host_ifname).await? {
        tracing::info!(ifname = %stale.name, "replacing host veth left by an earlier ADD");
        netlink::delete_link(host, stale.index, &stale.name).await?;
    }
    netlink::create_veth(
        host,
        &spec.host_ifname,
        &spec.pod_ifname,
        netns.fd(),
        spec.mtu,
    )
    .await?;
    let host_link = netlink::link_by_name(host, &spec.host_ifname)
        .await?
        .ok_or_else(|| SetupError::Vanished {
            name: spec.host_ifname.clone(),
        })?;
    netlink::set_up(host, host_link.index, &host_link.name).await?;
    if spec.has_v4() {
        write_sysctl(
            &format!("net/ipv4/conf/{}/proxy_arp", spec.host_ifname),
            "1",
        )?;
        // The kernel delays proxy ARP answers by a random fraction of this
        // (0.8 s by default); a pod must not wait for its gateway.
        write_sysctl(
            &format!("net/ipv4/neigh/{}/proxy_delay", spec.host_ifname),
            "0",
        )?;
    }
    if spec.has_v6() {
        netlink::add_address(host, host_link.index, IpAddr::V6(GATEWAY_V6), 64, true).await?;
    }

    let host_mac = netlink::parse_mac(&host_link.mac).unwrap_or_default();
    let pod_spec = spec.clone();
    let pod_link = netns
        .run(move |h| async move { wire_pod_side(&h, &pod_spec, &host_mac).await })
        .await??;

    for ip in &spec.ips {
        netlink::add_route(host, host_prefix(*ip), None, host_link.index).await?;
    }
    Ok(Wired {
        host: host_link,
        pod: pod_link,
    })
}

async fn wire_pod_side(h: &Handle, spec: &WireSpec, host_mac: &[u8]) -> Result<Link, SetupError> {
    if let Some(lo) = netlink::link_by_name(h, "lo").await? {
        netlink::set_up(h, lo.index, "lo").await?;
    }
    let pod = netlink::link_by_name(h, &spec.pod_ifname)
        .await?
        .ok_or_else(|| SetupError::Vanished {
            name: spec.pod_ifname.clone(),
        })?;
    for ip in &spec.ips {
        let p = host_prefix(*ip);
        netlink::add_address(h, pod.index, *ip, p.prefix(), true).await?;
    }
    // Routes need the link up (the kernel refuses a gateway on a down link).
    netlink::set_up(h, pod.index, &pod.name).await?;
    if spec.has_v4() {
        netlink::add_route(h, gateway_v4_route(), None, pod.index).await?;
        netlink::add_route(h, default_v4(), Some(IpAddr::V4(GATEWAY_V4)), pod.index).await?;
        if host_mac.len() == 6 {
            netlink::add_permanent_neighbour(h, pod.index, IpAddr::V4(GATEWAY_V4), host_mac)
                .await?;
        }
    }
    if spec.has_v6() {
        netlink::add_route(h, default_v6(), Some(IpAddr::V6(GATEWAY_V6)), pod.index).await?;
        if host_mac.len() == 6 {
            netlink::add_permanent_neighbour(h, pod.index, IpAddr::V6(GATEWAY_V6), host_mac)
                .await?;
        }
    }
    // Read back after up: this is the state the result reports.
    netlink::link_by_name(h, &spec.pod_ifname)
        .await?
        .ok_or_else(|| SetupError::Vanished {
            name: spec.pod_ifname.clone(),
        })
}

/// Removes the attachment by deleting the host veth (the kernel deletes its
/// peer, the host routes and the per-interface sysctls with it). Returns
/// whether there was anything to delete.
pub async fn unwire(host: &Handle, host_ifname: &str) -> Result<bool, SetupError> {
    match netlink::link_by_name(host, host_ifname).await? {
        Some(link) => Ok(netlink::delete_link(host, link.index, &link.name).await?),
        None => Ok(false),
    }
}

/// Verifies that everything [`wire`] makes is in place; the error lists every
/// difference found.
pub async fn check(host: &Handle, netns: &Netns, spec: &WireSpec) -> Result<(), SetupError> {
    let mut problems = Vec::new();
    match netlink::link_by_name(host, &spec.host_ifname).await? {
        None => problems.push(format!("host veth {} is missing", spec.host_ifname)),
        Some(link) => {
            if link.kind.as_deref() != Some("veth") {
                problems.push(format!("host link {} is not a veth", link.name));
            }
            if !link.up {
                problems.push(format!("host veth {} is down", link.name));
            }
            if spec.has_v4() {
                let path = format!("net/ipv4/conf/{}/proxy_arp", link.name);
                if read_sysctl(&path)? != "1" {
                    problems.push(format!("proxy_arp is off on {}", link.name));
                }
            }
            if spec.has_v6() {
                let addrs = netlink::addresses(host, link.index).await?;
                if !addrs.contains(&(IpAddr::V6(GATEWAY_V6), 64)) {
                    problems.push(format!("{} lacks {GATEWAY_V6}/64", link.name));
                }
            }
            for ip in &spec.ips {
                let routes = netlink::routes(host, ip.is_ipv6()).await?;
                let want = host_prefix(*ip);
                if !routes
                    .iter()
                    .any(|r| r.dst == want && r.oif == Some(link.index) && r.gateway.is_none())
                {
                    problems.push(format!("host route {want} dev {} is missing", link.name));
                }
            }
        }
    }
    let pod_spec = spec.clone();
    let pod_problems = netns
        .run(move |h| async move { check_pod_side(&h, &pod_spec).await })
        .await??;
    problems.extend(pod_problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SetupError::Mismatch { problems })
    }
}

async fn check_pod_side(h: &Handle, spec: &WireSpec) -> Result<Vec<String>, SetupError> {
    let mut problems = Vec::new();
    let Some(pod) = netlink::link_by_name(h, &spec.pod_ifname).await? else {
        problems.push(format!("pod interface {} is missing", spec.pod_ifname));
        return Ok(problems);
    };
    if !pod.up {
        problems.push(format!("pod interface {} is down", pod.name));
    }
    let addrs = netlink::addresses(h, pod.index).await?;
    for ip in &spec.ips {
        let p = host_prefix(*ip);
        if !addrs.contains(&(*ip, p.prefix())) {
            problems.push(format!("pod address {p} on {} is missing", pod.name));
        }
    }
    let mut want: Vec<(IpNetwork, Option<IpAddr>, RouteScope)> = Vec::new();
    if spec.has_v4() {
        want.push((gateway_v4_route(), None, RouteScope::Link));
        want.push((
            default_v4(),
            Some(IpAddr::V4(GATEWAY_V4)),
            RouteScope::Universe,
        ));
    }
    if spec.has_v6() {
        want.push((
            default_v6(),
            Some(IpAddr::V6(GATEWAY_V6)),
            RouteScope::Universe,
        ));
    }
    for (dst, gw, scope) in want {
        let routes = netlink::routes(h, dst.is_ipv6()).await?;
        let found = routes.iter().any(|r| {
            r.dst == dst && r.gateway == gw && r.oif == Some(pod.index) && r.scope == scope
        });
        if !found {
            match gw {
                Some(gw) => problems.push(format!(
                    "pod route {dst} via {gw} dev {} is missing",
                    pod.name
                )),
                None => problems.push(format!(
                    "pod route {dst} dev {} scope link is missing",
                    pod.name
                )),
            }
        }
    }
    Ok(problems)
}

/// `/proc/sys/<key>` of the calling thread's network namespace.
fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key)
}

fn write_sysctl(key: &str, value: &str) -> Result<(), SetupError> {
    let path = sysctl_path(key);
    std::fs::write(&path, value).map_err(|source| SetupError::Sysctl { path, source })
}

fn read_sysctl(key: &str) -> Result<String, SetupError> {
    let path = sysctl_path(key);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| SetupError::Sysctl { path, source })
}
