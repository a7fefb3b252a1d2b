//! `tailnet-cnid`: the node daemon and its operator commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tailnet_cni_proto::v1::{ListPodsRequest, StatusRequest};
use tailnet_cni_proto::API_VERSION;
use tailnet_cnid::config::{self, Config, LogFormat};
use tailnet_cnid::privileges::{self, Restricted};
use tailnet_cnid::status::StatusReport;

#[derive(Debug, Parser)]
#[command(name = "tailnet-cnid", version, about = "One tailnet identity per pod")]
struct Cli {
    /// Daemon configuration (TOML): `run` (the default) runs with it,
    /// `install` writes its selection mode into the plugin entry, `status`
    /// finds the socket in it; `minter` reads its own configuration here.
    #[arg(long, global = true, env = "TAILNET_CNID_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// List every pod the running daemon serves.
    Status {
        /// Daemon socket; defaults to the config's, else the built-in path.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Copy the shim into the CNI bin dir(s) and chain it into the primary
    /// conflist; with --watch keep it chained when the file is rewritten.
    Install(tailnet_cnid::install::InstallArgs),
    /// Remove the shim from the primary conflist and the bin dir(s); with
    /// --watch keep them removed until stopped.
    Uninstall(tailnet_cnid::install::InstallArgs),
    /// Run the cluster's key minter (its own config): it holds the control
    /// server's credentials and mints one key per pod for node daemons that
    /// authenticate with their service account token.
    Minter,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tailnet-cnid: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run_daemon(cli.config.as_deref()),
        Command::Status { socket, json } => {
            let socket = match (socket, cli.config) {
                (Some(socket), _) => socket,
                (None, Some(path)) => Config::load(&path)?.socket,
                (None, None) => PathBuf::from(config::DEFAULT_SOCKET),
            };
            runtime()?.block_on(print_status(socket, json))
        }
        Command::Install(mut args) => {
            init_logging(LogFormat::Text);
            if let Some(path) = &cli.config {
                args.selection = Some(Config::load(path)?.selection.into());
            }
            Ok(runtime()?.block_on(tailnet_cnid::install::install(&args))?)
        }
        Command::Uninstall(args) => {
            init_logging(LogFormat::Text);
            Ok(runtime()?.block_on(tailnet_cnid::install::uninstall(&args))?)
        }
        Command::Minter => run_minter(cli.config.as_deref()),
    }
}

fn run_minter(config: Option<&Path>) -> anyhow::Result<()> {
    let path =
        config.context("--config FILE (or TAILNET_CNID_CONFIG) is required to run the minter")?;
    let config = tailnet_cnid::minter::MinterConfig::load(path)?;
    init_logging(config.log_format);
    runtime()?.block_on(tailnet_cnid::minter::run(config))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run_daemon(config: Option<&Path>) -> anyhow::Result<()> {
    let path =
        config.context("--config FILE (or TAILNET_CNID_CONFIG) is required to run the daemon")?;
    let config = Config::load(path)?;
    // Before the async runtime starts a thread: capabilities are per
    // thread, and every later thread inherits the reduced sets.
    let restricted = privileges::restrict_to(privileges::needed(&config))?;
    init_logging(config.log_format);
    log_privileges(restricted);
    runtime()?.block_on(tailnet_cnid::daemon::run(config))
}

fn log_privileges(restricted: Restricted) {
    let kept = privileges::names(restricted.kept);
    if !restricted.missing.is_empty() {
        tracing::warn!(
            missing = ?privileges::names(restricted.missing),
            "started without capabilities the daemon needs: pods will fail to set up"
        );
    }
    if restricted.bounding_reduced {
        tracing::info!(?kept, "capabilities reduced; no_new_privs set");
    } else {
        tracing::warn!(
            ?kept,
            "no CAP_SETPCAP: the bounding set stays as it was; no_new_privs set"
        );
    }
}

async fn print_status(socket: PathBuf, json: bool) -> anyhow::Result<()> {
    let mut client = tailnet_cni_proto::uds::connect(&socket, Duration::from_secs(2))
        .await
        .with_context(|| format!("cannot reach the daemon at {}", socket.display()))?;
    let status = client
        .status(StatusRequest {
            api_version: API_VERSION,
        })
        .await
        .context("status call failed")?
        .into_inner();
    let pods = client
        .list_pods(ListPodsRequest {
            api_version: API_VERSION,
        })
        .await
        .context("pod listing failed")?
        .into_inner();
    let report = StatusReport::new(status, pods);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_table());
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("TAILNET_CNID_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
