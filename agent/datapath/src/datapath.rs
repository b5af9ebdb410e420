//! Loading the eBPF object, attaching and detaching it (tc programs on
//! interfaces, cgroup programs on cgroup directories), and reading its
//! counters. Owns the `aya::Ebpf` instance and every map handle except the
//! ring buffer once [`Datapath::take_events`] has handed it out.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs::File,
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, SchedClassifier,
        TcAttachType,
        cgroup_skb::CgroupSkbLinkId,
        links::LinkOrder,
        tc::{self, SchedClassifierLinkId, TcAttachOptions, TcError},
    },
    util::KernelVersion,
};
use tracing::{debug, info, warn};
use weir_common::{
    CtKey, CtValue, DatapathConfig, FlowEvent, defaults, maps, parse_error, programs, stat,
};

use crate::{cgroup, events::EventReader, policy::PolicyMaps, ring_fill::RingFill};

/// The object built by `build.rs` from ebpf/programs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weir-ebpf"));

/// How the programs decide when to emit a flow event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Aggregation {
    /// One event when a connection is first seen, on the first SYN, SYN-ACK,
    /// FIN and RST per direction, and at most once per report interval after that.
    #[default]
    Full,
    /// One event per packet (debugging; expensive).
    None,
}

/// Load-time options of the datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathOptions {
    /// Minimum time between two periodic reports of one connection.
    pub report_interval: Duration,
    /// See [`Aggregation`].
    pub aggregation: Aggregation,
    /// Ring-buffer size in bytes: a power of two and a multiple of the page size.
    pub ring_bytes: u32,
    /// Maximum connection-tracking entries (LRU: the oldest are evicted when full).
    pub conntrack_entries: u32,
    /// Maximum policy rule entries (allocated as used).
    pub policy_entries: u32,
}

impl Default for DatapathOptions {
    fn default() -> Self {
        Self {
            report_interval: Duration::from_nanos(defaults::REPORT_INTERVAL_NS),
            aggregation: Aggregation::Full,
            ring_bytes: defaults::EVENTS_RING_BYTES,
            conntrack_entries: defaults::CONNTRACK_ENTRIES,
            policy_entries: defaults::POLICY_ENTRIES,
        }
    }
}

/// How the programs are attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// tcx links (kernel >= 6.6): owned by a file descriptor, removed when it closes.
    Tcx,
    /// A direct-action cls_bpf filter under the clsact qdisc (netlink).
    ClsAct,
}

impl AttachMode {
    /// `"tcx"` or `"clsact"` (for logs and metrics labels).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::ClsAct => "clsact",
        }
    }

    /// tcx on kernels >= 6.6, clsact otherwise (or when the version is unknown).
    pub fn detect() -> Self {
        match KernelVersion::current() {
            Ok(v) if v >= KernelVersion::new(6, 6, 0) => Self::Tcx,
            Ok(_) => Self::ClsAct,
            Err(error) => {
                warn!(%error, "cannot read the kernel version; using clsact attachment");
                Self::ClsAct
            }
        }
    }
}

/// Kernel counters, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Indexed by `weir_common::stat`.
    pub stats: [u64; stat::COUNT as usize],
    /// Indexed by `weir_common::parse_error`.
    pub parse_errors: [u64; parse_error::COUNT as usize],
    /// Bytes written into the ring buffer and not yet consumed: the kernel's
    /// producer position minus the reader's consumer position, read from the
    /// ring's two metadata pages without locking. Best effort: it counts
    /// records still being written (reserved, not yet submitted) and the
    /// 8-byte record headers, and the two positions are read at slightly
    /// different moments. Compare it with [`DatapathOptions::ring_bytes`] to
    /// see how close the reader is to losing events.
    pub ring_pending_bytes: u64,
}

