//! The benchmark programs of the XDP object (`vipr_abi::bench`): a packet generator run
//! through BPF_PROG_TEST_RUN with live frames, a per-backend sink, and a bare redirect.
//! Only the bench tool uses this.

use crate::loader::OBJECT;
use crate::{map_err, Error, Result};
use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
use aya::Ebpf;
use std::time::Duration;
use vipr_abi::bench::*;
use vipr_abi::steer::{STEER_IFACES, STEER_KEYS, STEER_XSKS};

pub struct BenchPrograms {
    ebpf: Ebpf,
}

impl BenchPrograms {
    /// Loads the object with the load balancer's maps at their smallest (they are not
    /// used here) and the three benchmark programs.
    pub fn load() -> Result<Self> {
        let mut loader = crate::loader::loader_with_small_lb_maps();
        for name in [STEER_XSKS, STEER_IFACES, STEER_KEYS] {
            loader.map_max_entries(name, 1);
        }
        let mut ebpf = loader.load(OBJECT).map_err(|source| Error::Load { source })?;
        for name in [PROG_PKTGEN, PROG_SINK, PROG_REDIRECT] {
            let prog: &mut aya::programs::Xdp = ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram { program: name })?
                .try_into()
                .map_err(|source| Error::Program { program: name, source })?;
            prog.load().map_err(|source| crate::loader::verifier_error(name, source))?;
        }
        Ok(BenchPrograms { ebpf })
    }

    fn program(&mut self, name: &'static str) -> Result<&mut aya::programs::Xdp> {
        self.ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram { program: name })?
            .try_into()
            .map_err(|source| Error::Program { program: name, source })
    }

    /// Attaches the sink (or the redirect) to `interface` of the calling thread's
    /// network namespace, natively. The attachment lasts as long as this value.
    pub fn attach(&mut self, program: &'static str, interface: &str) -> Result<XdpLinkId> {
        let prog = self.program(program)?;
        prog.attach(interface, aya::programs::XdpMode::Driver).map_err(|source| Error::Attach {
            interface: interface.to_string(),
            mode: crate::AttachMode::Native,
            source,
        })
    }

    pub fn detach(&mut self, program: &'static str, link: XdpLinkId) -> Result<()> {
        self.program(program)?.detach(link).map_err(|source| Error::Program { program, source })
    }

    /// Sets what the generator sends: `template`'s headers, with source ports drawn from
    /// `ports` (at most `PKTGEN_PORTS_LEN`) written at `sport_offset`, L4 checksum at
    /// `csum_offset`.
    pub fn set_pktgen(
        &mut self,
        template: &[u8],
        ports: &[u16],
        sport_offset: u32,
        csum_offset: u32,
    ) -> Result<()> {
        let mut bytes = [0u8; 80];
        let n = template.len().min(bytes.len());
        bytes[..n].copy_from_slice(&template[..n]);
        let mut headers = PktgenHeaders { head: [0; 64], tail: [0; 16] };
        headers.head.copy_from_slice(&bytes[..64]);
        headers.tail.copy_from_slice(&bytes[64..]);
        let mut m: Array<&mut MapData, PktgenHeaders> = Array::try_from(
            self.ebpf.map_mut(PKTGEN_HEADERS).ok_or(Error::MissingMap { map: PKTGEN_HEADERS })?,
        )
        .map_err(map_err(PKTGEN_HEADERS))?;
        m.set(0, headers, 0).map_err(map_err(PKTGEN_HEADERS))?;
        let mut table: Array<&mut MapData, u16> = Array::try_from(
            self.ebpf.map_mut(PKTGEN_PORTS).ok_or(Error::MissingMap { map: PKTGEN_PORTS })?,
        )
        .map_err(map_err(PKTGEN_PORTS))?;
        for (i, p) in ports.iter().take(PKTGEN_PORTS_LEN as usize).enumerate() {
            table.set(i as u32, p, 0).map_err(map_err(PKTGEN_PORTS))?;
        }
        let mut cfg: Array<&mut MapData, PktgenConfig> = Array::try_from(
            self.ebpf.map_mut(PKTGEN_CONFIG).ok_or(Error::MissingMap { map: PKTGEN_CONFIG })?,
        )
        .map_err(map_err(PKTGEN_CONFIG))?;
        let c = PktgenConfig {
            ports: ports.len().min(PKTGEN_PORTS_LEN as usize) as u32,
            sport_offset,
            csum_offset,
            _pad: 0,
        };
        cfg.set(0, c, 0).map_err(map_err(PKTGEN_CONFIG))
    }

    pub fn set_redirect(&mut self, to: RedirectTo) -> Result<()> {
        let mut m: Array<&mut MapData, RedirectTo> = Array::try_from(
            self.ebpf.map_mut(REDIRECT_TO).ok_or(Error::MissingMap { map: REDIRECT_TO })?,
        )
        .map_err(map_err(REDIRECT_TO))?;
        m.set(0, to, 0).map_err(map_err(REDIRECT_TO))
    }

    /// Sends `count` frames made from `template` out of interface `ingress` (of the
    /// calling thread's namespace) through BPF_PROG_TEST_RUN with live frames, in
    /// batches of `batch`. Returns the time the kernel spent.
    pub fn generate(
        &mut self,
        template: &[u8],
        ingress: u32,
        count: u32,
        batch: u32,
    ) -> Result<Duration> {
        let prog = self.program(PROG_PKTGEN)?;
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(template.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(template);
        opts.ctx_in = Some(&ctx);
        opts.repeat = count;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(batch);
        // A signal for this thread ends the run early with EINTR, after an unknown
        // number of frames (a child process exiting is enough): hold signals meanwhile.
        let _held = SignalsHeld::new();
        let r = prog.test_run(opts).map_err(|source| Error::TestRun { source })?;
        Ok(r.duration)
    }

    /// Packets and bytes the sinks counted, by the last byte of the backend address.
    pub fn sink_counts(&self) -> Result<Vec<(u8, SinkCount)>> {
        let m: PerCpuArray<&MapData, SinkCount> = PerCpuArray::try_from(
            self.ebpf.map(SINK_COUNTS).ok_or(Error::MissingMap { map: SINK_COUNTS })?,
        )
        .map_err(map_err(SINK_COUNTS))?;
        let mut out = Vec::new();
        for (i, v) in m.iter().enumerate() {
            let mut c = SinkCount::default();
            for cpu in v.map_err(map_err(SINK_COUNTS))?.iter() {
                c.packets += cpu.packets;
                c.bytes += cpu.bytes;
            }
            if c.packets > 0 {
                out.push((i as u8, c));
            }
        }
        Ok(out)
    }

    /// Zeroes the sink counters.
    pub fn reset_sinks(&mut self) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::Io {
            path: "/sys/devices/system/cpu/possible".into(),
            source: e,
        })?;
        let mut m: PerCpuArray<&mut MapData, SinkCount> = PerCpuArray::try_from(
            self.ebpf.map_mut(SINK_COUNTS).ok_or(Error::MissingMap { map: SINK_COUNTS })?,
        )
        .map_err(map_err(SINK_COUNTS))?;
        for i in 0..256 {
            let zero = aya::maps::PerCpuValues::try_from(vec![SinkCount::default(); cpus])
                .expect("one a CPU");
            m.set(i, zero, 0).map_err(map_err(SINK_COUNTS))?;
        }
        Ok(())
    }
}

/// Blocks every blockable signal for the calling thread until dropped; a signal that
/// arrives meanwhile is delivered then (or to another thread at once).
struct SignalsHeld(libc::sigset_t);

impl SignalsHeld {
    fn new() -> Self {
        // SAFETY: sigfillset and pthread_sigmask write only the sets we own.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            SignalsHeld(old)
        }
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}
