//! `setsockopt(2)` on the bench's own sockets for the options std does not
//! offer (`SO_LINGER`, `SO_RCVTIMEO` on a listener, `SO_RCVBUFFORCE`): the
//! one place that holds the unsafe call. Owns nothing else.

use std::io;
use std::os::fd::RawFd;

/// Sets option `name` at `level` on `fd` to `value`, which must be the C
/// type the kernel expects for that option (`c_int`, `timeval`, `linger`).
pub fn setsockopt<T: Copy>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live `T` and its size; the kernel only
    // reads that many bytes.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
