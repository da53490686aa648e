//! The `vipr` command.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use vipr::admin::{self, Request};
use vipr::status::{self, FlowStatus, Status, VipStatus};
use vipr::{agent, demo, probe, simulate};

const EXAMPLES: &str = "\
Examples:
  sudo vipr demo
      Build the Kubernetes tutorial's Service in network namespaces and watch vipr spread it.
  sudo vipr run --config config/examples/tutorial.yaml
      Attach to the config's interfaces and serve its VIPs; SIGHUP or editing the file reloads.
  sudo vipr status --instance tutorial
      VIPs, backends, counters, conntrack occupancy and programming latency, from the agent.
  sudo vipr conntrack --instance tutorial --vip 192.0.2.10:8088
      The flows the dataplane tracks, with their backends.
  sudo vipr stop --instance tutorial
      Detach and unpin.
  vipr validate config/examples/tutorial.yaml
      Check a config; every error is printed as file:line:column.
  vipr simulate -c config/examples/tutorial.yaml --flows 1000
      Send 1000 synthetic flows through the packet path and show where they land.
  sudo vipr trace --instance tutorial 198.51.100.7:40000 192.0.2.10:8088 tcp
      Show which backend one flow gets from the running tables, and why (-c FILE: from a config).";

#[derive(Parser)]
#[command(name = "vipr", version, about = "vipr: an L4 load balancer for Kubernetes Services (XDP / AF_XDP / DPDK)", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log lines as text or as JSON objects (one per line); RUST_LOG filters them.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => vipr_abi::PROTO_TCP,
            Proto::Udp => vipr_abi::PROTO_UDP,
        }
    }
}

/// Names an instance directly or through its config file.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct InstanceArg {
    /// The instance name (the config's `instance`).
    #[arg(long)]
    instance: Option<String>,
    /// The config file whose instance is meant.
    #[arg(short, long)]
    config: Option<PathBuf>,
}

