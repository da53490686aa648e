use crate::sys;
use std::ffi::CStr;

/// Everything that can go wrong talking to DPDK. Each variant names what was being done,
/// with which argument, and DPDK's own reason (`rte_strerror`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("DPDK EAL argument {arg:?} contains a NUL byte")]
    BadEalArgument { arg: String },
    #[error("DPDK EAL init with arguments {args:?} failed: {reason} (rte_errno {errno}); check `dpdk.eal_args` (e.g. `--no-huge -m 256` without hugepages, a unique `--file-prefix` per process)")]
    EalInit { args: Vec<String>, errno: i32, reason: String },
    #[error("DPDK EAL is already initialised in this process with arguments {running:?}; it cannot be initialised again with {wanted:?} (DPDK allows one EAL per process)")]
    EalAlreadyInitialised { running: Vec<String>, wanted: Vec<String> },
    #[error("DPDK EAL init failed earlier in this process ({first}); DPDK cannot retry it")]
    EalFailedBefore { first: String },
    #[error("DPDK mbuf pool {name:?} of {mbufs} mbufs: {reason} (rte_errno {errno}); lower `dpdk.mbufs` or give EAL more memory (`-m`)")]
    Pool { name: String, mbufs: u32, errno: i32, reason: String },
    #[error("DPDK port {spec:?}: {what}: {reason}")]
    Port { spec: String, what: String, reason: String },
    #[error("DPDK ring {name:?}: {reason}")]
    Ring { name: String, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// DPDK's description of an error number (`rte_strerror`, which knows DPDK's own codes
/// beyond errno's).
pub fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated
    // string, valid until the next call on this thread; it is copied at once.
    let s = unsafe { CStr::from_ptr(sys::rte_strerror(errno)) };
    s.to_string_lossy().into_owned()
}

/// The calling thread's `rte_errno`.
pub fn errno() -> i32 {
    // SAFETY: reads a thread-local integer.
    unsafe { sys::vipr_rte_errno() }
}

/// `rte_errno` with its description.
pub fn last_error() -> (i32, String) {
    let e = errno();
    (e, strerror(e))
}

/// A negative DPDK return value (`-errno`) as a description.
pub fn describe(ret: i32) -> String {
    format!("{} ({ret})", strerror(-ret))
}
