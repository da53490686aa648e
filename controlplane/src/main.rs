//! The `vipr` command.

mod model;
mod simulate;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

const EXAMPLES: &str = "\
Examples:
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

#[derive(Subcommand)]
enum Cmd {
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
