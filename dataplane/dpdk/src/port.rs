//! Ethernet ports: attached by PCI address or vdev string (`dpdk.ports`), configured with
//! one RX/TX queue pair per configured queue, started, and stopped and closed when the
//! last handle goes.

use crate::eal::Eal;
use crate::error::{describe, Error, Result};
use crate::mempool::Mempool;
use crate::ring::Ring;
use crate::sys;
use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// How to set a port up.
#[derive(Clone, Debug)]
pub struct PortOptions {
    /// RX/TX queue pairs (one per configured NIC queue, each driven by one worker).
    pub queues: u16,
    /// Descriptors per RX and per TX queue (clamped to what the device allows).
    pub descriptors: u16,
    pub promiscuous: bool,
}

impl Default for PortOptions {
    fn default() -> Self {
        PortOptions { queues: 1, descriptors: 512, promiscuous: false }
    }
}

/// One started port. Its queues ([`DpdkQueue`](crate::DpdkQueue)) hold it in an `Arc`; when the last one
/// goes, the port is stopped, closed, and detached if this process attached it.
pub struct Port {
    id: u16,
    spec: String,
    name: String,
    driver: String,
    ifindex: u32,
    mac: [u8; 6],
    queues: u16,
    /// Queue ids handed out, one bit each (at most 64 queues per port).
    taken: AtomicU64,
    started: AtomicBool,
    /// The device, if this process attached it (`rte_dev_probe`) and so detaches it.
    attached: Option<*mut sys::rte_device>,
    pub(crate) pool: Arc<Mempool>,
    /// The rings of a ring port, kept alive as long as the port.
    _rings: Vec<Arc<Ring>>,
    /// Serialises stop/close.
    lifecycle: Mutex<()>,
}

// SAFETY: the port id is an index into DPDK's global port table; the only raw pointer
// (`attached`) is used once, in Drop. Queue-level calls happen on the queue's own thread.
unsafe impl Send for Port {}
// SAFETY: as above; shared methods only read plain fields or call thread-safe
// control functions serialised by `lifecycle`.
unsafe impl Sync for Port {}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("id", &self.id)
            .field("spec", &self.spec)
            .field("driver", &self.driver)
            .field("ifindex", &self.ifindex)
            .field("queues", &self.queues)
            .finish()
    }
}

/// The ethdev name a port spec gives: what comes before the first comma, with the PCI
/// domain added to a bare `bus:device.function`.
pub fn port_name(spec: &str) -> String {
    let name = spec.split(',').next().unwrap_or("").trim();
    let b = name.as_bytes();
    // 01:00.0 -> 0000:01:00.0
    if b.len() == 7
        && b[2] == b':'
        && b[5] == b'.'
        && name.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
    {
        format!("0000:{name}")
    } else {
        name.to_string()
    }
}

/// DPDK's device hotplug and port setup are control-path calls that are not documented
/// as thread-safe; ports of several tests (or several dataplanes) of one process open
/// and close one at a time.
/// Reentrant on one thread (a port that fails to start is dropped, and closed, while
/// its opener holds the lock).
static CONTROL: Mutex<()> = Mutex::new(());

thread_local! {
    static HOLDING: Cell<bool> = const { Cell::new(false) };
}

struct Control(Option<MutexGuard<'static, ()>>);

fn control() -> Control {
    if HOLDING.with(Cell::get) {
        return Control(None);
    }
    let guard = CONTROL.lock().unwrap_or_else(|e| e.into_inner());
    HOLDING.with(|h| h.set(true));
    Control(Some(guard))
}

impl Drop for Control {
    fn drop(&mut self) {
        if self.0.is_some() {
            HOLDING.with(|h| h.set(false));
        }
    }
}

fn device_of(id: u16) -> *mut sys::rte_device {
    let mut info = sys::rte_eth_dev_info::default();
    // SAFETY: id is a valid port; info is writable.
    unsafe { sys::rte_eth_dev_info_get(id, &mut info) };
    info.device
}

fn find(name: &str) -> Option<u16> {
    let c = CString::new(name).ok()?;
    let mut id = 0u16;
    // SAFETY: c is a valid C string; id is written on success only.
    (unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) } == 0).then_some(id)
}

