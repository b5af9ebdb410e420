//! Overlay IPAM: addresses from this node's pod CIDRs, one file per allocation.
//!
//! Layout of the per-network state directory (`<dataDir>/<network name>/`):
//!
//! - `lock`: empty; every operation holds an exclusive `flock` on it, so
//!   concurrent plugin processes serialise here and nowhere else;
//! - `<address>` (e.g. `10.244.1.2`, `fd00:10:244:1::2`): one file per allocated
//!   address, holding `{"containerId": "...", "ifname": "..."}`.
//!
//! Files are written to a temporary name and renamed, so a crash never leaves a
//! half-written allocation. The lowest free address is taken, skipping the
//! network address, the first address (reserved for the node's router) and, for
//! IPv4, the broadcast address. A file whose content cannot be read as an owner
//! still counts as allocated: we would rather waste an address than hand out
//! one that may be in use.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use nix::fcntl::{Flock, FlockArg};

use super::{Allocation, Ipam, IpamError, Owner};

const LOCK_FILE: &str = "lock";

/// Overlay IPAM over one state directory.
#[derive(Clone, Debug)]
pub struct OverlayIpam {
    dir: PathBuf,
    pod_cidrs: Vec<IpNetwork>,
}

/// What an allocation file says, or that it could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Holder {
    Known(Owner),
    Unreadable,
}

impl OverlayIpam {
    /// IPAM keeping its files in `dir` (created on first use) for `pod_cidrs`.
    pub fn new(dir: impl Into<PathBuf>, pod_cidrs: Vec<IpNetwork>) -> Self {
        Self {
            dir: dir.into(),
            pod_cidrs,
        }
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> IpamError {
        let path = path.to_path_buf();
        move |source| IpamError::Io { path, what, source }
    }

    /// Creates the directory and takes the lock; released when the guard drops.
    fn lock(&self) -> Result<Flock<File>, IpamError> {
        fs::create_dir_all(&self.dir).map_err(self.io(&self.dir, "create directory"))?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(self.io(&path, "open lock file"))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, source)| IpamError::Lock { path, source })
    }

    /// Reads every allocation file. Must be called with the lock held.
    fn scan(&self) -> Result<HashMap<IpAddr, Holder>, IpamError> {
        let mut out = HashMap::new();
        let entries = fs::read_dir(&self.dir).map_err(self.io(&self.dir, "list directory"))?;
        for entry in entries {
            let entry = entry.map_err(self.io(&self.dir, "list directory"))?;
            let name = entry.file_name();
            // The lock file and temporaries do not parse as addresses.
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let path = entry.path();
            let holder = match fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<Owner>(&bytes) {
                    Ok(owner) => Holder::Known(owner),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "unreadable IPAM allocation file; keeping its address reserved");
                        Holder::Unreadable
                    }
                },
                // Removed between read_dir and read: not allocated any more.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io(&path, "read allocation")(e)),
            };
            out.insert(ip, holder);
        }
        Ok(out)
    }

    fn write_allocation(&self, ip: IpAddr, owner: &Owner) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        let tmp = self.dir.join(format!(".{ip}.tmp"));
        let body = serde_json::to_vec(owner).expect("Owner always serializes");
        let mut f = File::create(&tmp).map_err(self.io(&tmp, "create allocation"))?;
        f.write_all(&body)
            .and_then(|()| f.sync_all())
            .map_err(self.io(&tmp, "write allocation"))?;
        fs::rename(&tmp, &path).map_err(self.io(&path, "commit allocation"))
    }

    fn held_by(state: &HashMap<IpAddr, Holder>, owner: &Owner) -> impl Iterator<Item = IpAddr> {
        let mut ips: Vec<IpAddr> = state
            .iter()
            .filter(|(_, h)| matches!(h, Holder::Known(o) if o == owner))
            .map(|(ip, _)| *ip)
            .collect();
        ips.sort();
        ips.into_iter()
    }
}

