//! `/metrics` (Prometheus text format), `/healthz` and `/readyz` over plain HTTP/1.
//!
//! The counters live in the dataplane (BPF maps or the engine's atomics), so each
//! scrape reads a fresh snapshot and encodes it; only the programming-latency histogram
//! is kept by the agent between scrapes. `/readyz` answers 200 once the tables are
//! programmed from every configured source (for Kubernetes: its first full sync).

use crate::agent::Shared;
use anyhow::Result;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

type Labels = Vec<(&'static str, String)>;

/// Buckets from 100 µs to about 100 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

pub fn serve(listener: TcpListener, shared: Arc<Shared>) -> Result<()> {
    std::thread::Builder::new().name("vipr-metrics".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            if let Err(e) = answer(&shared, conn) {
                tracing::debug!("metrics request: {e:#}");
            }
        }
    })?;
    Ok(())
}

fn answer(shared: &Shared, conn: TcpStream) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(&conn);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers; nothing in them matters here.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let ready = shared.ready.load(Ordering::Relaxed);
    let (code, body, kind) = match path {
        "/metrics" => match encode_metrics(shared) {
            Ok(text) => {
                ("200 OK", text, "application/openmetrics-text; version=1.0.0; charset=utf-8")
            }
            Err(e) => ("500 Internal Server Error", format!("{e:#}\n"), "text/plain"),
        },
        "/healthz" => ("200 OK", "ok\n".to_owned(), "text/plain"),
        "/readyz" if ready => ("200 OK", "ready\n".to_owned(), "text/plain"),
        "/readyz" => (
            "503 Service Unavailable",
            "not ready: the tables are not yet programmed from every source\n".to_owned(),
            "text/plain",
        ),
        _ => ("404 Not Found", "try /metrics, /healthz or /readyz\n".to_owned(), "text/plain"),
    };
    let head = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    (&conn).write_all(head.as_bytes())?;
    (&conn).write_all(body.as_bytes())?;
    Ok(())
}

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

pub fn encode_metrics(shared: &Shared) -> Result<String> {
    let status = shared.status()?;
    let mut r = Registry::default();

    let vip_packets = counter_family(&mut r, "vipr_vip_packets", "Packets from clients to a VIP.");
    let vip_bytes = counter_family(&mut r, "vipr_vip_bytes", "Bytes from clients to a VIP.");
    let vip_flows = counter_family(&mut r, "vipr_vip_new_flows", "Flows a VIP took on.");
    let be_packets =
        counter_family(&mut r, "vipr_backend_packets", "Packets of the flows a backend serves.");
    let be_bytes =
        counter_family(&mut r, "vipr_backend_bytes", "Bytes of the flows a backend serves.");
    let be_flows = counter_family(&mut r, "vipr_backend_new_flows", "Flows sent to a backend.");
    for v in &status.vips {
        let l = vec![("vip", format!("{} {}", v.vip, v.protocol))];
        vip_packets.get_or_create(&l).inc_by(v.packets);
        vip_bytes.get_or_create(&l).inc_by(v.bytes);
        vip_flows.get_or_create(&l).inc_by(v.new_flows);
        for b in &v.backends {
            let l =
                vec![("vip", format!("{} {}", v.vip, v.protocol)), ("backend", b.backend.clone())];
            be_packets.get_or_create(&l).inc_by(b.packets);
            be_bytes.get_or_create(&l).inc_by(b.bytes);
            be_flows.get_or_create(&l).inc_by(b.new_flows);
        }
    }
    let verdicts = counter_family(&mut r, "vipr_verdicts", "Packets by what the dataplane did.");
    for (name, n) in &status.verdicts {
        verdicts.get_or_create(&vec![("verdict", name.clone())]).inc_by(*n);
    }
    let drops = counter_family(&mut r, "vipr_drops", "Dropped packets by reason.");
    for (reason, n) in &status.drops {
        drops.get_or_create(&vec![("reason", reason.clone())]).inc_by(*n);
    }
    let gauge = |r: &mut Registry, name: &str, help: &str, v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        r.register(name, help, g);
    };
    gauge(
        &mut r,
        "vipr_conntrack_flows",
        "Flows the conntrack holds.",
        status.conntrack.flows as i64,
    );
    gauge(
        &mut r,
        "vipr_conntrack_capacity",
        "Conntrack entries the table can hold (a flow takes two).",
        status.conntrack.capacity_entries as i64,
    );
    gauge(
        &mut r,
        "vipr_ready",
        "1 once the tables are programmed from every source.",
        status.ready as i64,
    );
    let info = gauge_family(&mut r, "vipr_dataplane_info", "The dataplane and how it is attached.");
    info.get_or_create(&vec![
        ("kind", status.dataplane.clone()),
        ("attach_mode", status.attach_mode.clone()),
    ])
    .set(1);
    let errors = Counter::<u64>::default();
    errors.inc_by(status.reconcile_errors);
    r.register(
        "vipr_reconcile_errors",
        "Changes that could not be programmed (bad file, compile error).",
        errors,
    );
    r.register(
        "vipr_programming_latency_seconds",
        "From a change (watch event, file edit) to the dataplane serving it.",
        shared.prom_latency.clone(),
    );
    let pool_size =
        gauge_family(&mut r, "vipr_ipam_pool_size", "Addresses a LoadBalancer pool hands out.");
    let pool_used =
        gauge_family(&mut r, "vipr_ipam_pool_allocated", "Addresses of a pool that Services use.");
    for (name, size, used) in shared.pools.lock().unwrap().iter() {
        let l = vec![("pool", name.clone())];
        pool_size.get_or_create(&l).set((*size).min(i64::MAX as u128) as i64);
        pool_used.get_or_create(&l).set(*used as i64);
    }
    let q_rx =
        counter_family(&mut r, "vipr_queue_rx_packets", "Frames a poll-mode queue received.");
    let q_tx = counter_family(&mut r, "vipr_queue_tx_packets", "Frames a poll-mode queue sent.");
    let q_drop = counter_family(&mut r, "vipr_queue_drops", "Frames a poll-mode queue dropped.");
    for q in &status.queues {
        let l = vec![("interface", q.interface.clone()), ("queue", q.queue.to_string())];
        q_rx.get_or_create(&l).inc_by(q.rx);
        q_tx.get_or_create(&l).inc_by(q.tx);
        q_drop.get_or_create(&l).inc_by(q.drops);
    }
    let mut out = String::new();
    encode(&mut out, &r)?;
    Ok(out)
}