impl Port {
    /// Attaches (if EAL has not already, from `--vdev` or its PCI scan), configures and
    /// starts the port `spec`: a PCI address (`0000:01:00.0`, bound to vfio-pci) or a
    /// vdev string (`net_af_packet0,iface=eth1`, `net_tap0`, `net_ring0`).
    pub fn open(
        eal: &Eal,
        spec: &str,
        opts: &PortOptions,
        pool: Arc<Mempool>,
    ) -> Result<Arc<Port>> {
        let _control = control();
        let name = port_name(spec);
        let err = |what: &str, reason: String| Error::Port {
            spec: spec.into(),
            what: what.into(),
            reason,
        };
        if name.is_empty() {
            return Err(err("parsing", "empty port spec; give a PCI address (0000:01:00.0) or a vdev (net_af_packet0,iface=eth1)".into()));
        }
        let (id, attached) = match find(&name) {
            Some(id) => (id, false),
            None => {
                let c = CString::new(spec).map_err(|_| err("parsing", "NUL byte".into()))?;
                // SAFETY: c is a valid C string; the EAL is up (`eal`).
                let ret = unsafe { sys::rte_dev_probe(c.as_ptr()) };
                if ret < 0 {
                    return Err(err(
                        "attaching it (rte_dev_probe)",
                        format!("{}; a PCI address must be bound to vfio-pci (and EAL not run with --no-pci), a vdev must name a driver EAL loaded (net_af_packet, net_tap, net_ring) with valid arguments", describe(ret)),
                    ));
                }
                let id = find(&name).ok_or_else(|| {
                    err("attaching it", format!("attached, but no port is named {name:?}"))
                })?;
                (id, true)
            }
        };
        let device = attached.then(|| device_of(id));
        let port = match Port::configure(eal, id, spec, opts, pool, Vec::new()) {
            Ok(mut port) => {
                port.attached = device;
                Arc::new(port)
            }
            Err(e) => {
                if let Some(dev) = device {
                    // SAFETY: the port was attached here, never started; it is closed and
                    // detached once, so the same spec can be tried again.
                    unsafe {
                        sys::rte_eth_dev_close(id);
                        sys::rte_dev_remove(dev);
                    }
                }
                return Err(e);
            }
        };
        // A port that does not start is dropped here: closed and detached.
        port.start()?;
        Ok(port)
    }

    /// A `net_ring` port named `name` whose queue i receives from `rx[i]` and sends into
    /// `tx[i]`: frames go in and out with no kernel involved.
    pub fn from_rings(
        eal: &Eal,
        name: &str,
        rx: Vec<Arc<Ring>>,
        tx: Vec<Arc<Ring>>,
        pool: Arc<Mempool>,
    ) -> Result<Arc<Port>> {
        let _control = control();
        let err = |reason: String| Error::Port {
            spec: name.into(),
            what: "creating it from rings".into(),
            reason,
        };
        if rx.len() != tx.len() || rx.is_empty() {
            return Err(err(format!(
                "{} RX and {} TX rings; give one of each per queue",
                rx.len(),
                tx.len()
            )));
        }
        let c = CString::new(name).map_err(|_| err("NUL byte".into()))?;
        let rxp: Vec<*mut sys::rte_ring> = rx.iter().map(|r| r.as_ptr()).collect();
        let txp: Vec<*mut sys::rte_ring> = tx.iter().map(|r| r.as_ptr()).collect();
        // SAFETY: the ring pointers are valid and outlive the port (it keeps the Arcs).
        let ret = unsafe {
            sys::rte_eth_from_rings(
                c.as_ptr(),
                rxp.as_ptr(),
                rx.len() as u32,
                txp.as_ptr(),
                tx.len() as u32,
                0,
            )
        };
        if ret < 0 {
            let (errno, reason) = crate::error::last_error();
            return Err(err(format!("rte_eth_from_rings: {reason} ({errno})")));
        }
        let opts = PortOptions { queues: rx.len() as u16, ..PortOptions::default() };
        let rings = rx.into_iter().chain(tx).collect();
        let port = Arc::new(Port::configure(eal, ret as u16, name, &opts, pool, rings)?);
        port.start()?;
        Ok(port)
    }

