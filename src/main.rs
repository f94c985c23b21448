//! `athena-dhcpd`: the daemon and its admin commands.
//!
//! Exit codes (documented in athena-dhcpd(8)): 0 ok; 1 runtime failure; 2 bad config or
//! usage; 3 missing privilege or a socket that could not be opened.

use std::path::PathBuf;
use std::process::ExitCode;

use athena_dhcpd::config::{self, Config};
use athena_dhcpd::logging::{self, LogFormat};
use athena_dhcpd::{daemon, privileges};
use clap::{Parser, Subcommand};

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;
const EXIT_PRIVILEGE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "athena-dhcpd",
    version,
    about = "DHCPv4 server with HA failover, a floating IP and a caching DNS proxy"
)]
struct Cli {
    /// Config file.
    #[arg(long, short, global = true, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Log output: auto (journald under systemd, else text), text, json, journald.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file and print a one-screen summary.
    CheckConfig {
        /// The file to check (default: --config).
        path: Option<PathBuf>,
    },
    /// Floating IP administration.
    Vip {
        #[command(subcommand)]
        action: VipAction,
    },
}

#[derive(Subcommand)]
enum VipAction {
    /// Remove every configured VIP from this host (for systemd's ExecStopPost=).
    Release,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { path }) => {
            let path = path.unwrap_or(cli.config);
            match config::load(&path) {
                Ok(cfg) => {
                    print!("{}", summary(&cfg));
                    for w in cfg.warnings() {
                        println!("warning: {w}");
                    }
                    println!("{}: OK", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Some(Command::Vip {
            action: VipAction::Release,
        }) => {
            let cfg = match config::load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let _ = logging::init(cli.log_format, cfg.server.log_level.as_str());
            match athena_dhcpd::vip::release_configured(&cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        None => run_daemon(cli.config, cli.log_format),
    }
}

fn run_daemon(path: PathBuf, log_format: LogFormat) -> ExitCode {
    // Refuse a broken config before anything binds or logs as running.
    let cfg = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("athena-dhcpd: error: {e}");
            eprintln!("athena-dhcpd: not started; fix the config and check it with `athena-dhcpd check-config {}`", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = logging::init(log_format, cfg.server.log_level.as_str()) {
        eprintln!("athena-dhcpd: error: {e:#}");
        return ExitCode::from(EXIT_CONFIG);
    }
    for w in cfg.warnings() {
        tracing::warn!("config: {w}");
    }
    let drop = cfg.server.drop_privileges;
    let (user, group) = (cfg.server.user.clone(), cfg.server.group.clone());
    let prepared = match daemon::prepare(cfg, path) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::from(EXIT_PRIVILEGE);
        }
    };
    if drop {
        if let Err(e) = privileges::drop_to_net_admin(user.as_deref(), group.as_deref()) {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_PRIVILEGE);
        }
        tracing::debug!("capabilities dropped to CAP_NET_ADMIN");
    }
    match daemon::run(prepared) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// A one-screen view of what the config will do.
fn summary(c: &Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "node        {}", c.node_name());
    if c.ha.enabled {
        let _ = writeln!(
            s,
            "HA          {} , peer {}, listen {}, heartbeat {}, failover after {}, preempt {}",
            c.ha.role,
            c.ha.peer_address.as_deref().unwrap_or("-"),
            c.ha.listen_address,
            c.ha.heartbeat_interval,
            c.ha.failover_timeout,
            c.ha.preempt
        );
    } else {
        let _ = writeln!(s, "HA          off (standalone)");
    }
    match c.api_listen() {
        Some(a) => {
            let _ = writeln!(
                s,
                "API         http://{a} (mutations {})",
                if c.api.auth_token.is_some() {
                    "need a token"
                } else {
                    "disabled"
                }
            );
        }
        None => {
            let _ = writeln!(s, "API         off");
        }
    }
    if c.dns.enabled {
        let _ = writeln!(
            s,
            "DNS         udp {} tcp {}, forwarders [{}], domain {}, {} static records",
            c.dns.listen_udp,
            c.dns.tcp_addr(),
            c.dns.forwarders.join(", "),
            c.dns.domain.as_deref().unwrap_or("-"),
            c.dns.records.len()
        );
    } else {
        let _ = writeln!(s, "DNS         off");
    }
    let _ = writeln!(s, "leases      {}", c.server.lease_db.display());
    for sn in &c.subnets {
        let size: u64 = sn.pools.iter().map(|p| p.size()).sum();
        let t = sn.lease_times(&c.defaults);
        let _ = writeln!(
            s,
            "subnet      {} on {}: {} pool addresses, {} reservations, lease {}, dns [{}], server id {}",
            sn.network,
            sn.interface.as_deref().unwrap_or("any interface"),
            size,
            sn.reservations.len(),
            config::Dur(t.lease),
            sn.dns_servers(&c.defaults).iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
            c.vip_in_subnet(&sn.network)
                .map(|v| format!("{v} (VIP)"))
                .or(c.server.server_id.map(|i| i.to_string()))
                .unwrap_or_else(|| "interface address".into())
        );
    }
    for v in &c.hooks.vips {
        let _ = writeln!(
            s,
            "VIP         {} on {} ({} GARPs {} apart) [{}]",
            v.address, v.interface, v.garp_count, v.garp_interval, v.name
        );
    }
    for h in &c.hooks.scripts {
        let _ = writeln!(
            s,
            "script hook {} on [{}]: {}",
            h.name,
            h.events.join(", "),
            h.command
        );
    }
    for h in &c.hooks.webhooks {
        let _ = writeln!(
            s,
            "webhook     {} on [{}]: {}",
            h.name,
            h.events.join(", "),
            h.url
        );
    }
    s
}
