//! The `vipr` command.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use vipr::{agent, demo, probe, simulate};

const EXAMPLES: &str = "\
Examples:
  sudo vipr demo
      Build the Kubernetes tutorial's Service in network namespaces and watch vipr spread it.
  sudo vipr run --config config/examples/tutorial.yaml
      Attach to the config's interfaces and serve its VIPs; SIGHUP or editing the file reloads.
  sudo vipr status --instance tutorial
      VIPs, backends, counters and conntrack occupancy from the pinned maps.
  sudo vipr stop --instance tutorial
      Detach and unpin.
  vipr validate config/examples/tutorial.yaml
      Check a config; every error is printed as file:line:column.
  vipr simulate -c config/examples/tutorial.yaml --flows 1000
      Send 1000 synthetic flows through the packet path and show where they land.
  vipr trace -c config/examples/tutorial.yaml 198.51.100.7:40000 192.0.2.10:8088 tcp
      Show which backend one flow gets, and why.";

#[derive(Parser)]
#[command(name = "vipr", version, about = "vipr: an L4 load balancer for Kubernetes Services (XDP / AF_XDP / DPDK)", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
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
    },
    /// Detach an instance's XDP program and remove its pinned maps (ends its agent first).
    #[command(after_help = "Example:\n  sudo vipr stop --instance tutorial")]
    Stop {
        #[command(flatten)]
        which: InstanceArg,
    },
    /// Show VIPs, backends, ring sizes, counters and conntrack occupancy of a running instance.
    #[command(after_help = "Example:\n  sudo vipr status --instance tutorial --json")]
    Status {
        #[command(flatten)]
        which: InstanceArg,
        #[arg(long)]
        json: bool,
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
    /// Show which backend a new flow gets, and why.
    #[command(
        after_help = "Example:\n  vipr trace -c config/examples/tutorial.yaml 198.51.100.7:40000 192.0.2.10:8088 tcp"
    )]
    Trace {
        #[arg(short, long)]
        config: PathBuf,
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

fn load(path: &std::path::Path) -> Result<vipr_config::Config> {
    match vipr_config::load(path) {
        Ok(c) => Ok(c),
        Err(diags) => bail!("{} is not a valid config:\n{diags}", path.display()),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vipr: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
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
        Cmd::Trace { config, src, dst, proto, json } => {
            let t = simulate::trace(&load(&config)?, src, dst, proto.number())?;
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
        Cmd::Run { config, manifests, netns } => {
            agent::run(&config, agent::Sources { manifests }, netns.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stop { which } => {
            agent::stop(&which.name()?)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { which, json } => {
            let s = agent::status(&which.name()?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                agent::print_status(&s);
            }
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
