//! Test support: run a loaded program on a crafted packet with
//! `BPF_PROG_TEST_RUN`, and read the ring buffer synchronously.
//!
//! aya 0.14 exposes `BPF_PROG_TEST_RUN` as `aya::programs::TestRun`, so no raw
//! syscall is needed. The packet goes in as `data_in` (a full Ethernet frame;
//! the kernel refuses frames shorter than 14 bytes with `EINVAL`, and 6.18
//! also a frame that is only an Ethernet header). The skb's
//! device is chosen through `ctx_in`, a `struct __sk_buff` whose only non-zero
//! field is `ifindex`: the kernel (>= 5.12) then looks the device up in the
//! *calling thread's* network namespace (`ENODEV` if it does not exist there)
//! and the program sees it as `skb->ifindex`. Without an ifindex the kernel
//! uses the loopback device (ifindex 1). Kernels that reject a context with
//! `ifindex` (`EINVAL`) get the run retried without one;
//! [`RunOutcome::ifindex_applied`] says which happened.
//!
//! The cgroup programs run the same way ([`run_cgroup`]): the kernel
//! strips the Ethernet header and hands them the skb from the network
//! header, owned by a socket it creates for the run in the *calling
//! thread's* cgroup (so `bpf_skb_cgroup_id` is the test process's cgroup)
//! and network namespace (where socket lookups go).
//!
//! Nothing here is used by the agent.

use aya::programs::{ProgramError, TestRun as _, TestRunOptions, TestRunResult};
use weir_common::{CtKey, CtValue, FlowEvent};

use crate::{Datapath, DatapathError};

/// Size of the kernel's `struct __sk_buff` (UAPI, stable since 5.16).
const SK_BUFF_CTX_LEN: usize = 192;
/// Offset of `__sk_buff.ifindex`.
const SK_BUFF_IFINDEX_OFFSET: usize = 40;

/// Errors of the test helpers.
#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    /// `obs_point` is not one of `weir_common::obs`.
    #[error("no program for observation point {0}")]
    UnknownObsPoint(u8),
    /// The kernel refused the test run (e.g. a frame of 14 bytes or less,
    /// an ifindex unknown in this network namespace).
    #[error("BPF_PROG_TEST_RUN failed")]
    Run {
        #[source]
        source: Box<ProgramError>,
    },
    /// The event reader was taken; drain it instead.
    #[error("the ring buffer was handed to an EventReader")]
    EventsTaken,
    /// Reading a map failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// What one test run returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// The program's return value (0 = pass).
    pub return_value: i32,
    /// Whether the requested ifindex reached the program (false: the
    /// kernel's default device, loopback).
    pub ifindex_applied: bool,
}

/// Runs the program of `obs_point` (`weir_common::obs`) once on `packet`.
/// With `ifindex`, the skb's device is that interface of the calling thread's
/// network namespace (see the module docs).
pub fn run(
    datapath: &Datapath,
    obs_point: u8,
    packet: &[u8],
    ifindex: Option<u32>,
) -> Result<RunOutcome, TestingError> {
    let program = datapath
        .classifier(obs_point)
        .ok_or(TestingError::UnknownObsPoint(obs_point))?;
    run_with(|opts| program.test_run(opts), packet, ifindex)
}

/// Runs the cgroup program of `obs_point` (`FROM_ENDPOINT`: the egress
/// hook, `TO_ENDPOINT`: the ingress hook) once on `packet`, a full Ethernet
/// frame as for [`run`]. Its return value is the cgroup hook's: 1 passes,
/// 0 drops.
pub fn run_cgroup(
    datapath: &Datapath,
    obs_point: u8,
    packet: &[u8],
    ifindex: Option<u32>,
) -> Result<RunOutcome, TestingError> {
    let program = datapath
        .cgroup_program(obs_point)
        .ok_or(TestingError::UnknownObsPoint(obs_point))?;
    run_with(|opts| program.test_run(opts), packet, ifindex)
}

fn run_with(
    test_run: impl Fn(TestRunOptions<'_>) -> Result<TestRunResult, ProgramError>,
    packet: &[u8],
    ifindex: Option<u32>,
) -> Result<RunOutcome, TestingError> {
    if let Some(ifindex) = ifindex {
        let mut ctx = [0u8; SK_BUFF_CTX_LEN];
        ctx[SK_BUFF_IFINDEX_OFFSET..SK_BUFF_IFINDEX_OFFSET + 4]
            .copy_from_slice(&ifindex.to_ne_bytes());
        let opts = TestRunOptions {
            data_in: Some(packet),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        };
        match test_run(opts) {
            Ok(result) => {
                return Ok(RunOutcome {
                    return_value: result.return_value as i32,
                    ifindex_applied: true,
                });
            }
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                tracing::debug!(
                    "kernel refused __sk_buff.ifindex in ctx_in; running with its default device"
                );
            }
            Err(source) => {
                return Err(TestingError::Run {
                    source: Box::new(source),
                });
            }
        }
    }
    let opts = TestRunOptions {
        data_in: Some(packet),
        ..TestRunOptions::default()
    };
    let result = test_run(opts).map_err(|source| TestingError::Run {
        source: Box::new(source),
    })?;
    Ok(RunOutcome {
        return_value: result.return_value as i32,
        ifindex_applied: false,
    })
}

/// Reads every event currently in the ring buffer, without waiting. Fails
/// after [`Datapath::take_events`].
pub fn drain_events(datapath: &mut Datapath) -> Result<Vec<FlowEvent>, TestingError> {
    datapath.drain_ring().ok_or(TestingError::EventsTaken)
}

/// Every conntrack entry, in map order.
pub fn conntrack(datapath: &Datapath) -> Result<Vec<(CtKey, CtValue)>, TestingError> {
    Ok(datapath.conntrack_dump()?)
}
