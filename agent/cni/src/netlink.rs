//! Thin helpers over `rtnetlink` for the few link, address, route and neighbour
//! operations the plugin needs, in whatever namespace the given handle lives.
//!
//! They add the context (what, which interface) that raw netlink errors lack and
//! turn "no such device" into `None` where the caller expects absence.
//! No policy lives here: which addresses and routes to create is `setup`'s job.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags};
use netlink_packet_route::link::{
    InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope,
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// A netlink request failed.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {what}: {source}")]
pub struct NetlinkError {
    /// The operation, with the interface or address involved.
    pub what: String,
    /// The kernel's answer.
    #[source]
    pub source: rtnetlink::Error,
}

impl NetlinkError {
    fn new(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Self {
        let what = what.into();
        move |source| Self { what, source }
    }

    /// The errno the kernel returned, if it was a kernel error.
    pub fn errno(&self) -> Option<i32> {
        errno(&self.source)
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() != 0 => Some(-m.raw_code()),
        _ => None,
    }
}

/// What we read back about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MAC address as `aa:bb:cc:dd:ee:ff` (empty if the link has none).
    pub mac: String,
    /// MTU.
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// `veth`, `dummy`, ... (None for loopback and the like).
    pub kind: Option<String>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: String::new(),
            mtu: None,
            up: m.header.flags.contains(LinkFlags::Up),
            kind: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(mac) => link.mac = format_mac(mac),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            link.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Vec<u8>> {
    let bytes: Option<Vec<u8>> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    bytes.filter(|b| b.len() == 6)
}

/// The link called `name`, or `None` if there is none.
pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<Link>, NetlinkError> {
    let mut stream = handle.link().get().match_name(name).execute();
    match stream.try_next().await {
        Ok(Some(m)) => Ok(Some(Link::from_message(&m))),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(NetlinkError::new(format!("get link {name}"))(e)),
    }
}

/// Creates a veth pair: `host` here, its peer `peer` directly in the namespace
/// `peer_netns`, both with `mtu` when given. Creating the peer in place means a
/// pod's interface name never exists, even briefly, in the node's namespace.
pub async fn create_veth(
    handle: &Handle,
    host: &str,
    peer: &str,
    peer_netns: BorrowedFd<'_>,
    mtu: Option<u32>,
) -> Result<(), NetlinkError> {
    let mut peer_msg = LinkUnspec::new_with_name(peer).build();
    peer_msg
        .attributes
        .push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
    if let Some(mtu) = mtu {
        peer_msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    // Replaces the name-only peer that LinkVeth::new builds.
    let mut builder =
        LinkVeth::new(host, peer).set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)));
    if let Some(mtu) = mtu {
        builder = builder.mtu(mtu);
    }
    handle
        .link()
        .add(builder.build())
        .execute()
        .await
        .map_err(NetlinkError::new(format!(
            "create veth {host} (peer {peer})"
        )))
}

/// Deletes link `index`; `Ok(false)` if it was already gone.
pub async fn delete_link(handle: &Handle, index: u32, name: &str) -> Result<bool, NetlinkError> {
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(NetlinkError::new(format!("delete link {name}"))(e)),
    }
}

/// Brings link `index` up.
pub async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), NetlinkError> {
    handle
        .link()
        .change(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(NetlinkError::new(format!("set {name} up")))
}

/// Adds `ip/prefix` to link `index`. `nodad` skips IPv6 duplicate address
/// detection so the address is usable at once (ignored by IPv4).
pub async fn add_address(
    handle: &Handle,
    index: u32,
    ip: IpAddr,
    prefix: u8,
    nodad: bool,
) -> Result<(), NetlinkError> {
    let mut req = handle.address().add(index, ip, prefix);
    if nodad && ip.is_ipv6() {
        req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
    }
    req.execute().await.map_err(NetlinkError::new(format!(
        "add address {ip}/{prefix} to link {index}"
    )))
}

/// The addresses on link `index` as `(address, prefix)`.
pub async fn addresses(handle: &Handle, index: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
    let msgs: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(NetlinkError::new(format!("list addresses of link {index}")))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| {
            // For IPv4 `Local` is the interface's own address; IPv6 only has `Address`.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            local.or(addr).map(|ip| (ip, m.header.prefix_len))
        })
        .collect())
}

/// A route of the main table, reduced to what we compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination prefix.
    pub dst: IpNetwork,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// Route scope.
    pub scope: RouteScope,
}

/// The main table's routes of one family.
pub async fn routes(handle: &Handle, v6: bool) -> Result<Vec<RouteEntry>, NetlinkError> {
    let query = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    let msgs: Vec<RouteMessage> = handle
        .route()
        .get(query)
        .execute()
        .try_collect()
        .await
        .map_err(NetlinkError::new("list routes"))?;
    let want = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    Ok(msgs
        .iter()
        .filter(|m| m.header.address_family == want)
        .filter(|m| {
            let table = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            });
            table.unwrap_or(u32::from(m.header.table)) == u32::from(RouteHeader::RT_TABLE_MAIN)
        })
        .filter_map(|m| {
            let mut dst = None;
            let mut gateway = None;
            let mut oif = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = route_ip(d),
                    RouteAttribute::Gateway(g) => gateway = route_ip(g),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let len = m.header.destination_prefix_length;
            let dst = match dst {
                Some(ip) => IpNetwork::new(ip, len).ok()?,
                None if v6 => IpNetwork::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), len).ok()?,
                None => IpNetwork::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), len).ok()?,
            };
            Some(RouteEntry {
                dst,
                gateway,
                oif,
                scope: m.header.scope,
            })
        })
        .collect())
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Adds a route to `dst` out of link `oif`, via `gateway` or on-link (scope link).
pub async fn add_route(
    handle: &Handle,
    dst: IpNetwork,
    gateway: Option<IpAddr>,
    oif: u32,
) -> Result<(), NetlinkError> {
    let what = match gateway {
        Some(gw) => format!("add route {dst} via {gw} dev {oif}"),
        None => format!("add route {dst} dev {oif}"),
    };
    let msg = match (dst, gateway) {
        (IpNetwork::V4(d), gw) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d.ip(), d.prefix())
                .output_interface(oif);
            match gw {
                Some(IpAddr::V4(g)) => b = b.gateway(g),
                Some(IpAddr::V6(g)) => b = b.via(g),
                None => b = b.scope(RouteScope::Link),
            }
            b.build()
        }
        (IpNetwork::V6(d), gw) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d.ip(), d.prefix())
                .output_interface(oif);
            if let Some(IpAddr::V6(g)) = gw {
                b = b.gateway(g);
            }
            b.build()
        }
    };
    handle
        .route()
        .add(msg)
        .execute()
        .await
        .map_err(NetlinkError::new(what))
}

/// Adds a permanent neighbour entry `ip -> mac` on link `index`.
pub async fn add_permanent_neighbour(
    handle: &Handle,
    index: u32,
    ip: IpAddr,
    mac: &[u8],
) -> Result<(), NetlinkError> {
    handle
        .neighbours()
        .add(index, ip)
        .link_layer_address(mac)
        .replace()
        .execute()
        .await
        .map_err(NetlinkError::new(format!(
            "add neighbour {ip} lladdr {} on link {index}",
            format_mac(mac)
        )))
}
