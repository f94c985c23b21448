//! Logging set-up: native journald under systemd, readable text on a terminal, JSON on demand.
//!
//! Journald is chosen only when `JOURNAL_STREAM` names the stream stderr really is (as
//! systemd documents), so a daemon started from a shell inside a unit's session still logs text.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// journald when stderr is the journal, else text.
    Auto,
    Text,
    Json,
    Journald,
}

/// Is stderr the journal stream systemd set up for us?
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// Installs the global subscriber. `level` is `[server] log_level`; `RUST_LOG` wins when set.
pub fn init(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.is_empty() => {
            EnvFilter::try_new(&s).map_err(|e| anyhow::anyhow!("RUST_LOG={s:?}: {e}"))?
        }
        // Library chatter (netlink, hyper) at warn; our own code at the configured level.
        _ => EnvFilter::new(format!("warn,athena_dhcpd={level}")),
    };
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    };
    let layer = match format {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(l) => l
                .with_syslog_identifier("athena-dhcpd".to_string())
                .with_field_prefix(None)
                .boxed(),
            Err(e) => {
                eprintln!("athena-dhcpd: journald unavailable ({e}), logging text to stderr");
                text_layer()
            }
        },
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        _ => text_layer(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init()
        .map_err(|e| anyhow::anyhow!("logging already initialised: {e}"))
}

fn text_layer<S>() -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    // Colours only for a person at a terminal: escape codes in a file or a pipe are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .boxed()
}