impl InstanceArg {
    fn name(&self) -> Result<String> {
        match (&self.instance, &self.config) {
            (Some(i), _) => Ok(i.clone()),
            (None, Some(c)) => Ok(load(c)?.instance),
            (None, None) => bail!("name an instance with --instance or --config"),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach vipr's XDP program to the config's interfaces and serve its VIPs until
    /// stopped; reloads on SIGHUP and when the file changes.
    #[command(
        after_help = "Examples:\n  sudo vipr run --config config/examples/tutorial.yaml\n  sudo vipr run --config appliance.yaml --manifests controlplane/k8s/examples/tutorial"
    )]
    Run {
        #[arg(short, long)]
        config: PathBuf,
        /// Also serve the Services of these Kubernetes manifests (Service, EndpointSlice and
        /// Node YAML, as `kubectl get -o yaml` prints them); changes are picked up.
        #[arg(long, value_name = "DIR")]
        manifests: Option<PathBuf>,
        /// Attach inside this network namespace (from `ip netns add`); pins stay in the host's bpffs.
        #[arg(long)]
        netns: Option<String>,
        /// Serve /metrics, /healthz and /readyz here; `none` turns it off.
        #[arg(long, default_value = "0.0.0.0:9645", value_parser = parse_metrics_addr)]
        metrics_addr: MetricsAddr,
    },
    /// Detach an instance's XDP program and remove its pinned maps (ends its agent first).
    #[command(after_help = "Example:\n  sudo vipr stop --instance tutorial")]
    Stop {
        #[command(flatten)]
        which: InstanceArg,
    },
    /// Show VIPs, backends, ring sizes, counters, conntrack occupancy and programming
    /// latency of a running instance (asks its agent).
    #[command(after_help = "Example:\n  sudo vipr status --instance tutorial --json")]
    Status {
        #[command(flatten)]
        which: InstanceArg,
        #[arg(long)]
        json: bool,
        /// Read the pinned maps directly instead of asking the agent (which may be down:
        /// the XDP dataplane keeps forwarding without it).
        #[arg(long)]
        offline: bool,
    },
    /// List the VIPs of a running instance with their counters.
    #[command(after_help = "Example:\n  sudo vipr vips --instance tutorial")]
    Vips {
        #[command(flatten)]
        which: InstanceArg,
        #[arg(long)]
        json: bool,
    },
    /// List the backends of one VIP (ADDRESS:PORT) with their counters.
    #[command(after_help = "Example:\n  sudo vipr backends --instance tutorial 192.0.2.10:8088")]
    Backends {
        #[command(flatten)]
        which: InstanceArg,
        vip: SocketAddr,
        #[arg(long)]
        json: bool,
    },
    /// List the flows the dataplane tracks, optionally of one VIP.
    #[command(
        after_help = "Example:\n  sudo vipr conntrack --instance tutorial --vip 192.0.2.10:8088"
    )]
    Conntrack {
        #[command(flatten)]
        which: InstanceArg,
        #[arg(long)]
        vip: Option<SocketAddr>,
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions.
    #[command(after_help = "Example:\n  vipr completions bash > /etc/bash_completion.d/vipr")]
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Build the Kubernetes tutorial's Service in network namespaces, put vipr in front of it,
    /// and curl it from a client namespace. Removes everything on exit and on Ctrl-C.
    Demo {
        /// Leave everything up after the demo, until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
    /// A demo backend: answers HTTP and UDP on PORT with its name and the client address it sees.
    #[command(hide = true)]
    Backend {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Open connections to a VIP and count which backends answered (JSON).
    #[command(hide = true)]
    Probe {
        target: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long)]
        udp: bool,
        /// TCP: connection i comes from this source port + i (the same flows every run).
        #[arg(long)]
        source_port_base: Option<u16>,
        /// UDP: send every datagram from one socket (one flow).
        #[arg(long)]
        same_socket: bool,
        /// Fetch a stream of this many seconds instead.
        #[arg(long)]
        stream: Option<u64>,
        #[arg(long, default_value_t = 5)]
        timeout_s: u64,
    },
    /// Validate config files; print every error with file:line:column.
    #[command(
        after_help = "Example:\n  vipr validate config/examples/tutorial.yaml config/examples/full.yaml"
    )]
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Send synthetic flows through the userspace packet path and show how they spread.
    #[command(
        after_help = "Example:\n  vipr simulate -c config/examples/tutorial.yaml --flows 1000"
    )]
    Simulate {
        #[arg(short, long)]
        config: PathBuf,
        /// New flows per VIP.
        #[arg(long, default_value_t = 1000)]
        flows: usize,
        /// Client addresses to send from (VIPs of the other family are skipped).
        #[arg(long, default_value = "198.51.100.0/24")]
        clients: IpNet,
        #[arg(long)]
        json: bool,
    },
    /// Show which backend a flow gets, and why: from the running instance's tables and
    /// conntrack (--instance), or from a config file (-c) without touching anything.
    #[command(
        after_help = "Examples:\n  sudo vipr trace --instance tutorial 198.51.100.7:40000 192.0.2.10:8088 tcp\n  vipr trace -c config/examples/tutorial.yaml 198.51.100.7:40000 192.0.2.10:8088 tcp"
    )]
    Trace {
        #[command(flatten)]
        which: InstanceArg,
        src: SocketAddr,
        dst: SocketAddr,
        #[arg(value_enum, default_value = "tcp")]
        proto: Proto,
        #[arg(long)]
        json: bool,
    },
    /// Print a config with every default filled in.
    #[command(after_help = "Example:\n  vipr config config/examples/tutorial.yaml --json")]
    Config {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug)]
struct MetricsAddr(Option<SocketAddr>);

fn parse_metrics_addr(text: &str) -> Result<MetricsAddr, String> {
    if text == "none" {
        return Ok(MetricsAddr(None));
    }
    text.parse().map(|a| MetricsAddr(Some(a))).map_err(|_| {
        format!("{text:?} is not ADDRESS:PORT (such as 0.0.0.0:9645 or 127.0.0.1:9645) or none")
    })
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn print_json_or<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce(&T)) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        text(value);
    }
    Ok(())
}

