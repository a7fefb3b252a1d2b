//! Installs the shim on a node and chains it into the primary CNI config.
//!
//! Run by the DaemonSet as `tailnet-cnid install --watch` in a sidecar: it
//! copies the shim into every CNI bin dir the runtime may use, appends our
//! plugin to the primary conflist, and re-applies both whenever the file is
//! rewritten (k3s rewrites its flannel conflist when its agent starts).
//! `tailnet-cnid uninstall` removes the entry and the binaries again.

pub mod conflist;
pub mod containerd;
pub mod elf;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tailnet_cni_proto::atomic_file::{atomic_write, parse_temp_file_name, AtomicWriteError};
use tracing::{info, warn};

use self::conflist::{ChainOutcome, PluginEntry};

/// Where k3s keeps its containerd config (read for the CNI dirs).
pub const K3S_CONTAINERD_CONFIG: &str = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml";
/// CNI bin dirs used when no containerd config names one: k3s' newer and
/// older locations, and the upstream default.
pub const FALLBACK_BIN_DIRS: [&str; 3] = ["/var/lib/rancher/k3s/data/cni", "/bin", "/opt/cni/bin"];

#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// The shim binary to copy; defaults to `tailnet-cni` beside this binary.
    #[arg(long)]
    pub shim: Option<PathBuf>,
    /// CNI bin dir to install into (repeatable). Default: those named by the
    /// containerd config, else k3s' and upstream's usual dirs that exist.
    #[arg(long = "bin-dir")]
    pub bin_dirs: Vec<PathBuf>,
    /// containerd config to read the CNI bin and conf dirs from.
    #[arg(long, default_value = K3S_CONTAINERD_CONFIG)]
    pub containerd_config: PathBuf,
    /// CNI conf dir holding the primary conflist. Default: from the
    /// containerd config, else /etc/cni/net.d.
    #[arg(long)]
    pub conf_dir: Option<PathBuf>,
    /// `daemonSocket` written into the plugin entry.
    #[arg(long, default_value = crate::config::DEFAULT_SOCKET)]
    pub daemon_socket: PathBuf,
    /// `ifName` written into the plugin entry.
    #[arg(long, default_value = "ts0")]
    pub if_name: String,
    /// `mtu` written into the plugin entry.
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Keep running and re-apply whenever the conflist loses our entry.
    #[arg(long)]
    pub watch: bool,
    /// Where the host's filesystem is mounted when running in a container
    /// (e.g. /host): every host path above is looked up below it.
    #[arg(long, default_value = "/")]
    pub host_root: PathBuf,
    /// How often the watcher looks at the conflist.
    #[arg(long, default_value_t = 2)]
    pub watch_interval_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] AtomicWriteError),
    #[error(transparent)]
    Conflist(#[from] conflist::ConflistError),
    #[error("no CNI network config in {0} yet: is the primary CNI installed?")]
    NoPrimaryConfig(PathBuf),
    #[error("no CNI bin dir found; pass --bin-dir")]
    NoBinDir,
    #[error(transparent)]
    Elf(#[from] elf::ElfError),
    /// A dynamically linked shim fails every pod on a node without its
    /// loader (k3s nodes have none): it is never installed.
    #[error("the shim asks for the program interpreter {interpreter}; install a statically linked build (scripts/build-shim.sh)")]
    ShimNeedsLoader { interpreter: String },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io {
        action,
        path,
        source,
    }
}

/// The dirs the runtime reads, resolved from the arguments and the
/// containerd config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub bin_dirs: Vec<PathBuf>,
    pub conf_dir: PathBuf,
}

impl Layout {
    pub fn resolve(args: &InstallArgs) -> Result<Self, InstallError> {
        let host = |p: &Path| host_path(&args.host_root, p);
        let containerd_config = host(&args.containerd_config);
        let from_containerd = match std::fs::read_to_string(&containerd_config) {
            Ok(text) => containerd::cni_dirs(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => containerd::CniDirs::default(),
            Err(e) => return Err(io_err("reading", &containerd_config)(e)),
        };
        let bin_dirs = if !args.bin_dirs.is_empty() {
            args.bin_dirs.clone()
        } else if !from_containerd.bin_dirs.is_empty() {
            from_containerd.bin_dirs
        } else {
            FALLBACK_BIN_DIRS
                .iter()
                .map(PathBuf::from)
                .filter(|d| host(d).is_dir())
                .collect()
        };
        let bin_dirs: Vec<PathBuf> = bin_dirs.iter().map(|d| host(d)).collect();
        if bin_dirs.is_empty() {
            return Err(InstallError::NoBinDir);
        }
        let conf_dir = args
            .conf_dir
            .clone()
            .or(from_containerd.conf_dir)
            .unwrap_or_else(|| PathBuf::from("/etc/cni/net.d"));
        let conf_dir = host(&conf_dir);
        Ok(Self { bin_dirs, conf_dir })
    }
}

/// `path` as seen from inside a container that mounts the host at `root`.
fn host_path(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix("/") {
        Ok(relative) => root.join(relative),
        Err(_) => root.join(path),
    }
}

fn entry(args: &InstallArgs) -> PluginEntry {
    PluginEntry {
        daemon_socket: args.daemon_socket.clone(),
        if_name: args.if_name.clone(),
        mtu: args.mtu,
    }
}

fn shim_source(args: &InstallArgs) -> Result<PathBuf, InstallError> {
    if let Some(shim) = &args.shim {
        return Ok(shim.clone());
    }
    let exe = std::env::current_exe().map_err(io_err("locating", Path::new("/proc/self/exe")))?;
    Ok(exe.with_file_name(conflist::PLUGIN_TYPE))
}

/// Removes temporary files that an earlier installer left beside `target`
/// when it died between creating and renaming them. Returns how many. Only
/// called before this process writes anything: every such file is stale,
/// whatever pid it names (in a container, each run may be pid 1).
fn remove_stale_temp_files(target: &Path) -> Result<usize, InstallError> {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Ok(0);
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("listing", dir)(e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let ours = parse_temp_file_name(&file_name).is_some_and(|temp| temp.target == name);
        if !ours {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &entry.path())(e)),
        }
    }
    Ok(removed)
}

