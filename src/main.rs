//! `athena-dhcpd`: the daemon and its admin commands.
//!
//! Exit codes (documented in athena-dhcpd(8)): 0 ok; 1 runtime failure; 2 bad config or
//! usage; 3 missing privilege or a socket that could not be opened.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use athena_dhcpd::cli;
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
    ///
    /// With --peer, also compares the file with what the running peer serves (the keys both
    /// nodes of a pair must agree on) and prints each difference with both values: exit 0
    /// the same, 1 different, 2 invalid.
    CheckConfig {
        /// The file to check (default: --config).
        path: Option<PathBuf>,
        /// The running peer's API, `HOST:PORT` or a URL (e.g. 10.0.0.2:8067).
        #[arg(long, value_name = "HOST:PORT")]
        peer: Option<String>,
        /// Bearer token for the peer (default: the file's [api] read_token, else auth_token).
        #[arg(long, requires = "peer")]
        token: Option<String>,
        /// CA certificate(s) (PEM) to trust for an https:// peer API.
        #[arg(long, value_name = "PATH", requires = "peer")]
        ca_file: Option<PathBuf>,
    },
    /// Floating IP administration.
    Vip {
        #[command(subcommand)]
        action: VipAction,
    },
    /// One screen on the HA pair: nodes, VIPs, pools, DNS rate, latest HA transitions.
    ///
    /// Read from the running daemons' API: both nodes' state, epoch and last heartbeat, who
    /// holds each VIP, each pool's use, DNS queries per second and cache hit rate (sampled
    /// for a second) and the pair's latest 10 HA transitions with their reasons.
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the report as JSON instead of the screen.
        #[arg(long)]
        json: bool,
    },
    /// The node's leases as a table, sorted by address.
    Leases {
        #[command(flatten)]
        api: ApiArgs,
        /// Only this client MAC (aa:bb:cc:dd:ee:ff or with dashes).
        #[arg(long)]
        mac: Option<String>,
        /// Only this address.
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        /// Only this subnet, as configured (10.0.0.0/24).
        #[arg(long)]
        subnet: Option<ipnet::Ipv4Net>,
    },
}

/// Where the admin commands find the daemon.
#[derive(clap::Args)]
struct ApiArgs {
    /// The node's API, e.g. http://10.0.0.1:8067 (default: the config's API address, on
    /// loopback when it listens on every address).
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// Bearer token (default: the config's [api] read_token, else auth_token). Needed only
    /// from another host: loopback reads without one.
    #[arg(long)]
    token: Option<String>,
    /// CA certificate(s) (PEM) to trust for an https:// API.
    #[arg(long, value_name = "PATH")]
    ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum VipAction {
    /// Remove every configured VIP from this host (for systemd's ExecStopPost=).
    Release,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig {
            path,
            peer,
            token,
            ca_file,
        }) => {
            let path = path.unwrap_or(cli.config);
            let cfg = match config::load(&path) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            print!("{}", summary(&cfg));
            for w in cfg.warnings() {
                println!("warning: {w}");
            }
            println!("{}: OK", path.display());
            match peer {
                None => ExitCode::SUCCESS,
                Some(peer) => check_against_peer(&cfg, &path, &peer, token, ca_file.as_deref()),
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
        Some(Command::Status { api, json }) => {
            let client = match api_client(&api, &cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let report = block_on(cli::status::gather(&client, Duration::from_secs(1)));
            match report {
                Ok(Ok(r)) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                    } else {
                        print!("{}", cli::status::render(&r, r.taken_at));
                    }
                    if r.problems.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(EXIT_RUNTIME)
                    }
                }
                Ok(Err(e)) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
                Err(code) => code,
            }
        }
        Some(Command::Leases {
            api,
            mac,
            ip,
            subnet,
        }) => {
            let client = match api_client(&api, &cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let filter = athena_dhcpd::dhcp::api::LeaseQuery {
                mac,
                ip: ip.map(|a| a.to_string()),
                subnet: subnet.map(|n| n.to_string()),
                ..Default::default()
            };
            match block_on(cli::leases::fetch(&client, &filter)) {
                Ok(Ok(leases)) => {
                    print!(
                        "{}",
                        cli::leases::render(&leases, athena_dhcpd::events::now_ms())
                    );
                    ExitCode::SUCCESS
                }
                Ok(Err(e)) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
                Err(code) => code,
            }
        }
        None => run_daemon(cli.config, cli.log_format),
    }
}

/// `check-config --peer`: the file's shared keys against the running peer's.
fn check_against_peer(
    cfg: &Config,
    path: &Path,
    peer: &str,
    token: Option<String>,
    ca_file: Option<&Path>,
) -> ExitCode {
    let base = if peer.starts_with("http://") || peer.starts_with("https://") {
        peer.to_string()
    } else {
        format!("http://{peer}")
    };
    let token = token
        .or_else(|| cfg.api.read_token.clone())
        .or_else(|| cfg.api.auth_token.clone());
    let client = match cli::client::ApiClient::new(&base, token, ca_file, Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: --peer: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match block_on(cli::agreement::fetch(&client)) {
        Ok(Ok(theirs)) => {
            let diffs = cli::agreement::compare(cfg, &theirs);
            print!(
                "{}",
                cli::agreement::render(&path.display().to_string(), peer, &diffs)
            );
            if diffs.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_RUNTIME)
            }
        }
        Ok(Err(e)) => {
            eprintln!("error: cannot read the peer's configuration: {e}");
            // Neither "the same" nor "different": the comparison did not happen.
            ExitCode::from(EXIT_CONFIG)
        }
        Err(code) => code,
    }
}

/// Runs an admin command's requests on a small runtime of its own.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T, ExitCode> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Ok(rt.block_on(f)),
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            Err(ExitCode::from(EXIT_RUNTIME))
        }
    }
}

/// The API client of an admin command: `--api`/`--token` win; otherwise the config says
/// where the API listens and which token to send. Without `--api` the config must load.
fn api_client(args: &ApiArgs, config_path: &Path) -> Result<cli::client::ApiClient, ExitCode> {
    let cfg = config::load(config_path);
    let base = match (&args.api, &cfg) {
        (Some(url), _) => url.clone(),
        (None, Ok(c)) => match c.api_listen() {
            // With [api] tls_cert the API takes plain HTTP only from loopback.
            Some(addr) if c.api.tls_cert.is_some() => {
                format!("https://{}", loopback_if_unspecified(addr))
            }
            Some(addr) => format!("http://{}", loopback_if_unspecified(addr)),
            None => {
                eprintln!(
                    "error: {}: the API is off ([api] enabled = false); nothing to ask",
                    config_path.display()
                );
                return Err(ExitCode::from(EXIT_CONFIG));
            }
        },
        (None, Err(e)) => {
            eprintln!("error: {e}");
            eprintln!("give the node's API with --api URL, or a config that loads with --config");
            return Err(ExitCode::from(EXIT_CONFIG));
        }
    };
    let token = args.token.clone().or_else(|| {
        let c = cfg.as_ref().ok()?;
        c.api
            .read_token
            .clone()
            .or_else(|| c.api.auth_token.clone())
    });
    // A self-signed API certificate is its own CA: trust the config's by default.
    let config_cert = cfg.as_ref().ok().and_then(|c| c.api.tls_cert.clone());
    let ca_file = args
        .ca_file
        .clone()
        .or(config_cert.filter(|_| base.starts_with("https://")));
    cli::client::ApiClient::new(&base, token, ca_file.as_deref(), Duration::from_secs(5)).map_err(
        |e| {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        },
    )
}

/// The API on every address is reached on loopback, where no token is needed.
fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
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
