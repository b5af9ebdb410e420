//! `weir-vm-broken-program`: the guest half of `cargo xtask vm-test
//! --selftest-broken`.
//!
//! It loads a tc classifier that reads a packet byte without checking it
//! against `data_end`, a mistake every kernel's verifier rejects, and
//! reports like a failing libtest binary (exit status 101, the verifier log
//! in the failure section). The xtask boots it instead of the real test
//! binaries and checks that the run fails and that the report names the
//! kernel and carries the verifier's message: a rejection of one of our own
//! programs on some kernel must surface the same way.
//!
//! It talks to the bpf(2) syscall directly rather than through aya: the
//! point is the harness (boot, failure detection, message propagation), and
//! a raw instruction array is the only way to ship a program that is broken
//! on purpose without a second eBPF build.

use std::io;

/// `BPF_PROG_LOAD` command of bpf(2).
const BPF_PROG_LOAD: libc::c_long = 5;
/// `BPF_PROG_TYPE_SCHED_CLS`: what the datapath attaches to veths.
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// Offset of `data` in `struct __sk_buff` (stable UAPI).
const SKB_DATA_OFFSET: i16 = 76;
/// Verifier log size: the rejection plus the state dump fits easily.
const LOG_SIZE: usize = 64 * 1024;

/// One `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high nibble.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The head of `union bpf_attr` for `BPF_PROG_LOAD`, up to `prog_name`;
/// the kernel accepts a shorter attribute and zero-fills the rest.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// The program: `r2 = skb->data; r0 = *(u8 *)r2; exit`. The load through
/// r2 has no `data_end` bounds check, so the verifier must refuse it
/// ("invalid access to packet").
const PROGRAM: [Insn; 3] = [
    // BPF_LDX | BPF_MEM | BPF_W: r2 = *(u32 *)(r1 + 76)
    insn(0x61, 2, 1, SKB_DATA_OFFSET, 0),
    // BPF_LDX | BPF_MEM | BPF_B: r0 = *(u8 *)(r2 + 0)
    insn(0x71, 0, 2, 0, 0),
    // BPF_JMP | BPF_EXIT
    insn(0x95, 0, 0, 0, 0),
];

/// Loads [`PROGRAM`]; `Ok` means the kernel accepted it (the self-test's
/// failure), `Err` carries the errno and the verifier log.
fn load() -> Result<(), (io::Error, String)> {
    let license = c"GPL";
    let mut log = vec![0u8; LOG_SIZE];
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"weir_broken");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: PROGRAM.len() as u32,
        insns: PROGRAM.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: LOG_SIZE as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
    };
    // SAFETY: `attr` points at the program, the license and the log buffer,
    // all of which outlive the call; the size matches the struct.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw const attr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd >= 0 {
        // SAFETY: a descriptor the kernel just returned to us.
        unsafe { libc::close(fd as libc::c_int) };
        return Ok(());
    }
    let error = io::Error::last_os_error();
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    Err((error, String::from_utf8_lossy(&log[..end]).into_owned()))
}

fn main() {
    const TEST: &str = "weir_broken_program_loads";
    println!("\nrunning 1 test");
    match load() {
        Ok(()) => {
            // The kernel took a program it must refuse: the self-test itself
            // is broken, which the xtask reports as "rejection not seen".
            println!("test {TEST} ... ok\n\ntest result: ok. 1 passed; 0 failed");
        }
        Err((error, log)) => {
            println!("test {TEST} ... FAILED\n\nfailures:\n\n---- {TEST} stdout ----");
            println!("BPF_PROG_LOAD of weir_broken (sched_cls) failed: {error}");
            println!("verifier log:\n{}", log.trim_end());
            println!("\nfailures:\n    {TEST}\n\ntest result: FAILED. 0 passed; 1 failed");
            std::process::exit(101);
        }
    }
}
