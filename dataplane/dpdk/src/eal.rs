//! The DPDK Environment Abstraction Layer, initialised at most once per process.
//!
//! DPDK allows one `rte_eal_init` per process, and a failed one cannot be retried. So
//! [`Eal::init`] keeps the outcome in a process-wide guard: the first call initialises,
//! a later call with the same arguments gets the same [`Eal`], a later call with other
//! arguments (or after a failure) gets an error that says so. Ports are attached after
//! init (`rte_dev_probe`), so tests in one process share one EAL and still open the
//! ports they need; tests that need another EAL run in their own process (each
//! integration test file is one).
//!
//! `rte_eal_init` pins the calling thread to the first lcore's CPUs. vipr's workers pin
//! themselves to their configured cores, and the thread that called init may be any
//! thread of the agent (or the test harness), so the caller's CPU affinity is restored
//! after init.

use crate::error::{last_error, Error, Result};
use crate::sys;
use std::cell::Cell;
use std::ffi::{c_char, c_int, CString};
use std::sync::Mutex;

/// Proof that the EAL is up; every DPDK object is made through it.
#[derive(Debug)]
pub struct Eal {
    args: Vec<String>,
}

enum State {
    Down,
    Up(&'static Eal),
    Failed(String),
}

static STATE: Mutex<State> = Mutex::new(State::Down);

impl Eal {
    /// Initialises the EAL with `args` (as `dpdk.eal_args` gives them, without a program
    /// name), or returns the EAL this process already has if it was initialised with the
    /// same arguments.
    pub fn init(args: &[String]) -> Result<&'static Eal> {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        match &*state {
            State::Up(eal) if eal.args == args => return Ok(eal),
            State::Up(eal) => {
                return Err(Error::EalAlreadyInitialised {
                    running: eal.args.clone(),
                    wanted: args.to_vec(),
                })
            }
            State::Failed(first) => return Err(Error::EalFailedBefore { first: first.clone() }),
            State::Down => {}
        }
        let mut owned = vec![CString::new("vipr").expect("no NUL")];
        for a in args {
            owned.push(
                CString::new(a.as_str()).map_err(|_| Error::BadEalArgument { arg: a.clone() })?,
            );
        }
        // EAL keeps pointers into argv (and reorders it): argv and its strings live for
        // the rest of the process, as the EAL does.
        let argv: &'static mut [*mut c_char] =
            Vec::leak(owned.into_iter().map(CString::into_raw).collect::<Vec<_>>());
        let affinity = current_affinity();
        let capture = StderrCapture::start();
        // SAFETY: argv holds argc valid NUL-terminated strings that are never freed; the
        // guard (held) makes this the only rte_eal_init of the process.
        let ret = unsafe { sys::rte_eal_init(argv.len() as c_int, argv.as_mut_ptr()) };
        let (errno, reason) = last_error();
        let said = capture.map(StderrCapture::finish).unwrap_or_default();
        if let Some(set) = affinity {
            restore_affinity(&set);
        }
        if ret < 0 {
            // What EAL printed names the argument it refused ("unrecognized option
            // '--x'", "invalid core list"...); rte_errno alone says only EINVAL.
            let mut said: Vec<&str> = said
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("EAL: Detected"))
                .collect();
            said.dedup();
            let reason = if said.is_empty() {
                reason
            } else {
                format!("{reason}; EAL said: {}", said.join(" / "))
            };
            let err = Error::EalInit { args: args.to_vec(), errno, reason };
            *state = State::Failed(err.to_string());
            return Err(err);
        }
        let eal: &'static Eal = Box::leak(Box::new(Eal { args: args.to_vec() }));
        *state = State::Up(eal);
        Ok(eal)
    }

    /// The arguments the EAL was initialised with.
    pub fn args(&self) -> &[String] {
        &self.args
    }
}

thread_local! {
    static REGISTERED: Registration = const { Registration(Cell::new(false)) };
}

/// This thread's DPDK lcore registration, undone when the thread ends.
struct Registration(Cell<bool>);

impl Drop for Registration {
    fn drop(&mut self) {
        if self.0.get() {
            // SAFETY: this thread registered itself (the flag says so) and ends now.
            unsafe { sys::rte_thread_unregister() };
        }
    }
}

/// EAL arguments for a process without DPDK hardware (tests, benchmarks, af_packet on
/// veths): no hugepages, no PCI scan, no shared files (so DPDK processes started at the
/// same time never meet), `file_prefix` naming the (empty) runtime folder, and the
/// main lcore on the first CPU this process may run on.
pub fn no_hardware_args(file_prefix: &str) -> Vec<String> {
    let first_cpu = current_affinity()
        .and_then(|set| {
            // SAFETY: CPU_ISSET reads inside a valid cpu_set_t.
            (0..libc::CPU_SETSIZE as usize).find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        })
        .unwrap_or(0);
    [
        "--no-huge",
        "--no-pci",
        "-m",
        "256",
        "--no-shconf",
        &format!("--file-prefix={file_prefix}"),
        "-l",
        &first_cpu.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The calling thread's DPDK lcore id: `Some` for EAL threads and registered threads.
pub fn current_lcore() -> Option<u32> {
    // SAFETY: reads a thread-local integer.
    let id = unsafe { sys::vipr_lcore_id() };
    (id != u32::MAX).then_some(id)
}

/// Registers the calling (non-EAL) thread with DPDK once, which gives it an lcore id and
/// with it the mempools' per-lcore caches; the registration ends with the thread. Worker
/// queues call it on their first turn. Failure (every lcore id taken) leaves the thread
/// unregistered, which costs only the cache. Call only once the EAL is up.
pub(crate) fn register_current_thread() {
    REGISTERED.with(|r| {
        if !r.0.get() {
            // SAFETY: registers the calling thread; the EAL is up (a queue exists).
            let ok = unsafe { sys::rte_thread_register() } == 0;
            r.0.set(ok);
        }
    });
}

/// Copies what is written to stderr (fd 2) while it lives into a memory file, and writes
/// it to the real stderr too when finished: EAL reports a bad argument only there.
struct StderrCapture {
    saved: libc::c_int,
    file: std::fs::File,
}

impl StderrCapture {
    fn start() -> Option<StderrCapture> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: memfd_create with a static name returns a new fd or -1; dup/dup2 on
        // fds this function owns (and fd 2, which every process has) only renumber them.
        unsafe {
            let fd = libc::memfd_create(c"vipr-eal-stderr".as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 {
                return None;
            }
            let file = std::fs::File::from_raw_fd(fd);
            let saved = libc::dup(2);
            if saved < 0 || libc::dup2(file.as_raw_fd(), 2) < 0 {
                if saved >= 0 {
                    libc::close(saved);
                }
                return None;
            }
            Some(StderrCapture { saved, file })
        }
    }

    /// Restores stderr and returns what was written meanwhile (also passed on to it).
    fn finish(mut self) -> String {
        use std::io::{Read, Seek, Write};
        // SAFETY: puts the saved stderr back on fd 2 and closes the copy.
        unsafe {
            libc::dup2(self.saved, 2);
            libc::close(self.saved);
        }
        let mut text = String::new();
        if self.file.rewind().is_ok() {
            let mut bytes = Vec::new();
            let _ = self.file.read_to_end(&mut bytes);
            let _ = std::io::stderr().write_all(&bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }
}

fn current_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

fn restore_affinity(set: &libc::cpu_set_t) {
    // SAFETY: sets the calling thread's affinity from a set read by sched_getaffinity.
    unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
    }
}