impl Ipam for OverlayIpam {
    fn allocate(&self, owner: &Owner) -> Result<Vec<Allocation>, IpamError> {
        let _lock = self.lock()?;
        let state = self.scan()?;
        let taken: HashSet<IpAddr> = state.keys().copied().collect();
        let mine: Vec<IpAddr> = Self::held_by(&state, owner).collect();

        // Decide everything before writing anything, so that an exhausted
        // second range does not leave an allocation behind in the first.
        let mut plan = Vec::with_capacity(self.pod_cidrs.len());
        for cidr in &self.pod_cidrs {
            match mine.iter().find(|ip| cidr.contains(**ip)) {
                Some(ip) => plan.push((
                    Allocation {
                        ip: *ip,
                        pod_cidr: *cidr,
                    },
                    false,
                )),
                None => {
                    let ip = lowest_free(cidr, &taken).ok_or(IpamError::Exhausted {
                        cidr: *cidr,
                        usable: usable_count(cidr),
                    })?;
                    plan.push((
                        Allocation {
                            ip,
                            pod_cidr: *cidr,
                        },
                        true,
                    ));
                }
            }
        }
        for (a, fresh) in &plan {
            if *fresh {
                self.write_allocation(a.ip, owner)?;
                tracing::debug!(ip = %a.ip, container_id = %owner.container_id, ifname = %owner.ifname, "allocated");
            }
        }
        Ok(plan.into_iter().map(|(a, _)| a).collect())
    }

    fn release(&self, owner: &Owner) -> Result<Vec<IpAddr>, IpamError> {
        let _lock = self.lock()?;
        let state = self.scan()?;
        let mut released = Vec::new();
        for ip in Self::held_by(&state, owner) {
            let path = self.dir.join(ip.to_string());
            match fs::remove_file(&path) {
                Ok(()) => released.push(ip),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(&path, "remove allocation")(e)),
            }
        }
        Ok(released)
    }

    fn lookup(&self, owner: &Owner) -> Result<Vec<Allocation>, IpamError> {
        let _lock = self.lock()?;
        let state = self.scan()?;
        Ok(self
            .pod_cidrs
            .iter()
            .filter_map(|cidr| {
                Self::held_by(&state, owner)
                    .find(|ip| cidr.contains(*ip))
                    .map(|ip| Allocation {
                        ip,
                        pod_cidr: *cidr,
                    })
            })
            .collect())
    }

    fn list(&self) -> Result<Vec<(IpAddr, Owner)>, IpamError> {
        let _lock = self.lock()?;
        let mut out: Vec<(IpAddr, Owner)> = self
            .scan()?
            .into_iter()
            .filter_map(|(ip, h)| match h {
                Holder::Known(o) => Some((ip, o)),
                Holder::Unreadable => None,
            })
            .collect();
        out.sort_by_key(|a| a.0);
        Ok(out)
    }
}

/// Offsets inside `cidr` that pods may use: from 2 (after the network address
/// and the router) to the last address, minus the IPv4 broadcast.
fn usable_range(cidr: &IpNetwork) -> (u128, u128) {
    let host_bits = u32::from(match cidr {
        IpNetwork::V4(_) => 32 - cidr.prefix(),
        IpNetwork::V6(_) => 128 - cidr.prefix(),
    });
    let last = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let last = if cidr.is_ipv4() { last - 1 } else { last };
    (2, last)
}

fn usable_count(cidr: &IpNetwork) -> u128 {
    let (first, last) = usable_range(cidr);
    if last >= first { last - first + 1 } else { 0 }
}

fn nth(cidr: &IpNetwork, offset: u128) -> IpAddr {
    match cidr.network() {
        IpAddr::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n) + offset as u32)),
        IpAddr::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n) + offset)),
    }
}

