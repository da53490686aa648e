//! Loading, pinning, adopting and attaching the XDP program.
//!
//! With a pin directory, every map is pinned there by name and every attachment is a
//! bpf_link pinned under `links/<interface>`. A restarted agent loads the object with the
//! same pin paths, so aya opens the pinned maps instead of creating new ones (the
//! conntrack and the counters survive), and swaps its freshly loaded program into the
//! pinned links with `BPF_LINK_UPDATE`: traffic never stops flowing through the old
//! program while the new one loads.

use crate::{Error, Maps, Result};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{TestRun, TestRunOptions, XdpMode};
use aya::{Ebpf, EbpfLoader};
use std::path::{Path, PathBuf};
use std::time::Duration;
use vipr_abi::maps as names;
use vipr_abi::steer;

/// The XDP object, built by build.rs from dataplane/ebpf.
pub(crate) static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("VIPR_EBPF_OBJECT"));

/// Root of every instance's pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/vipr";

/// The pin directory of an instance.
/// A loader for the object's other programs (steering, benchmarks): the load
/// balancer's maps, which they do not use, at their smallest.
pub(crate) fn loader_with_small_lb_maps() -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    for name in [
        names::VIPS,
        names::VIP_ADDRS,
        names::RINGS,
        names::VIP_STATS,
        names::BACKENDS,
        names::BACKEND_STATS,
        names::SOURCE_RANGES,
        names::NEXT_HOPS,
        names::AFFINITY,
    ] {
        loader.map_max_entries(name, 1);
    }
    // An LRU hash needs room for one entry on each CPU list.
    loader.map_max_entries(names::CONNTRACK, 2);
    loader
}

pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(instance)
}

/// Sizes of the maps (entries). Larger tables cost kernel memory up front.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub vips: u32,
    pub backends: u32,
    pub conntrack_flows: u32,
    pub source_ranges: u32,
    pub next_hops: u32,
    /// Ring slots of the ring pool made with the maps (4 bytes each; it grows when full,
    /// at the cost of a copy and an RCU grace period).
    pub ring_slots: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            vips: vipr_abi::MAX_VIPS,
            backends: 1 << 18,
            conntrack_flows: names::DEFAULT_CONNTRACK_FLOWS,
            source_ranges: names::MAX_SOURCE_RANGES,
            next_hops: names::MAX_NEXT_HOPS,
            // 4 MiB: some 800 VIPs of 10 backends; a larger pool comes when needed.
            ring_slots: 1 << 20,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver: the fast path, and what veth supports.
    Native,
    /// In the kernel's generic receive path: any interface, slower.
    Generic,
}

impl AttachMode {
    pub(crate) fn xdp_mode(self) -> XdpMode {
        match self {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        }
    }
}

/// A loaded XDP program with its maps.
pub struct Xdp {
    ebpf: Ebpf,
    pub maps: Maps,
    pub limits: Limits,
    pin_dir: Option<PathBuf>,
}

