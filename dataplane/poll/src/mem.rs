//! `MemQueue`: an in-memory [`Queue`] for testing the engine without a NIC. Frames are
//! injected into its RX side and read back from its TX and kernel sides; it checks the
//! handle contract on every call (a handle given back twice, or one it never lent,
//! panics) and counts what the engine holds.

use crate::queue::{Pkt, Queue};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Where a buffer is: the bookkeeping that makes contract violations loud.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Free,
    Engine,
}

/// What the test side sees of a `MemQueue` running in a worker: frames to inject,
/// frames sent, frames handed to the kernel.
#[derive(Default)]
pub struct MemPort {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: Vec<Vec<u8>>,
    pub kernel: Vec<Vec<u8>>,
}

pub struct MemQueue {
    ifindex: u32,
    queue_id: u32,
    buffers: Vec<Vec<u8>>,
    owner: Vec<Owner>,
    free: Vec<u32>,
    outstanding: usize,
    /// Most frames `tx_burst` takes per call, to exercise the engine's unsent path.
    pub tx_limit: usize,
    port: Arc<Mutex<MemPort>>,
}

impl MemQueue {
    /// A queue of `buffers` buffers of `capacity` bytes; the returned port is the test's
    /// side of it.
    pub fn new(
        ifindex: u32,
        queue_id: u32,
        buffers: usize,
        capacity: usize,
    ) -> (Self, Arc<Mutex<MemPort>>) {
        let port = Arc::new(Mutex::new(MemPort::default()));
        let q = MemQueue {
            ifindex,
            queue_id,
            buffers: vec![vec![0; capacity]; buffers],
            owner: vec![Owner::Free; buffers],
            free: (0..buffers as u32).rev().collect(),
            outstanding: 0,
            tx_limit: usize::MAX,
            port: port.clone(),
        };
        (q, port)
    }

    /// Buffers not with the engine and not in use: all of them once the engine stopped.
    pub fn free_buffers(&self) -> usize {
        self.free.len()
    }

    pub fn buffers(&self) -> usize {
        self.buffers.len()
    }

    fn take_back(&mut self, pkt: &Pkt) -> usize {
        let i = pkt.raw as usize;
        assert!(i < self.owner.len(), "handle {i} was never lent by queue {}", self.ifindex);
        assert_eq!(self.owner[i], Owner::Engine, "handle {i} given back twice");
        self.owner[i] = Owner::Free;
        self.free.push(i as u32);
        self.outstanding -= 1;
        i
    }

    fn lend(&mut self, len: usize) -> Option<Pkt> {
        let i = self.free.pop()?;
        self.owner[i as usize] = Owner::Engine;
        self.outstanding += 1;
        Some(Pkt { raw: i as u64, len: len as u32 })
    }
}

impl Queue for MemQueue {
    fn ifindex(&self) -> u32 {
        self.ifindex
    }
    fn queue_id(&self) -> u32 {
        self.queue_id
    }
    fn pool_id(&self) -> Option<u64> {
        None
    }
    fn mode(&self) -> &'static str {
        "memory"
    }
    fn capacity(&self) -> usize {
        self.buffers.first().map_or(0, Vec::len)
    }

    fn rx_burst(&mut self, pkts: &mut [Pkt]) -> usize {
        let port = self.port.clone();
        let mut port = port.lock().unwrap();
        let mut n = 0;
        while n < pkts.len() {
            let Some(frame) = port.rx.front() else { break };
            let len = frame.len().min(self.capacity());
            let Some(pkt) = self.lend(len) else { break };
            let frame = port.rx.pop_front().unwrap();
            self.buffers[pkt.raw as usize][..len].copy_from_slice(&frame[..len]);
            pkts[n] = pkt;
            n += 1;
        }
        n
    }

    fn alloc(&mut self, out: &mut [Pkt]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(pkt) = self.lend(0) else { break };
            out[n] = pkt;
            n += 1;
        }
        n
    }

    fn data(&mut self, pkt: &Pkt) -> &mut [u8] {
        let i = pkt.raw as usize;
        assert_eq!(self.owner[i], Owner::Engine, "data() of handle {i} the engine does not hold");
        &mut self.buffers[i][..pkt.len as usize]
    }

    fn set_len(&mut self, pkt: &mut Pkt, len: usize) -> bool {
        if len > self.capacity() {
            return false;
        }
        pkt.len = len as u32;
        true
    }

    fn tx_burst(&mut self, pkts: &[Pkt]) -> usize {
        let n = pkts.len().min(self.tx_limit);
        for pkt in &pkts[..n] {
            let i = self.take_back(pkt);
            let frame = self.buffers[i][..pkt.len as usize].to_vec();
            self.port.lock().unwrap().tx.push(frame);
        }
        n
    }

    fn free(&mut self, pkts: &[Pkt]) {
        for pkt in pkts {
            self.take_back(pkt);
        }
    }

    fn to_kernel(&mut self, pkts: &[Pkt]) -> usize {
        for pkt in pkts {
            let i = self.take_back(pkt);
            let frame = self.buffers[i][..pkt.len as usize].to_vec();
            self.port.lock().unwrap().kernel.push(frame);
        }
        pkts.len()
    }

    fn maintain(&mut self) {}

    fn outstanding(&self) -> usize {
        self.outstanding
    }
}
