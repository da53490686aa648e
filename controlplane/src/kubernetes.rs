//! The live Kubernetes source inside `vipr run`: a thread with its own small tokio
//! runtime runs [`vipr_k8s::live::run`] and hands each new translation to the agent's
//! loop, which stays synchronous (it owns the dataplane and must not block on the API).
//!
//! Contract: the agent gets an [`Update`] per change of the translation: the VIPs
//! upserted and removed (the first update of a connection carries them all and says so),
//! and the instant of the earliest watch event behind it, so event-to-programmed latency
//! can be measured. While the API server is away nothing arrives and the dataplane stays
//! as programmed. If the server cannot be reached at start, the thread keeps retrying.

use anyhow::{bail, Context, Result};
use std::net::IpAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vipr_abi::VipKey;
use vipr_config::{KubernetesConfig, KubernetesMode, Pool};
use vipr_dataplane::tables::VipSpec;
use vipr_k8s::live::{self, LiveConfig, LiveStats};
use vipr_k8s::{LbClass, Mode, Options};

/// One change of the translation, as the dataplane wants it.
pub struct Update {
    /// The source (re)connected: `upserts` are all its VIPs, and VIPs of an earlier
    /// connection not among them are gone.
    pub initial: bool,
    pub upserts: Vec<VipSpec>,
    pub removes: Vec<VipKey>,
    /// When the earliest watch event behind this translation arrived.
    pub first_event: Instant,
    /// LoadBalancer addresses in use, per config pool (name, allocated).
    pub pool_usage: Vec<(String, usize)>,
    pub warnings: Vec<String>,
}

pub struct KubeSource {
    pub updates: mpsc::Receiver<Update>,
    pub stats: Arc<LiveStats>,
}

/// The translation options of a `kubernetes:` section; the daemonset's node name comes
/// from the config or else `$NODE_NAME` (the downward API).
pub fn options(k: &KubernetesConfig, node_env: Option<String>) -> Result<Options> {
    let mode = match k.mode {
        KubernetesMode::Daemonset => {
            let Some(node_name) = k.node_name.clone().or(node_env.filter(|n| !n.is_empty())) else {
                bail!(
                    "kubernetes mode daemonset needs this node's name: set kubernetes.node_name \
                     or the NODE_NAME environment variable (fieldRef spec.nodeName)"
                );
            };
            Mode::DaemonSet { node_name }
        }
        KubernetesMode::Edge => Mode::Edge { pod_routable: k.pod_routable },
    };
    Ok(Options {
        mode,
        class: LbClass { name: k.load_balancer_class.clone(), default: k.default_class },
        ..Options::default()
    })
}

/// Starts the source; `instance` and the host name make the Lease identity.
pub fn start(k: &KubernetesConfig, instance: &str, pools: Vec<Pool>) -> Result<KubeSource> {
    let options = options(k, std::env::var("NODE_NAME").ok())?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "vipr".into());
    let mut cfg = LiveConfig::new(options, pools.clone(), &format!("{host}-{instance}"));
    cfg.lease_namespace = k.lease_namespace.clone();
    let stats = cfg.stats.clone();
    let (tx, updates) = mpsc::channel();
    let k = k.clone();
    std::thread::Builder::new()
        .name("vipr-kubernetes".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => return tracing::error!("kubernetes source: no tokio runtime: {e}"),
            };
            runtime.block_on(serve(k, cfg, pools, tx));
        })
        .context("starting the Kubernetes source thread")?;
    Ok(KubeSource { updates, stats })
}

async fn serve(k: KubernetesConfig, cfg: LiveConfig, pools: Vec<Pool>, tx: mpsc::Sender<Update>) {
    const FIRST_PAUSE: Duration = Duration::from_millis(500);
    let mut pause = FIRST_PAUSE;
    loop {
        let started = std::time::Instant::now();
        let client =
            live::client(k.api_server.as_deref(), k.token_file.as_deref(), k.ca_file.as_deref())
                .await;
        let result = match client {
            Ok(client) => {
                let tx = tx.clone();
                let pools = pools.clone();
                live::run(client, cfg.clone(), move |changes, translator, first_event| {
                    let update = Update {
                        initial: changes.initial,
                        upserts: changes.upserts.iter().map(|v| v.spec.clone()).collect(),
                        removes: changes.removes.clone(),
                        first_event,
                        pool_usage: pool_usage(&pools, translator.load_balancer_addresses()),
                        warnings: changes.warnings.iter().map(|w| w.to_string()).collect(),
                    };
                    let _ = tx.send(update);
                })
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!("kubernetes source: {e}; retrying in {pause:?}");
        }
        // A source that ran for a while failed afresh: start the backoff over.
        if started.elapsed() > Duration::from_secs(60) {
            pause = FIRST_PAUSE;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// How many of the served LoadBalancer addresses `lb` (distinct) each pool holds.
fn pool_usage(pools: &[Pool], lb: impl Iterator<Item = IpAddr>) -> Vec<(String, usize)> {
    let mut usage: Vec<(String, usize)> = pools.iter().map(|p| (p.name.clone(), 0)).collect();
    if pools.is_empty() {
        return usage;
    }
    for ip in lb {
        if let Some(i) = pools.iter().position(|p| p.contains(ip)) {
            usage[i].1 += 1;
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemonset_takes_its_node_name_from_the_config_then_the_environment() {
        let mut k = KubernetesConfig::default();
        let from_env = options(&k, Some("node-b".into())).unwrap();
        assert_eq!(from_env.mode, Mode::DaemonSet { node_name: "node-b".into() });
        k.node_name = Some("node-a".into());
        let from_config = options(&k, Some("node-b".into())).unwrap();
        assert_eq!(from_config.mode, Mode::DaemonSet { node_name: "node-a".into() });
        k.node_name = None;
        let err = options(&k, Some(String::new())).unwrap_err().to_string();
        assert!(err.contains("NODE_NAME"), "{err}");
    }

    #[test]
    fn edge_mode_and_the_class_come_through() {
        let k = KubernetesConfig {
            mode: KubernetesMode::Edge,
            pod_routable: true,
            load_balancer_class: "example.com/lb".into(),
            default_class: false,
            ..KubernetesConfig::default()
        };
        let o = options(&k, None).unwrap();
        assert_eq!(o.mode, Mode::Edge { pod_routable: true });
        assert_eq!(o.class, LbClass { name: "example.com/lb".into(), default: false });
    }
}