fn ask<T: serde::de::DeserializeOwned>(instance: &str, req: &Request) -> Result<T> {
    Ok(serde_json::from_value(admin::request(instance, req)?)?)
}

fn load(path: &std::path::Path) -> Result<vipr_config::Config> {
    match vipr_config::load(path) {
        Ok(c) => Ok(c),
        Err(diags) => bail!("{} is not a valid config:\n{diags}", path.display()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            match format {
                // One JSON object a line, like every other log line.
                LogFormat::Json => tracing::error!("{e:#}"),
                LogFormat::Text => eprintln!("vipr: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    init_logs(cli.log_format);
    match cli.cmd {
        Cmd::Validate { files } => {
            let mut bad = 0;
            for f in &files {
                match vipr_config::load(f) {
                    Ok(cfg) => println!("{}: ok ({} VIPs)", f.display(), cfg.vips.len()),
                    Err(diags) => {
                        bad += 1;
                        eprintln!("{diags}");
                        eprintln!("{}: {} error(s)", f.display(), diags.0.len());
                    }
                }
            }
            Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Simulate { config, flows, clients, json } => {
            let reports = simulate::simulate(&load(&config)?, flows, clients)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                simulate::print_reports(&reports);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Trace { which, src, dst, proto, json } => {
            let t: simulate::Trace = match (&which.config, &which.instance) {
                (Some(config), None) => simulate::trace(&load(config)?, src, dst, proto.number())?,
                _ => ask(&which.name()?, &Request::Trace { src, dst, proto: proto.number() })?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!("flow     {}", t.flow);
                println!("vip      {}", t.vip.as_deref().unwrap_or("-"));
                println!("verdict  {}", t.verdict);
                println!("backend  {}", t.backend.as_deref().unwrap_or("-"));
                println!("why      {}", t.why);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { config, manifests, netns, metrics_addr } => {
            agent::run(agent::RunOptions {
                config,
                sources: agent::Sources { manifests },
                netns,
                metrics_addr: metrics_addr.0,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stop { which } => {
            agent::stop(&which.name()?)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { which, json, offline } => {
            let instance = which.name()?;
            let s: Status = match offline {
                true => agent::offline_status(&instance)?,
                false => ask(&instance, &Request::Status)?,
            };
            print_json_or(json, &s, status::print_status)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Vips { which, json } => {
            let vips: Vec<VipStatus> = ask(&which.name()?, &Request::Vips)?;
            print_json_or(json, &vips, |v| status::print_vips(v))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Backends { which, vip, json } => {
            let instance = which.name()?;
            let vips: Vec<VipStatus> = ask(&instance, &Request::Vips)?;
            let found: Vec<VipStatus> =
                vips.into_iter().filter(|v| v.vip == vip.to_string()).collect();
            if found.is_empty() {
                bail!("instance {instance:?} has no VIP {vip} (`vipr vips` lists them)");
            }
            print_json_or(json, &found, |v| status::print_vips(v))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Conntrack { which, vip, json } => {
            let req = Request::Conntrack { vip: vip.map(|v| v.to_string()) };
            let flows: Vec<FlowStatus> = ask(&which.name()?, &req)?;
            print_json_or(json, &flows, |f| status::print_flows(f))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "vipr", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo { keep } => {
            demo::run(keep).context("the demo failed")?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Backend { name, port } => {
            probe::backend(&name, port)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe { target, count, udp, same_socket, source_port_base, stream, timeout_s } => {
            let report = match stream {
                Some(secs) => probe::stream(target, secs),
                None => probe::probe(
                    target,
                    count,
                    udp,
                    same_socket,
                    source_port_base,
                    std::time::Duration::from_secs(timeout_s),
                ),
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config { file, json } => {
            let cfg = load(&file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&cfg)?);
            } else {
                print!("{}", serde_yaml::to_string(&cfg)?);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