/// The lowest usable address not in `taken`. Stops after at most
/// `taken.len() + 1` candidates, so a huge IPv6 range costs nothing.
fn lowest_free(cidr: &IpNetwork, taken: &HashSet<IpAddr>) -> Option<IpAddr> {
    let (first, last) = usable_range(cidr);
    let mut offset = first;
    while offset <= last {
        let ip = nth(cidr, offset);
        if !taken.contains(&ip) {
            return Some(ip);
        }
        offset += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn cidr(s: &str) -> IpNetwork {
        s.parse().expect("test CIDR")
    }

    fn ipam(dir: &Path, cidrs: &[&str]) -> OverlayIpam {
        OverlayIpam::new(dir.join("weir"), cidrs.iter().map(|c| cidr(c)).collect())
    }

    fn ips(a: &[Allocation]) -> Vec<String> {
        a.iter().map(|a| a.ip.to_string()).collect()
    }

    #[test]
    fn lowest_free_skips_network_router_and_broadcast() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ipam = ipam(tmp.path(), &["10.244.1.0/30"]);
        let a = ipam.allocate(&Owner::new("c1", "eth0")).expect("first");
        assert_eq!(ips(&a), ["10.244.1.2"]);
        // .3 is the broadcast of a /30: exhausted now.
        match ipam.allocate(&Owner::new("c2", "eth0")) {
            Err(IpamError::Exhausted { cidr: c, usable }) => {
                assert_eq!(c, cidr("10.244.1.0/30"));
                assert_eq!(usable, 1);
            }
            other => panic!("expected exhaustion, got {other:?}"),
        }
        assert_eq!(usable_count(&cidr("10.0.0.0/24")), 253);
        assert_eq!(usable_count(&cidr("fd00::/126")), 2);
    }

    #[test]
    fn dual_stack_idempotent_and_released() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ipam = ipam(tmp.path(), &["10.244.1.0/24", "fd00:10:244:1::/64"]);
        let c1 = Owner::new("c1", "eth0");
        let a1 = ipam.allocate(&c1).expect("c1");
        assert_eq!(ips(&a1), ["10.244.1.2", "fd00:10:244:1::2"]);
        assert_eq!(a1[1].pod_cidr, cidr("fd00:10:244:1::/64"));
        let again = ipam.allocate(&c1).expect("c1 again");
        assert_eq!(again, a1, "ADD twice returns the same addresses");
        assert_eq!(ipam.lookup(&c1).expect("lookup"), a1);

        // Same container, other interface: a different attachment.
        let c1b = Owner::new("c1", "net1");
        assert_eq!(
            ips(&ipam.allocate(&c1b).expect("c1/net1")),
            ["10.244.1.3", "fd00:10:244:1::3"]
        );

        let released = ipam.release(&c1).expect("release");
        assert_eq!(released.len(), 2);
        assert!(ipam.lookup(&c1).expect("lookup").is_empty());
        assert!(ipam.release(&c1).expect("release twice").is_empty());

        // The hole left by c1 is filled first.
        let c2 = Owner::new("c2", "eth0");
        assert_eq!(
            ips(&ipam.allocate(&c2).expect("c2")),
            ["10.244.1.2", "fd00:10:244:1::2"]
        );
        let listed = ipam.list().expect("list");
        assert_eq!(listed.len(), 4);
        assert!(
            listed
                .iter()
                .all(|(_, o)| o.container_id == "c2" || o == &c1b)
        );
    }

    #[test]
    fn exhaustion_of_one_family_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ipam = ipam(tmp.path(), &["10.0.0.0/24", "fd00::/126"]);
        ipam.allocate(&Owner::new("a", "eth0")).expect("a");
        ipam.allocate(&Owner::new("b", "eth0")).expect("b");
        assert!(matches!(
            ipam.allocate(&Owner::new("c", "eth0")),
            Err(IpamError::Exhausted { .. })
        ));
        assert!(
            ipam.lookup(&Owner::new("c", "eth0"))
                .expect("lookup")
                .is_empty()
        );
        assert_eq!(ipam.list().expect("list").len(), 4);
    }

    #[test]
    fn unreadable_file_keeps_its_address() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ipam = ipam(tmp.path(), &["10.0.0.0/24"]);
        fs::create_dir_all(ipam.dir()).expect("mkdir");
        fs::write(ipam.dir().join("10.0.0.2"), b"garbage").expect("write");
        fs::write(ipam.dir().join("not-an-ip"), b"x").expect("write");
        assert_eq!(
            ips(&ipam.allocate(&Owner::new("a", "eth0")).expect("a")),
            ["10.0.0.3"]
        );
        // The file holds exactly the owner, in the documented shape.
        let body = fs::read_to_string(ipam.dir().join("10.0.0.3")).expect("read");
        assert_eq!(body, r#"{"containerId":"a","ifname":"eth0"}"#);
    }

    #[test]
    fn concurrent_allocations_are_distinct() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let n = 16;
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let dir = dir.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    // Separate instances, like separate plugin processes: each opens its own lock.
                    let ipam = ipam(&dir, &["10.1.0.0/24"]);
                    barrier.wait();
                    ipam.allocate(&Owner::new(format!("c{i}"), "eth0"))
                        .expect("allocate")[0]
                        .ip
                })
            })
            .collect();
        let got: HashSet<IpAddr> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        assert_eq!(got.len(), n, "every allocation got its own address");
        let expected: HashSet<IpAddr> = (2..2 + n as u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i)))
            .collect();
        assert_eq!(got, expected, "lowest addresses, no gaps");
    }
}