/// Errors of the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// An option is out of range; `field` names it.
    #[error("invalid datapath option {field}: {reason}")]
    InvalidOption { field: &'static str, reason: String },
    /// The embedded object is empty (built with AYA_BUILD_SKIP).
    #[error("the eBPF object was not built (AYA_BUILD_SKIP was set when compiling weir-datapath)")]
    ObjectMissing,
    /// Parsing the object or creating its maps failed.
    #[error("loading the eBPF object failed")]
    ObjectLoad {
        #[source]
        source: Box<EbpfError>,
    },
    /// A program is missing from the object or has the wrong type.
    #[error("program {program} is missing from the eBPF object or has the wrong program type")]
    MissingProgram { program: &'static str },
    /// The kernel refused a program (the source carries the verifier log).
    #[error("loading program {program} failed")]
    ProgramLoad {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// A map is missing from the object.
    #[error("map {map} is missing from the eBPF object")]
    MissingMap { map: &'static str },
    /// A map operation failed.
    #[error("map {map}: operation failed")]
    Map {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    /// The ring buffer's metadata pages could not be mapped.
    #[error("mapping the ring buffer's positions failed")]
    RingMmap {
        #[source]
        source: io::Error,
    },
    /// The interface does not exist in the calling thread's network namespace.
    #[error("interface {ifname} not found in the calling thread's network namespace")]
    NoSuchInterface {
        ifname: String,
        #[source]
        source: io::Error,
    },
    /// Adding the clsact qdisc failed.
    #[error("adding the clsact qdisc to {ifname} failed")]
    Clsact {
        ifname: String,
        #[source]
        source: Box<TcError>,
    },
    /// Attaching a program to an interface failed.
    #[error("attaching {program} to {ifname} failed")]
    Attach {
        ifname: String,
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// Detaching a program from an interface failed.
    #[error("detaching {program} from {ifname} failed")]
    Detach {
        ifname: String,
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// The cgroup to attach to could not be read (not a cgroup v2
    /// directory, does not exist ...).
    #[error("cgroup {path} cannot be attached to")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: Box<cgroup::CgroupError>,
    },
    /// Attaching a program to a cgroup failed.
    #[error("attaching {program} to cgroup {path} failed")]
    CgroupAttach {
        path: PathBuf,
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// Detaching a program from a cgroup failed.
    #[error("detaching {program} from cgroup {path} failed")]
    CgroupDetach {
        path: PathBuf,
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// [`Datapath::take_events`] was already called.
    #[error("the event reader was already taken")]
    EventsTaken,
    /// Registering the ring buffer with the tokio reactor failed.
    #[error("registering the ring buffer with the tokio reactor failed")]
    EventsRegister {
        #[source]
        source: io::Error,
    },
}

/// The programs attached to one interface.
#[derive(Debug)]
struct Attachment {
    ifindex: u32,
    /// Link ids, one per program: [from_endpoint (ingress), to_endpoint (egress)].
    links: [SchedClassifierLinkId; 2],
}

/// The two programs with their hook, in attach order.
const HOOKS: [(&str, TcAttachType); 2] = [
    (programs::FROM_ENDPOINT, TcAttachType::Ingress),
    (programs::TO_ENDPOINT, TcAttachType::Egress),
];

/// The programs attached to one cgroup.
#[derive(Debug)]
struct CgroupAttachment {
    /// The cgroup's id when it was attached (a recreated directory has another).
    id: u64,
    /// Link ids, one per program, in [`CGROUP_HOOKS`] order.
    links: [CgroupSkbLinkId; 2],
}

/// The two cgroup programs with their hook, in attach order.
const CGROUP_HOOKS: [(&str, CgroupSkbAttachType); 2] = [
    (programs::CGROUP_EGRESS, CgroupSkbAttachType::Egress),
    (programs::CGROUP_INGRESS, CgroupSkbAttachType::Ingress),
];

/// The loaded datapath. Dropping it detaches everything it attached (tcx
/// links close; clsact filters are removed through netlink in the dropping
/// thread's namespace, so drop it there or call [`Datapath::detach`] first).
pub struct Datapath {
    ebpf: Ebpf,
    mode: AttachMode,
    attachments: BTreeMap<String, Attachment>,
    cgroup_attachments: BTreeMap<PathBuf, CgroupAttachment>,
    stats: PerCpuArray<MapData, u64>,
    parse_errors: PerCpuArray<MapData, u64>,
    conntrack: HashMap<MapData, CtKey, CtValue>,
    /// Size the conntrack map was created with; bounds the counting walk.
    conntrack_capacity: u32,
    events: Option<RingBuf<MapData>>,
    ring_fill: RingFill,
    policy: PolicyMaps,
}

// The agent moves the datapath into its tasks, and returns these errors
// from closures: keep both properties compile-time checked.
const _: () = {
    assert!(std::mem::size_of::<DatapathError>() <= 64);
    const fn assert_send<T: Send>() {}
    assert_send::<Datapath>();
    assert_send::<EventReader>();
};

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("mode", &self.mode)
            .field("attached", &self.attachments)
            .field("attached_cgroups", &self.cgroup_attachments)
            .field("events_taken", &self.events.is_none())
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads the programs with `opts`, writes their configuration and picks
    /// the attach mode for this kernel ([`AttachMode::detect`]). Attaches nothing.
    pub fn load(opts: &DatapathOptions) -> Result<Self, DatapathError> {
        Self::load_with_mode(opts, AttachMode::detect())
    }

    /// Like [`Datapath::load`] with an explicit attach mode (clsact also works
    /// on tcx kernels; tcx fails to attach on kernels older than 6.6).
    pub fn load_with_mode(opts: &DatapathOptions, mode: AttachMode) -> Result<Self, DatapathError> {
        let started = Instant::now();
        validate(opts)?;
        if EBPF_OBJECT.is_empty() {
            return Err(DatapathError::ObjectMissing);
        }
        raise_memlock_limit();

        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::EVENTS, opts.ring_bytes)
            .map_max_entries(maps::CONNTRACK, opts.conntrack_entries)
            .map_max_entries(maps::POLICY, opts.policy_entries)
            .load(EBPF_OBJECT)
            .map_err(|source| DatapathError::ObjectLoad {
                source: Box::new(source),
            })?;

        for (program, _) in HOOKS {
            let prog = classifier_mut(&mut ebpf, program)?;
            load_retrying(program, || prog.load())?;
        }
        for (program, _) in CGROUP_HOOKS {
            let prog = cgroup_skb_mut(&mut ebpf, program)?;
            load_retrying(program, || prog.load())?;
        }

        let config = DatapathConfig {
            report_interval_ns: u64::try_from(opts.report_interval.as_nanos()).unwrap_or(u64::MAX),
            aggregation_none: u8::from(opts.aggregation == Aggregation::None),
            _pad: [0; 3],
            policy_gen: 0,
        };
        {
            let map = ebpf
                .map_mut(maps::CONFIG)
                .ok_or(DatapathError::MissingMap { map: maps::CONFIG })?;
            let mut config_map: Array<&mut MapData, DatapathConfig> = Array::try_from(map)
                .map_err(|source| DatapathError::Map {
                    map: maps::CONFIG,
                    source: Box::new(source),
                })?;
            config_map
                .set(0, config, 0)
                .map_err(|source| DatapathError::Map {
                    map: maps::CONFIG,
                    source: Box::new(source),
                })?;
        }

        let stats = PerCpuArray::try_from(take_map(&mut ebpf, maps::STATS)?).map_err(|source| {
            DatapathError::Map {
                map: maps::STATS,
                source: Box::new(source),
            }
        })?;
        let parse_errors = PerCpuArray::try_from(take_map(&mut ebpf, maps::PARSE_ERRORS)?)
            .map_err(|source| DatapathError::Map {
                map: maps::PARSE_ERRORS,
                source: Box::new(source),
            })?;
        let conntrack =
            HashMap::try_from(take_map(&mut ebpf, maps::CONNTRACK)?).map_err(|source| {
                DatapathError::Map {
                    map: maps::CONNTRACK,
                    source: Box::new(source),
                }
            })?;
        let events = RingBuf::try_from(take_map(&mut ebpf, maps::EVENTS)?).map_err(|source| {
            DatapathError::Map {
                map: maps::EVENTS,
                source: Box::new(source),
            }
        })?;
        let ring_fill =
            RingFill::new(&events).map_err(|source| DatapathError::RingMmap { source })?;
        let policy = PolicyMaps::new(
            take_map(&mut ebpf, maps::POLICY_EP)?,
            take_map(&mut ebpf, maps::POLICY)?,
            take_map(&mut ebpf, maps::IPCACHE)?,
            take_map(&mut ebpf, maps::CIDR_CELLS)?,
            take_map(&mut ebpf, maps::CGROUP_EP)?,
            take_map(&mut ebpf, maps::CONFIG)?,
            config,
        )?;

        info!(
            mode = mode.as_str(),
            ring_bytes = opts.ring_bytes,
            conntrack_entries = opts.conntrack_entries,
            report_interval_ms = opts.report_interval.as_millis() as u64,
            aggregation = ?opts.aggregation,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "datapath loaded"
        );
        Ok(Self {
            ebpf,
            mode,
            attachments: BTreeMap::new(),
            cgroup_attachments: BTreeMap::new(),
            stats,
            parse_errors,
            conntrack,
            conntrack_capacity: opts.conntrack_entries,
            events: Some(events),
            ring_fill,
            policy,
        })
    }

    /// The policy maps, to write what the compiler computed.
    pub fn policy_maps(&mut self) -> &mut PolicyMaps {
        &mut self.policy
    }

    /// Attaches both programs to `ifname` (ingress: `weir_from_endpoint`,
    /// egress: `weir_to_endpoint`) in the calling thread's network namespace
    /// and returns its ifindex. Attaching an interface that is already
    /// attached is a no-op; if the name now belongs to a new interface (a
    /// recreated veth), the stale attachment is dropped and the new one made.
    pub fn attach(&mut self, ifname: &str) -> Result<u32, DatapathError> {
        let ifindex = ifindex_of(ifname)?;
        if let Some(existing) = self.attachments.get(ifname) {
            if existing.ifindex == ifindex {
                return Ok(ifindex);
            }
            debug!(
                ifname,
                old = existing.ifindex,
                new = ifindex,
                "interface was recreated; re-attaching"
            );
            self.detach(ifname)?;
        }

        if self.mode == AttachMode::ClsAct {
            add_clsact(ifname)?;
            // cls_bpf filters outlive the process that added them: remove
            // what an agent killed before it could detach left on this
            // interface, so filters never pile up and old programs never
            // run beside ours.
            for (program, attach_type) in HOOKS {
                match tc::qdisc_detach_program(ifname, attach_type, program) {
                    Ok(()) => debug!(ifname, program, "removed a stale filter"),
                    Err(e) => debug!(ifname, program, error = %e, "no stale filter"),
                }
            }
        }

        let mode = self.mode;
        let links = attach_all(
            &mut self.ebpf,
            HOOKS,
            |ebpf, program, attach_type| {
                let options = match mode {
                    AttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
                    AttachMode::ClsAct => TcAttachOptions::Netlink(tc::NlOptions::default()),
                };
                classifier_mut(ebpf, program)?
                    .attach_with_options(ifname, attach_type, options)
                    .map_err(|source| DatapathError::Attach {
                        ifname: ifname.to_owned(),
                        program,
                        source: Box::new(source),
                    })
            },
            |ebpf, program, link| {
                if let Ok(prog) = classifier_mut(ebpf, program)
                    && let Err(undo) = prog.detach(link)
                {
                    warn!(ifname, program, error = %undo, "undoing a partial attach failed");
                }
            },
        )?;
        self.attachments
            .insert(ifname.to_owned(), Attachment { ifindex, links });
        debug!(ifname, ifindex, mode = self.mode.as_str(), "attached");
        Ok(ifindex)
    }

    /// Detaches both programs from `ifname`. Not attached, or the interface
    /// is gone (which removes the kernel's attachment with it): `Ok`.
    pub fn detach(&mut self, ifname: &str) -> Result<(), DatapathError> {
        let Some(attachment) = self.attachments.remove(ifname) else {
            return Ok(());
        };
        let mut first_error = None;
        for ((program, _), link) in HOOKS.into_iter().zip(attachment.links) {
            let result = classifier_mut(&mut self.ebpf, program).and_then(|prog| {
                prog.detach(link).map_err(|source| DatapathError::Detach {
                    ifname: ifname.to_owned(),
                    program,
                    source: Box::new(source),
                })
            });
            if let Err(error) = result {
                if !interface_is(ifname, attachment.ifindex) {
                    debug!(ifname, program, %error, "interface gone; nothing left to detach");
                } else if first_error.is_none() {
                    first_error = Some(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => {
                debug!(ifname, ifindex = attachment.ifindex, "detached");
                Ok(())
            }
        }
    }

    /// Names of the interfaces the programs are attached to.
    pub fn attached(&self) -> Vec<String> {
        self.attachments.keys().cloned().collect()
    }

    /// Attaches the cgroup programs (`cgroup_skb/egress` and
    /// `cgroup_skb/ingress`) to the cgroup v2 directory `path` and returns
    /// its cgroup id (see [`cgroup::cgroup_id`]).
    ///
    /// They then run for every socket of that cgroup and of the cgroups
    /// below it, present and future, and police and report that traffic as
    /// the endpoint `CGROUP_EP` names for the socket's cgroup (or its
    /// nearest registered ancestor). Write that entry and the endpoint's
    /// `POLICY_EP` entry *before* attaching: a socket whose cgroup has no
    /// entry passes unpoliced (counted as `stat::CGROUP_UNKNOWN`).
    ///
    /// Attached as bpf links (kernel >= 5.7), which coexist with other
    /// programs on the same cgroup (all must pass a packet) and detach when
    /// the datapath is dropped. Attaching an attached cgroup is a no-op; if
    /// the directory was recreated (another id), the stale attachment is
    /// dropped and a new one made. Cgroups live in the mount namespace, not
    /// the network namespace: no `setns()` is needed.
    pub fn attach_cgroup(&mut self, path: &Path) -> Result<u64, DatapathError> {
        let cgroup_err = |source| DatapathError::Cgroup {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        let id = cgroup::cgroup_id(path).map_err(cgroup_err)?;
        if let Some(existing) = self.cgroup_attachments.get(path) {
            if existing.id == id {
                return Ok(id);
            }
            debug!(
                path = %path.display(),
                old = existing.id,
                new = id,
                "cgroup was recreated; re-attaching"
            );
            self.detach_cgroup(path)?;
        }
        let dir = File::open(path).map_err(|source| {
            cgroup_err(cgroup::CgroupError::Io {
                path: path.to_path_buf(),
                what: "open",
                source,
            })
        })?;

        let links = attach_all(
            &mut self.ebpf,
            CGROUP_HOOKS,
            |ebpf, program, attach_type| {
                // Single is the flags value 0 that bpf_link_create requires for
                // cgroups; a link never excludes other programs on the cgroup.
                cgroup_skb_mut(ebpf, program)?
                    .attach(&dir, attach_type, CgroupAttachMode::Single)
                    .map_err(|source| DatapathError::CgroupAttach {
                        path: path.to_path_buf(),
                        program,
                        source: Box::new(source),
                    })
            },
            |ebpf, program, link| {
                if let Ok(prog) = cgroup_skb_mut(ebpf, program)
                    && let Err(undo) = prog.detach(link)
                {
                    warn!(
                        path = %path.display(),
                        program,
                        error = %undo,
                        "undoing a partial cgroup attach failed"
                    );
                }
            },
        )?;
        self.cgroup_attachments
            .insert(path.to_path_buf(), CgroupAttachment { id, links });
        debug!(path = %path.display(), cgroup_id = id, "attached to cgroup");
        Ok(id)
    }

    /// Detaches the cgroup programs from `path`. Not attached: `Ok`. Works
    /// after the directory was removed (closing the links is all it takes).
    pub fn detach_cgroup(&mut self, path: &Path) -> Result<(), DatapathError> {
        let Some(attachment) = self.cgroup_attachments.remove(path) else {
            return Ok(());
        };
        let mut first_error = None;
        for ((program, _), link) in CGROUP_HOOKS.into_iter().zip(attachment.links) {
            let result = cgroup_skb_mut(&mut self.ebpf, program).and_then(|prog| {
                prog.detach(link)
                    .map_err(|source| DatapathError::CgroupDetach {
                        path: path.to_path_buf(),
                        program,
                        source: Box::new(source),
                    })
            });
            if let Err(error) = result
                && first_error.is_none()
            {
                first_error = Some(error);
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => {
                debug!(path = %path.display(), cgroup_id = attachment.id, "detached from cgroup");
                Ok(())
            }
        }
    }

    /// The cgroups the cgroup programs are attached to, with their ids.
    pub fn attached_cgroups(&self) -> Vec<(PathBuf, u64)> {
        self.cgroup_attachments
            .iter()
            .map(|(path, a)| (path.clone(), a.id))
            .collect()
    }

    /// The attach mode chosen at load.
    pub fn attach_mode(&self) -> AttachMode {
        self.mode
    }

    /// Hands out the ring-buffer reader; only once. Must be called inside a
    /// tokio runtime.
    pub fn take_events(&mut self) -> Result<EventReader, DatapathError> {
        let ring = self.events.take().ok_or(DatapathError::EventsTaken)?;
        EventReader::new(ring).map_err(|source| DatapathError::EventsRegister { source })
    }

    /// Counters summed over CPUs, plus the ring buffer's fill level.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let mut counters = Counters::default();
        sum_per_cpu(&self.stats, maps::STATS, &mut counters.stats)?;
        sum_per_cpu(
            &self.parse_errors,
            maps::PARSE_ERRORS,
            &mut counters.parse_errors,
        )?;
        counters.ring_pending_bytes = self.ring_fill.pending_bytes();
        Ok(counters)
    }

    /// Number of conntrack entries (walks the map: O(entries)).
    ///
    /// The walk is bounded by the map's capacity: when the key it stands on
    /// is evicted, the kernel restarts the walk from the first key, so on a
    /// busy full map an unbounded walk could count past capacity or never
    /// end. A walk cut short by an eviction error is still a fair answer.
    pub fn conntrack_entries(&self) -> Result<u64, DatapathError> {
        let mut count = 0u64;
        let cap = u64::from(self.conntrack_capacity);
        for key in self.conntrack.keys() {
            if count >= cap {
                break;
            }
            match key {
                Ok(_) => count += 1,
                Err(MapError::KeyNotFound) => break,
                Err(_) if count > 0 => break,
                Err(source) => {
                    return Err(DatapathError::Map {
                        map: maps::CONNTRACK,
                        source: Box::new(source),
                    });
                }
            }
        }
        Ok(count)
    }

    /// The program attached at `obs_point` (`weir_common::obs`), for tests.
    pub(crate) fn classifier(&self, obs_point: u8) -> Option<&SchedClassifier> {
        let name = match obs_point {
            weir_common::obs::FROM_ENDPOINT => programs::FROM_ENDPOINT,
            weir_common::obs::TO_ENDPOINT => programs::TO_ENDPOINT,
            _ => return None,
        };
        self.ebpf.program(name).and_then(|p| p.try_into().ok())
    }

    /// The cgroup program of `obs_point` (`FROM_ENDPOINT`: egress,
    /// `TO_ENDPOINT`: ingress), for tests.
    pub(crate) fn cgroup_program(&self, obs_point: u8) -> Option<&CgroupSkb> {
        let name = match obs_point {
            weir_common::obs::FROM_ENDPOINT => programs::CGROUP_EGRESS,
            weir_common::obs::TO_ENDPOINT => programs::CGROUP_INGRESS,
            _ => return None,
        };
        self.ebpf.program(name).and_then(|p| p.try_into().ok())
    }

    /// Reads every event now in the ring buffer without waiting, for tests.
    /// `None` once the reader has been taken.
    pub(crate) fn drain_ring(&mut self) -> Option<Vec<FlowEvent>> {
        let ring = self.events.as_mut()?;
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(event) = crate::events::decode(&item) {
                events.push(event);
            }
        }
        Some(events)
    }

    /// All conntrack entries, for tests.
    pub(crate) fn conntrack_dump(&self) -> Result<Vec<(CtKey, CtValue)>, DatapathError> {
        self.conntrack
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| DatapathError::Map {
                map: maps::CONNTRACK,
                source: Box::new(source),
            })
    }
}

/// Loads one program, retrying when the kernel answers `EAGAIN`: the
/// verifier gives up with it when a signal arrives for the loading thread
/// during a long verification (the cgroup programs take ~100k verifier
/// steps), which says nothing about the program. libbpf retries the same way.
fn load_retrying(
    program: &'static str,
    mut load: impl FnMut() -> Result<(), ProgramError>,
) -> Result<(), DatapathError> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        match load() {
            Ok(()) => return Ok(()),
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS =>
            {
                debug!(
                    program,
                    attempt, "verification interrupted (EAGAIN); loading again"
                );
                attempt += 1;
            }
            Err(source) => {
                return Err(DatapathError::ProgramLoad {
                    program,
                    source: Box::new(source),
                });
            }
        }
    }
}

fn validate(opts: &DatapathOptions) -> Result<(), DatapathError> {
    let page = page_size();
    if !opts.ring_bytes.is_power_of_two() || (opts.ring_bytes as usize) < page {
        return Err(DatapathError::InvalidOption {
            field: "ring_bytes",
            reason: format!(
                "{} is not a power of two of at least the page size ({page})",
                opts.ring_bytes
            ),
        });
    }
    if opts.conntrack_entries == 0 {
        return Err(DatapathError::InvalidOption {
            field: "conntrack_entries",
            reason: "must be at least 1".to_owned(),
        });
    }
    if opts.policy_entries == 0 {
        return Err(DatapathError::InvalidOption {
            field: "policy_entries",
            reason: "must be at least 1".to_owned(),
        });
    }
    if opts.report_interval.is_zero() {
        return Err(DatapathError::InvalidOption {
            field: "report_interval",
            reason: "must be greater than zero".to_owned(),
        });
    }
    Ok(())
}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK. Newer ones charge
/// the memory cgroup, and raising the limit needs CAP_SYS_RESOURCE, which the
/// agent may lack: a failure is only worth a debug line.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!(error = %io::Error::last_os_error(), "cannot raise RLIMIT_MEMLOCK (not needed on kernels >= 5.11)");
    }
}

fn take_map(ebpf: &mut Ebpf, map: &'static str) -> Result<aya::maps::Map, DatapathError> {
    ebpf.take_map(map).ok_or(DatapathError::MissingMap { map })
}

/// Attaches each program of `hooks` in order with `attach` and returns the
/// links in that order. If one fails, hands the links made so far to `undo`
/// (which detaches them and logs what it cannot) so that nothing is left
/// half attached, and returns that failure.
fn attach_all<H, L, const N: usize>(
    ebpf: &mut Ebpf,
    hooks: [(&'static str, H); N],
    mut attach: impl FnMut(&mut Ebpf, &'static str, H) -> Result<L, DatapathError>,
    mut undo: impl FnMut(&mut Ebpf, &'static str, L),
) -> Result<[L; N], DatapathError> {
    let mut links = Vec::with_capacity(N);
    for (program, hook) in hooks {
        match attach(ebpf, program, hook) {
            Ok(link) => links.push((program, link)),
            Err(error) => {
                for (program, link) in links {
                    undo(ebpf, program, link);
                }
                return Err(error);
            }
        }
    }
    let links: Vec<L> = links.into_iter().map(|(_, link)| link).collect();
    Ok(links
        .try_into()
        .unwrap_or_else(|_| unreachable!("one link per hook")))
}

fn classifier_mut<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(program)
        .and_then(|p| p.try_into().ok())
        .ok_or(DatapathError::MissingProgram { program })
}

fn cgroup_skb_mut<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut CgroupSkb, DatapathError> {
    ebpf.program_mut(program)
        .and_then(|p| p.try_into().ok())
        .ok_or(DatapathError::MissingProgram { program })
}

fn sum_per_cpu(
    map: &PerCpuArray<MapData, u64>,
    name: &'static str,
    out: &mut [u64],
) -> Result<(), DatapathError> {
    for (index, slot) in out.iter_mut().enumerate() {
        let values = map
            .get(&(index as u32), 0)
            .map_err(|source| DatapathError::Map {
                map: name,
                source: Box::new(source),
            })?;
        *slot = values.iter().copied().fold(0u64, u64::wrapping_add);
    }
    Ok(())
}

/// The ifindex of `ifname` in the calling thread's network namespace.
fn ifindex_of(ifname: &str) -> Result<u32, DatapathError> {
    let not_found = |source| DatapathError::NoSuchInterface {
        ifname: ifname.to_owned(),
        source,
    };
    let name = CString::new(ifname).map_err(|_| {
        not_found(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name contains NUL",
        ))
    })?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(not_found(io::Error::last_os_error()));
    }
    Ok(index)
}

/// Whether `ifname` still names the interface with `ifindex`.
fn interface_is(ifname: &str, ifindex: u32) -> bool {
    ifindex_of(ifname).is_ok_and(|current| current == ifindex)
}

fn add_clsact(ifname: &str) -> Result<(), DatapathError> {
    match tc::qdisc_add_clsact(ifname) {
        Ok(()) => Ok(()),
        Err(TcError::AlreadyAttached) => Ok(()),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(source) => Err(DatapathError::Clsact {
            ifname: ifname.to_owned(),
            source: Box::new(source),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_abi() {
        let opts = DatapathOptions::default();
        assert_eq!(opts.ring_bytes, defaults::EVENTS_RING_BYTES);
        assert_eq!(opts.conntrack_entries, defaults::CONNTRACK_ENTRIES);
        assert_eq!(
            opts.report_interval.as_nanos(),
            u128::from(defaults::REPORT_INTERVAL_NS)
        );
        assert_eq!(opts.aggregation, Aggregation::Full);
        assert!(validate(&opts).is_ok());
    }

    #[test]
    fn attach_mode_names() {
        assert_eq!(AttachMode::Tcx.as_str(), "tcx");
        assert_eq!(AttachMode::ClsAct.as_str(), "clsact");
    }

    #[test]
    fn embedded_object_has_both_programs() {
        let object = object_text(EBPF_OBJECT);
        for name in [
            programs::FROM_ENDPOINT,
            programs::TO_ENDPOINT,
            programs::CGROUP_EGRESS,
            programs::CGROUP_INGRESS,
            maps::CGROUP_EP,
            maps::EVENTS,
            maps::CONNTRACK,
            maps::STATS,
            maps::PARSE_ERRORS,
            maps::CONFIG,
        ] {
            assert!(
                object.contains(name),
                "{name} missing from the embedded object"
            );
        }
    }

    /// The symbol names in the ELF object, found as plain byte strings
    /// (enough to check the build embedded the right object).
    fn object_text(object: &[u8]) -> String {
        String::from_utf8_lossy(object).into_owned()
    }

    #[test]
    fn an_interrupted_verification_is_retried_and_other_errors_are_not() {
        let eagain = || ProgramError::LoadError {
            io_error: io::Error::from_raw_os_error(libc::EAGAIN),
            verifier_log: aya_obj::VerifierLog::new(String::new()),
        };
        let mut calls = 0;
        load_retrying("p", || {
            calls += 1;
            if calls < 3 { Err(eagain()) } else { Ok(()) }
        })
        .expect("third attempt loads");
        assert_eq!(calls, 3);

        let mut calls = 0;
        let err = load_retrying("p", || {
            calls += 1;
            Err(eagain())
        })
        .unwrap_err();
        assert_eq!(calls, 5, "gives up after five attempts");
        assert!(matches!(
            err,
            DatapathError::ProgramLoad { program: "p", .. }
        ));

        let mut calls = 0;
        let _ = load_retrying("p", || {
            calls += 1;
            Err(ProgramError::LoadError {
                io_error: io::Error::from_raw_os_error(libc::EACCES),
                verifier_log: aya_obj::VerifierLog::new(String::new()),
            })
        });
        assert_eq!(calls, 1, "a verifier rejection is final");
    }
}
