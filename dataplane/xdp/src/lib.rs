//! vipr's XDP dataplane, userspace side: loads the XDP program (built from
//! `dataplane/ebpf` by this crate's build script), pins its maps and links under
//! `/sys/fs/bpf/vipr/<instance>/` and adopts them when an agent restarts, and programs
//! table snapshots (`vipr_dataplane::tables::Tables`) into the maps, writing only what
//! changed.
//!
//! Nothing outside this crate sees a map name or a byte layout: [`Maps`] is the typed
//! handle on every table, [`Programmer`] the only writer of the control-plane tables.

pub mod bench;
mod loader;
mod maps;
mod programmer;
mod ring_pool;
pub mod steer;
mod sys;

pub use loader::{detach_pinned, pin_dir, AttachMode, Limits, Xdp, PIN_ROOT};
pub use maps::{ConntrackSummary, Maps};
pub use programmer::{ProgramReport, Programmer};

use std::path::PathBuf;

/// Everything that can go wrong between the agent and the kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the XDP object: {source}")]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error("the kernel refused program {program}: {source}\nverifier log:\n{log}")]
    Verifier {
        program: &'static str,
        log: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("program {program} is missing from the XDP object")]
    MissingProgram { program: &'static str },
    #[error("map {map} is missing from the XDP object")]
    MissingMap { map: &'static str },
    #[error("interface {name:?} does not exist")]
    NoSuchInterface { name: String },
    #[error("attaching to {interface} in {mode:?} mode: {source}")]
    Attach {
        interface: String,
        mode: AttachMode,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the tables need {needed} {what} entries; the {map} map holds {limit} (raise the limit in the config)")]
    TooSmall { what: &'static str, map: &'static str, needed: usize, limit: u32 },
    #[error(
        "the maps pinned at {dir} are of an older vipr's layout, which this one cannot read; \
         `vipr stop` removes them (forwarding stops until the next `vipr run`)"
    )]
    OldPins { dir: PathBuf },
    #[error("BPF_PROG_TEST_RUN: {source}")]
    TestRun {
        #[source]
        source: aya::programs::ProgramError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map { map, source }
}
