//! IP prefixes as `ipBlock` writes them, and the one address encoding the
//! datapath uses (`IpKey`: IPv4 as IPv4-mapped IPv6).
//!
//! A [`Cidr`] knows its family: in the datapath's 128-bit space the IPv6
//! prefix `::/0` also covers every IPv4-mapped address, but in Kubernetes an
//! IPv6 block never selects IPv4 traffic, so containment here is per family
//! and the compiler adds a boundary where the two spaces would mix.

use std::cmp::Ordering;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use weir_common::IpKey;

/// Trie prefix length of the IPv4 space inside the 128-bit key (`::ffff:0:0/96`).
pub const IPV4_MAPPED_PREFIX: u32 = 96;

/// `::ffff:0:0` as a 128-bit number: the start of the IPv4-mapped space.
const MAPPED_BASE: u128 = 0xffff_u128 << 32;

/// An address as the datapath's 128-bit key sees it (IPv4 mapped into
/// `::ffff:0:0/96`, IPv6 as is).
pub fn addr_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => MAPPED_BASE | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The datapath key of an address (`IPCACHE`, `CIDR_CELLS`).
pub fn ip_key(ip: IpAddr) -> IpKey {
    IpKey {
        addr: addr_bits(ip).to_be_bytes(),
    }
}

/// The address back from a datapath key (IPv4-mapped keys become IPv4).
pub fn key_addr(key: &IpKey) -> IpAddr {
    canonical(IpAddr::V6(Ipv6Addr::from(key.addr)))
}

/// IPv4-mapped IPv6 addresses are IPv4 addresses: the datapath cannot tell
/// them apart, so neither does the compiler.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Mask keeping the top `len` bits of a 128-bit number.
pub(crate) fn mask128(len: u32) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

/// An IP prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// The prefix of `addr` of length `len` (host bits cleared); `None` when
    /// `len` is too long for the family. An IPv4-mapped IPv6 prefix of
    /// length 96 or more becomes the IPv4 prefix it denotes.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        match addr {
            IpAddr::V4(v4) => {
                if len > 32 {
                    return None;
                }
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                Some(Self {
                    addr: IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask)),
                    len,
                })
            }
            IpAddr::V6(v6) => {
                if len > 128 {
                    return None;
                }
                if len >= 96
                    && let Some(v4) = v6.to_ipv4_mapped()
                {
                    return Self::new(IpAddr::V4(v4), len - 96);
                }
                let bits = u128::from(v6) & mask128(u32::from(len));
                Some(Self {
                    addr: IpAddr::V6(Ipv6Addr::from(bits)),
                    len,
                })
            }
        }
    }

    /// The host prefix of one address (/32 or /128).
    pub fn host(ip: IpAddr) -> Self {
        let ip = canonical(ip);
        let len = if ip.is_ipv4() { 32 } else { 128 };
        Self { addr: ip, len }
    }

    /// Parses `a.b.c.d/n` or `x::y/n`. Host bits may be set (the API server
    /// accepts them too); they are cleared.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad =
            || format!("{s:?}: must be a valid CIDR value (e.g. 10.9.8.0/24 or 2001:db8::/64)");
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        Self::new(addr, len).ok_or_else(bad)
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length within the family (0..=32 or 0..=128).
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Prefix length in the datapath's 128-bit key (IPv4: 96 + n).
    pub fn trie_prefix(&self) -> u32 {
        match self.addr {
            IpAddr::V4(_) => IPV4_MAPPED_PREFIX + u32::from(self.len),
            IpAddr::V6(_) => u32::from(self.len),
        }
    }

    /// The network address in the datapath's 128-bit key.
    pub fn trie_bits(&self) -> u128 {
        addr_bits(self.addr)
    }

    /// The datapath key of the network address.
    pub fn ip_key(&self) -> IpKey {
        ip_key(self.addr)
    }

    /// Whether `other` lies inside this prefix (same family, not shorter).
    pub fn contains(&self, other: &Cidr) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && self.len <= other.len
            && (other.trie_bits() & mask128(self.trie_prefix())) == self.trie_bits()
    }

    /// Whether the address lies inside this prefix (per family).
    pub fn contains_addr(&self, ip: IpAddr) -> bool {
        self.contains(&Cidr::host(ip))
    }

    /// Whether an IPv6 prefix covers the whole IPv4-mapped space in the
    /// 128-bit key (then IPv4 addresses would match it in an LPM trie).
    pub(crate) fn covers_ipv4_space(&self) -> bool {
        !self.is_ipv4()
            && self.trie_prefix() <= IPV4_MAPPED_PREFIX
            && (MAPPED_BASE & mask128(self.trie_prefix())) == self.trie_bits()
    }
}

impl Ord for Cidr {
    /// Trie order: by network address in the 128-bit key, then shorter first.
    fn cmp(&self, other: &Self) -> Ordering {
        (self.trie_bits(), self.trie_prefix()).cmp(&(other.trie_bits(), other.trie_prefix()))
    }
}

impl PartialOrd for Cidr {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn parse_and_normalize() {
        assert_eq!(c("10.1.2.3/16").to_string(), "10.1.0.0/16");
        assert_eq!(c("0.0.0.0/0").trie_prefix(), 96);
        assert_eq!(c("10.0.0.0/8").trie_prefix(), 104);
        assert_eq!(c("fd00::1/64").to_string(), "fd00::/64");
        assert_eq!(c("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0/8",
            "10.0.0.0/+8",
            "10.0.0.0/",
            "fd00::/129",
            "x/8",
            "10.0.0.0/8/8",
            "010.0.0.0/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn containment_is_per_family() {
        assert!(c("10.0.0.0/8").contains(&c("10.1.0.0/16")));
        assert!(c("10.0.0.0/8").contains(&c("10.0.0.0/8")));
        assert!(!c("10.1.0.0/16").contains(&c("10.0.0.0/8")));
        assert!(!c("10.0.0.0/8").contains(&c("11.0.0.0/16")));
        assert!(
            !c("::/0").contains(&c("10.0.0.0/8")),
            "IPv6 never holds IPv4"
        );
        assert!(!c("0.0.0.0/0").contains(&c("fd00::/8")));
        assert!(c("::/0").covers_ipv4_space());
        assert!(c("::/80").covers_ipv4_space());
        assert!(!c("fd00::/8").covers_ipv4_space());
        assert!(!c("0.0.0.0/0").covers_ipv4_space());
        assert!(c("10.0.0.0/8").contains_addr("10.9.9.9".parse().unwrap()));
        assert!(
            c("10.0.0.0/8").contains_addr("::ffff:10.9.9.9".parse().unwrap()),
            "a mapped address is the IPv4 address"
        );
    }

    #[test]
    fn keys() {
        let k = ip_key("10.0.0.1".parse().unwrap());
        assert_eq!(k.addr[..12], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(k.addr[12..], [10, 0, 0, 1]);
        assert_eq!(key_addr(&k), "10.0.0.1".parse::<IpAddr>().unwrap());
        let k6 = ip_key("fd00::1".parse().unwrap());
        assert_eq!(key_addr(&k6), "fd00::1".parse::<IpAddr>().unwrap());
    }
}