/// Removes what an interrupted earlier run left beside the files we write.
/// A leftover is only clutter (CNI loaders skip it), so failing to remove
/// one is reported, not fatal.
fn remove_leftovers(layout: &Layout) {
    let conflist = conflist::primary_config(&layout.conf_dir).ok().flatten();
    let shims = layout
        .bin_dirs
        .iter()
        .map(|dir| dir.join(conflist::PLUGIN_TYPE));
    for target in shims.chain(conflist) {
        match remove_stale_temp_files(&target) {
            Ok(0) => {}
            Ok(removed) => {
                info!(target = %target.display(), removed, "removed leftover temporary files")
            }
            Err(error) => warn!(%error, "cannot remove leftover temporary files"),
        }
    }
}

/// Copies the shim into every bin dir (skipping identical copies).
pub fn install_shim(source: &Path, bin_dirs: &[PathBuf]) -> Result<(), InstallError> {
    let bytes = std::fs::read(source).map_err(io_err("reading shim", source))?;
    if let Some(interpreter) = elf::interpreter(source, &bytes)? {
        return Err(InstallError::ShimNeedsLoader { interpreter });
    }
    for dir in bin_dirs {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let target = dir.join(conflist::PLUGIN_TYPE);
        if std::fs::read(&target).ok().as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        atomic_write(&target, &bytes, 0o755)?;
        info!(target = %target.display(), "installed shim");
    }
    Ok(())
}

/// Chains our plugin into the primary config once. Returns what it did.
pub fn apply_conflist(conf_dir: &Path, entry: &PluginEntry) -> Result<ChainOutcome, InstallError> {
    let path = conflist::primary_config(conf_dir)
        .map_err(io_err("listing", conf_dir))?
        .ok_or_else(|| InstallError::NoPrimaryConfig(conf_dir.to_path_buf()))?;
    let text = std::fs::read_to_string(&path).map_err(io_err("reading", &path))?;
    let (out, outcome) = conflist::chain(&path, &text, entry)?;
    if outcome != ChainOutcome::Unchanged {
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o644);
        atomic_write(&path, out.as_bytes(), mode)?;
        info!(path = %path.display(), ?outcome, "chained tailnet-cni into the primary CNI config");
    }
    Ok(outcome)
}

/// Installs once, then (with `--watch`) keeps the entry in place.
pub async fn install(args: &InstallArgs) -> Result<(), InstallError> {
    let layout = Layout::resolve(args)?;
    let source = shim_source(args)?;
    remove_leftovers(&layout);
    install_shim(&source, &layout.bin_dirs)?;
    let entry = entry(args);
    if !args.watch {
        apply_conflist(&layout.conf_dir, &entry)?;
        return Ok(());
    }
    // Polling a small file every few seconds is cheap and, unlike inotify,
    // survives the directory being replaced or recreated by the primary CNI.
    let mut tick = tokio::time::interval(Duration::from_secs(args.watch_interval_secs.max(1)));
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut shutdown => {
                info!("installer stopping; the plugin entry stays in place");
                return Ok(());
            }
        }
        match apply_conflist(&layout.conf_dir, &entry) {
            Ok(ChainOutcome::Unchanged) => {}
            Ok(outcome) => info!(
                ?outcome,
                "re-applied the plugin entry after the config changed"
            ),
            // The primary CNI may not have written its config yet.
            Err(InstallError::NoPrimaryConfig(dir)) => {
                warn!(dir = %dir.display(), "waiting for the primary CNI config")
            }
            Err(error) => warn!(%error, "cannot chain the plugin; will retry"),
        }
        if let Err(error) = install_shim(&source, &layout.bin_dirs) {
            warn!(%error, "cannot refresh the shim binary; will retry");
        }
    }
}

/// Removes the plugin entry and the shim binaries.
pub fn uninstall(args: &InstallArgs) -> Result<(), InstallError> {
    let layout = Layout::resolve(args)?;
    if let Some(path) =
        conflist::primary_config(&layout.conf_dir).map_err(io_err("listing", &layout.conf_dir))?
    {
        let text = std::fs::read_to_string(&path).map_err(io_err("reading", &path))?;
        if let Some(out) = conflist::unchain(&path, &text)? {
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0o644);
            atomic_write(&path, out.as_bytes(), mode)?;
            info!(path = %path.display(), "removed tailnet-cni from the primary CNI config");
        }
    }
    for dir in &layout.bin_dirs {
        let target = dir.join(conflist::PLUGIN_TYPE);
        match std::fs::remove_file(&target) {
            Ok(()) => info!(target = %target.display(), "removed shim"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &target)(e)),
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests;