    fn configure(
        _eal: &Eal,
        id: u16,
        spec: &str,
        opts: &PortOptions,
        pool: Arc<Mempool>,
        rings: Vec<Arc<Ring>>,
    ) -> Result<Port> {
        let err = |what: &str, reason: String| Error::Port {
            spec: spec.into(),
            what: what.into(),
            reason,
        };
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: id is a valid port; info is a writable rte_eth_dev_info.
        let ret = unsafe { sys::rte_eth_dev_info_get(id, &mut info) };
        if ret != 0 {
            return Err(err("reading its device info", describe(ret)));
        }
        let driver = if info.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: driver_name is a static C string of the driver.
            unsafe { CStr::from_ptr(info.driver_name) }.to_string_lossy().into_owned()
        };
        let max = info.max_rx_queues.min(info.max_tx_queues).min(64);
        if opts.queues == 0 || opts.queues > max {
            return Err(err(
                "configuring its queues",
                format!("{} queues configured, the device ({driver}) has at most {max}; for net_af_packet add `qpairs=N` to the vdev", opts.queues),
            ));
        }
        let conf = sys::rte_eth_conf::default();
        // SAFETY: id is a valid, stopped port; conf is a valid zeroed configuration.
        let ret = unsafe { sys::rte_eth_dev_configure(id, opts.queues, opts.queues, &conf) };
        if ret != 0 {
            return Err(err(&format!("configuring {} queue pairs", opts.queues), describe(ret)));
        }
        let (mut nrx, mut ntx) = (opts.descriptors, opts.descriptors);
        // SAFETY: id is a configured port; the counts are read and written in place.
        let ret = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut nrx, &mut ntx) };
        if ret != 0 {
            return Err(err("sizing its descriptor rings", describe(ret)));
        }
        // SAFETY: id is a valid port.
        let socket = unsafe { sys::rte_eth_dev_socket_id(id) };
        let socket = if socket < 0 { 0 } else { socket as u32 };
        for q in 0..opts.queues {
            // SAFETY: id is configured with opts.queues queues; the pool outlives the port
            // (the port holds it); a null rxconf/txconf means the driver's defaults.
            let ret = unsafe {
                sys::rte_eth_rx_queue_setup(id, q, nrx, socket, std::ptr::null(), pool.as_ptr())
            };
            if ret != 0 {
                return Err(err(
                    &format!("setting up RX queue {q} ({nrx} descriptors)"),
                    describe(ret),
                ));
            }
            // SAFETY: as above.
            let ret = unsafe { sys::rte_eth_tx_queue_setup(id, q, ntx, socket, std::ptr::null()) };
            if ret != 0 {
                return Err(err(
                    &format!("setting up TX queue {q} ({ntx} descriptors)"),
                    describe(ret),
                ));
            }
        }
        if opts.promiscuous {
            // SAFETY: id is a configured port.
            let ret = unsafe { sys::rte_eth_promiscuous_enable(id) };
            if ret != 0 {
                return Err(err("enabling promiscuous mode", describe(ret)));
            }
        }
        let mut mac = sys::rte_ether_addr::default();
        // SAFETY: id is valid; mac is writable.
        let ret = unsafe { sys::rte_eth_macaddr_get(id, &mut mac) };
        if ret != 0 {
            return Err(err("reading its MAC address", describe(ret)));
        }
        Ok(Port {
            id,
            spec: spec.into(),
            name: port_name(spec),
            driver,
            ifindex: info.if_index,
            mac: mac.addr_bytes,
            queues: opts.queues,
            taken: AtomicU64::new(0),
            started: AtomicBool::new(false),
            attached: None,
            pool,
            _rings: rings,
            lifecycle: Mutex::new(()),
        })
    }

    fn start(&self) -> Result<()> {
        let _g = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the port is configured with all its queues set up.
        let ret = unsafe { sys::rte_eth_dev_start(self.id) };
        if ret != 0 {
            return Err(Error::Port {
                spec: self.spec.clone(),
                what: "starting it".into(),
                reason: describe(ret),
            });
        }
        self.started.store(true, Ordering::Release);
        Ok(())
    }

    /// Stops the port (no more RX or TX). Idempotent; dropping the last handle also does.
    pub fn stop(&self) {
        let _g = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        if self.started.swap(false, Ordering::AcqRel) {
            // SAFETY: the port is started; stopping it frees what its queues held.
            unsafe { sys::rte_eth_dev_stop(self.id) };
        }
    }

    pub fn id(&self) -> u16 {
        self.id
    }
    pub fn spec(&self) -> &str {
        &self.spec
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The PMD's name: `net_af_packet`, `net_ring`, `net_tap`, `net_ice`...
    pub fn driver(&self) -> &str {
        &self.driver
    }
    /// The kernel interface the port is bound to (net_af_packet, net_tap), 0 if none.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }
    pub fn queues(&self) -> u16 {
        self.queues
    }
    pub fn pool(&self) -> &Arc<Mempool> {
        &self.pool
    }

    /// Claims queue `q` for one worker; each queue can be claimed once.
    pub(crate) fn claim(&self, q: u16) -> Result<()> {
        let err = |reason: String| Error::Port {
            spec: self.spec.clone(),
            what: format!("taking queue {q}"),
            reason,
        };
        if q >= self.queues {
            return Err(err(format!("the port has {} queues", self.queues)));
        }
        let bit = 1u64 << q;
        if self.taken.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            return Err(err("already taken by another worker".into()));
        }
        Ok(())
    }

    /// Gives queue `q` back (its `DpdkQueue` is gone).
    pub(crate) fn release(&self, q: u16) {
        self.taken.fetch_and(!(1u64 << q), Ordering::AcqRel);
    }

    /// Device counters: (RX packets, TX packets, RX missed, RX errors, TX errors).
    pub fn stats(&self) -> PortStats {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: the port id is valid; s is writable.
        unsafe { sys::rte_eth_stats_get(self.id, &mut s) };
        PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_no_mbuf: s.rx_nombuf,
        }
    }
}

/// What the device counted (`rte_eth_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_no_mbuf: u64,
}

impl Drop for Port {
    fn drop(&mut self) {
        let _control = control();
        self.stop();
        // SAFETY: the port is stopped and no queue uses it (they hold the Arc being
        // dropped); closing releases it, and the device is detached once, if attached here.
        unsafe {
            sys::rte_eth_dev_close(self.id);
            if let Some(dev) = self.attached {
                sys::rte_dev_remove(dev);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::port_name;

    #[test]
    fn a_port_spec_names_its_port_by_what_comes_before_the_arguments() {
        assert_eq!(port_name("net_af_packet0,iface=eth1,qpairs=2"), "net_af_packet0");
        assert_eq!(port_name("net_tap0"), "net_tap0");
        assert_eq!(port_name("0000:3b:00.1"), "0000:3b:00.1");
        assert_eq!(port_name("3b:00.1"), "0000:3b:00.1", "the PCI domain is added");
        assert_eq!(port_name(" ,x=1"), "");
    }
}