impl Xdp {
    /// Loads the program. With `pin_dir`, maps pinned there are adopted and new ones are
    /// pinned there.
    pub fn load(limits: Limits, pin_dir: Option<&Path>) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::VIPS, limits.vips)
            .map_max_entries(names::VIP_ADDRS, limits.vips)
            .map_max_entries(names::RINGS, 1)
            .map_max_entries(names::VIP_STATS, limits.vips)
            .map_max_entries(names::BACKENDS, limits.backends)
            .map_max_entries(names::BACKEND_STATS, limits.backends)
            .map_max_entries(names::CONNTRACK, limits.conntrack_flows.saturating_mul(2).max(2))
            .map_max_entries(names::AFFINITY, limits.conntrack_flows.max(1))
            .map_max_entries(names::SOURCE_RANGES, limits.source_ranges)
            .map_max_entries(names::NEXT_HOPS, limits.next_hops);
        // The AF_XDP steering program's maps share the object; the load balancer does not
        // use them.
        for name in [steer::STEER_XSKS, steer::STEER_IFACES, steer::STEER_KEYS] {
            loader.map_max_entries(name, 1);
        }
        if let Some(dir) = pin_dir {
            std::fs::create_dir_all(dir.join("links"))
                .map_err(|source| Error::Io { path: dir.into(), source })?;
            for name in names::ALL {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        // Any pin left means maps that may hold something (even a half-removed set).
        let pinned_before = pin_dir.is_some_and(|d| {
            names::ALL.iter().chain([&names::RING_POOL_PIN]).any(|n| d.join(n).exists())
        });
        if let Some(dir) = pin_dir {
            check_pinned_layout(dir)?;
        }
        let mut ebpf = loader.load(OBJECT).map_err(|source| Error::Load { source })?;
        for name in [names::PROG_LB, names::PROG_PASS] {
            let prog = xdp_program(&mut ebpf, name)?;
            prog.load().map_err(|source| verifier_error(name, source))?;
        }
        let mut maps = Maps::take(&mut ebpf)?;
        maps.fresh = !pinned_before;
        maps.pool_pin = pin_dir.map(|d| d.join(names::RING_POOL_PIN));
        crate::ring_pool::install(&mut maps, limits.ring_slots)?;
        Ok(Xdp { ebpf, maps, limits, pin_dir: pin_dir.map(Path::to_path_buf) })
    }

    /// Attaches the load balancer to `interface`. With a pin directory the attachment is
    /// pinned and outlives the process; an existing pinned attachment is taken over
    /// (its program atomically replaced by this one).
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<()> {
        self.attach_program(names::PROG_LB, interface, mode)
    }

    /// Attaches the bare XDP_PASS program (the far ends of veth pairs need one for
    /// XDP_TX / XDP_REDIRECT into them to be delivered).
    pub fn attach_pass(&mut self, interface: &str, mode: AttachMode) -> Result<()> {
        self.attach_program(names::PROG_PASS, interface, mode)
    }

    fn attach_program(
        &mut self,
        name: &'static str,
        interface: &str,
        mode: AttachMode,
    ) -> Result<()> {
        let attach_err = |source| Error::Attach { interface: interface.to_string(), mode, source };
        let pin = self.pin_dir.as_ref().map(|d| d.join("links").join(interface));
        let prog = xdp_program(&mut self.ebpf, name)?;
        if let Some(pin) = pin.as_ref().filter(|p| p.exists()) {
            // Take over the pinned attachment. One whose interface is gone (its
            // namespace or device was removed) cannot be updated: forget it and attach
            // afresh below.
            let adopted = PinnedLink::from_pin(pin)
                .and_then(|pinned| XdpLink::try_from(FdLink::from(pinned)))
                .map_err(|source| Error::Link { path: pin.clone(), source })
                .and_then(|link| prog.attach_to_link(link).map_err(attach_err));
            match adopted {
                Ok(_) => return Ok(()),
                Err(e) => {
                    eprintln!("vipr: {e}; attaching afresh");
                    std::fs::remove_file(pin)
                        .map_err(|source| Error::Io { path: pin.clone(), source })?;
                }
            }
        }
        match pin {
            Some(pin) => {
                let id = prog.attach(interface, mode.xdp_mode()).map_err(attach_err)?;
                let link = prog.take_link(id).map_err(attach_err)?;
                let link = FdLink::try_from(link)
                    .map_err(|source| Error::Link { path: pin.clone(), source })?;
                // Dropping the pinned handle closes our descriptor; the pin keeps the link.
                link.pin(&pin).map_err(|source| Error::Pin { path: pin.clone(), source })?;
            }
            None => {
                prog.attach(interface, mode.xdp_mode()).map_err(attach_err)?;
            }
        }
        Ok(())
    }

    /// Runs the load balancer on one frame through `BPF_PROG_TEST_RUN`, `repeat` times,
    /// as if it arrived on `ingress` (an interface index of the caller's network
    /// namespace; 1, the loopback, always exists). Returns the XDP action and the mean
    /// time a run.
    pub fn test_run(&self, frame: &mut [u8], ingress: u32, repeat: u32) -> Result<(u32, Duration)> {
        let prog: &aya::programs::Xdp = self
            .ebpf
            .program(names::PROG_LB)
            .expect("the object has the load balancer")
            .try_into()
            .expect("it is an XDP program");
        test_run_program(prog, frame, ingress, repeat)
    }

    /// The same for the bare XDP_PASS program (the benchmark baseline).
    pub fn test_run_pass(&self, frame: &mut [u8], repeat: u32) -> Result<(u32, Duration)> {
        let prog: &aya::programs::Xdp = self
            .ebpf
            .program(names::PROG_PASS)
            .expect("the object has the pass program")
            .try_into()
            .expect("it is an XDP program");
        test_run_program(prog, frame, 1, repeat)
    }
}

fn test_run_program(
    prog: &aya::programs::Xdp,
    frame: &mut [u8],
    ingress: u32,
    repeat: u32,
) -> Result<(u32, Duration)> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex. The kernel wants data 0 and data_end the frame length.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
    let input = frame.to_vec();
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&input);
    opts.data_out = Some(frame);
    opts.ctx_in = Some(&ctx);
    opts.repeat = repeat.max(1);
    let r = prog.test_run(opts).map_err(|source| Error::TestRun { source })?;
    Ok((r.return_value, r.duration))
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::programs::Xdp> {
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram { program: name })?
        .try_into()
        .map_err(|source| Error::Program { program: name, source })
}

pub(crate) fn verifier_error(program: &'static str, source: aya::programs::ProgramError) -> Error {
    match &source {
        aya::programs::ProgramError::LoadError { verifier_log, .. } => {
            Error::Verifier { program, log: verifier_log.to_string(), source }
        }
        _ => Error::Program { program, source },
    }
}

/// Detaches and forgets an instance: unpins its links (the attachments end when no
/// process holds them any more) and its maps.
/// Refuses pins of an older map layout (rings as one inner map per VIP, a backend array
/// that cannot be mapped): the program would misread them. They must be removed, which
/// stops forwarding until the next `vipr run`.
fn check_pinned_layout(dir: &Path) -> Result<()> {
    let info = |name: &str| aya::maps::MapInfo::from_pin(dir.join(name)).ok();
    let rings_ok = info(names::RINGS).is_none_or(|i| i.max_entries() == 1);
    let backends_ok =
        info(names::BACKENDS).is_none_or(|i| i.map_flags() & names::BPF_F_MMAPABLE != 0);
    if rings_ok && backends_ok {
        return Ok(());
    }
    Err(Error::OldPins { dir: dir.into() })
}

pub fn detach_pinned(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    std::fs::remove_dir_all(dir).map_err(|source| Error::Io { path: dir.into(), source })
}
