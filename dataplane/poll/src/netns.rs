//! Running code inside a named network namespace (`ip netns add NAME`), for tests and
//! tools: the AF_XDP sockets, raw sockets and worker threads of an engine started there
//! live in that namespace, whatever thread uses them later.

use anyhow::{Context, Result};
use std::os::fd::AsRawFd;

/// Runs `f` on a new thread that has joined network namespace `name`; threads and
/// processes `f` starts inherit the namespace, the caller's thread keeps its own.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/run/netns/{name}");
    let ns =
        std::fs::File::open(&path).with_context(|| format!("opening network namespace {path}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) with an fd we hold; a network namespace switch applies to
            // the calling thread only, and this thread ends with `f`.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("joining network namespace {name} (setns)"));
            }
            Ok(f())
        })
        .join()
        .expect("the thread in the namespace panicked")
    })
}
