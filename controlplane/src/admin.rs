//! The agent's local admin API, behind `vipr status / vips / backends / conntrack /
//! trace`: a Unix socket at `/run/vipr/<instance>.sock`, mode 0600 (root only), one
//! JSON request line in, one JSON answer line out.
//!
//! Nothing is reachable from the network: the socket lives in the filesystem, and its
//! permissions are the access control.

use crate::agent::Shared;
use crate::simulate;
use crate::status;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub fn socket_path(instance: &str) -> PathBuf {
    PathBuf::from("/run/vipr").join(format!("{instance}.sock"))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Vips,
    Conntrack { vip: Option<String> },
    Trace { src: SocketAddr, dst: SocketAddr, proto: u8 },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Answer {
    Ok(Value),
    Error(String),
}

/// Removes the socket file when the agent ends.
pub struct Served(PathBuf);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the socket (root only) and answers requests on a thread of its own.
pub fn serve(shared: Arc<Shared>) -> Result<Served> {
    let path = socket_path(&shared.instance);
    std::fs::create_dir_all(path.parent().unwrap()).ok();
    // A socket left by a killed agent; the caller made sure no agent serves this instance.
    let _ = std::fs::remove_file(&path);
    // Bind under a umask that leaves no window in which others could connect.
    // SAFETY: umask only changes this process's file-creation mask; restored below.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(&path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("binding the admin socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", path.display()))?;
    std::thread::Builder::new().name("vipr-admin".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            if let Err(e) = answer(&shared, conn) {
                tracing::debug!("admin request: {e:#}");
            }
        }
    })?;
    Ok(Served(path))
}

fn answer(shared: &Shared, conn: UnixStream) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let answer = match serde_json::from_str::<Request>(&line) {
        Ok(req) => match handle(shared, req) {
            Ok(v) => Answer::Ok(v),
            Err(e) => Answer::Error(format!("{e:#}")),
        },
        Err(e) => Answer::Error(format!("bad request {:?}: {e}", line.trim())),
    };
    let mut out = serde_json::to_vec(&answer)?;
    out.push(b'\n');
    (&conn).write_all(&out)?;
    Ok(())
}

fn handle(shared: &Shared, req: Request) -> Result<Value> {
    Ok(match req {
        Request::Status => serde_json::to_value(shared.status()?)?,
        Request::Vips => serde_json::to_value(shared.status()?.vips)?,
        Request::Conntrack { vip } => {
            let dp = shared.dataplane.lock().unwrap();
            let (snapshot, flows) = (dp.snapshot()?, dp.flows()?);
            drop(dp);
            serde_json::to_value(status::flows(&snapshot, &flows, vip.as_deref(), monotonic_ns()))?
        }
        Request::Trace { src, dst, proto } => {
            let dp = shared.dataplane.lock().unwrap();
            let Some(tables) = dp.programmed() else { bail!("nothing is programmed yet") };
            let mut trace = simulate::trace_tables(tables, src, dst, proto)?;
            let key = vipr_dataplane::pipeline::flow_key(
                src.ip(),
                src.port(),
                dst.ip(),
                dst.port(),
                proto,
            );
            if let Some(f) = dp.flows().unwrap_or_default().into_iter().find(|f| f.key == key) {
                let backend = tables.backend(f.entry.backend_id).map(|b| {
                    status::endpoint(vipr_abi::ip_of(&b.addr, b.family), u16::from_be(b.port))
                });
                trace.why = format!(
                    "the flow is tracked: conntrack keeps it on {} whatever the ring says now; \
                     a new flow would go by the ring: {}",
                    backend.as_deref().unwrap_or("a removed backend"),
                    trace.why
                );
                trace.backend = backend;
                trace.tracked = true;
            }
            serde_json::to_value(trace)?
        }
    })
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sends `req` to the agent of `instance` and returns its answer.
pub fn request(instance: &str, req: &Request) -> Result<Value> {
    let path = socket_path(instance);
    let conn = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(e) => {
            use std::io::ErrorKind::*;
            match e.kind() {
                NotFound | ConnectionRefused => bail!(
                    "the agent of instance {instance:?} is not running (nothing answers on {}); \
                     start it with `vipr run`, or read what its pinned dataplane holds with \
                     `vipr status --offline`",
                    path.display()
                ),
                PermissionDenied => bail!(
                    "permission denied on {}: the admin socket is for root only (mode 0600); \
                     run the command as root",
                    path.display()
                ),
                _ => return Err(e).with_context(|| format!("connecting to {}", path.display())),
            }
        }
    };
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    (&conn).write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&conn).read_line(&mut answer)?;
    match serde_json::from_str::<Answer>(&answer)
        .with_context(|| format!("the agent answered {:?}", answer.trim()))?
    {
        Answer::Ok(v) => Ok(v),
        Answer::Error(e) => bail!("the agent of instance {instance:?} says: {e}"),
    }
}
