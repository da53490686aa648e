//! vipr's control plane and command line: config and sources -> model -> compiler ->
//! programmer -> the XDP dataplane; plus the simulator, the demo and its testbed.

pub mod admin;
pub mod agent;
pub mod dataplane;
pub mod demo;
pub mod kubernetes;
pub mod metrics;
pub mod model;
pub mod neighbors;
pub mod poll;
#[cfg(feature = "dpdk")]
pub mod poll_dpdk;
pub mod probe;
pub mod simulate;
pub mod status;
pub mod testbed;

/// The agent's allocator (and so of every binary linking this crate: the benchmarks and
/// the tests run what the agent runs). A cold start of 10k Services makes and frees
/// hundreds of thousands of small objects on several threads; with glibc's malloc it
/// took about 8% longer (bench: programming, from cold). Without transparent huge pages
/// (`no_thp`), as glibc's malloc runs here: with them, zeroing 2 MiB pages at first
/// touch doubled the compile on this VM.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
