//! Installs the shim on a node and chains it into the primary CNI config.
//!
//! Run by the DaemonSet as `tailnet-cnid install --watch` in a sidecar: on
//! every pass it resolves the CNI bin dirs the runtime reads ([`layout`]),
//! copies the shim into each, and, once all are in place and the daemon is
//! ready ([`ready`]), appends our plugin to the primary conflist. Passes
//! repeat, so a rewritten conflist (k3s rewrites its flannel conflist when
//! its agent starts) or a moved bin dir (a k3s upgrade) is followed.
//! Stopping leaves everything in place (a rolling update restarts it at
//! once); `tailnet-cnid uninstall`, run by `deploy/uninstall/`, removes the
//! entry and the binaries.

pub mod conflist;
pub mod containerd;
pub mod crio;
pub mod elf;
pub mod k3s;
pub mod layout;
pub mod ready;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tailnet_cni_proto::atomic_file::{
    atomic_replace, atomic_write, parse_temp_file_name, AtomicWriteError, FileSnapshot, Replace,
};
use tracing::{info, warn};

use self::conflist::{ChainOutcome, PluginEntry, SelectionMode};
pub use self::layout::Layout;

/// k3s' data dir unless started with `--data-dir`.
pub const K3S_DATA_DIR: &str = "/var/lib/rancher/k3s";
/// A standalone containerd's config.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// CRI-O's config; its drop-ins are in `crio.conf.d` beside it.
pub const CRIO_CONFIG: &str = "/etc/crio/crio.conf";

/// Reads, edits and conditional replaces of the conflist tried before a pass
/// gives up on a file that keeps changing under it (the next pass retries).
const CONFLIST_EDIT_ATTEMPTS: usize = 5;

/// Arguments of `install` and `uninstall`.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// The shim binary to copy; defaults to `tailnet-cni` beside this binary.
    #[arg(long)]
    pub shim: Option<PathBuf>,
    /// CNI bin dir to install into (repeatable). Default: every dir named
    /// by k3s, containerd and CRI-O, else /opt/cni/bin.
    #[arg(long = "bin-dir")]
    pub bin_dirs: Vec<PathBuf>,
    /// k3s' data dir (its `--data-dir`): its containerd config and plugins.
    #[arg(long, default_value = K3S_DATA_DIR)]
    pub k3s_data_dir: PathBuf,
    /// A standalone containerd's config, read for the CNI dirs.
    #[arg(long, default_value = CONTAINERD_CONFIG)]
    pub containerd_config: PathBuf,
    /// CRI-O's config, read (with its `crio.conf.d`) for the CNI dirs.
    #[arg(long, default_value = CRIO_CONFIG)]
    pub crio_config: PathBuf,
    /// CNI conf dir holding the primary conflist. Default: from the
    /// runtime's config, else /etc/cni/net.d.
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
    /// The daemon's health listener (its `/readyz`); when given, the plugin
    /// is chained only while the daemon answers ready.
    #[arg(long)]
    pub daemon_readyz: Option<SocketAddr>,
    /// The daemon's selection mode, written as the entry's `selection` so
    /// the shim answers pods that did not opt in without the daemon. Taken
    /// from the daemon's config (`--config`); without it the shim forwards
    /// every pod.
    #[arg(skip)]
    pub selection: Option<SelectionMode>,
}

/// Why a pass of the installer (or uninstaller) did not complete.
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
    #[error("CNI bin dir {0} is not there; mount it from the host (it is not created: the runtime would not read a dir it does not have)")]
    BinDirMissing(PathBuf),
    #[error("the runtime's CNI bin dir is the system dir {0}; pass --bin-dir with a dedicated dir the runtime reads")]
    SystemBinDir(PathBuf),
    #[error(
        "k3s is installed under {data_dir} but no CNI bin dir with host-local was found there"
    )]
    K3sBinDirNotFound { data_dir: PathBuf },
    /// Another writer changed the conflist between every read and replace.
    #[error("{path} changed while it was being edited, {attempts} times in a row")]
    ConflistKeepsChanging { path: PathBuf, attempts: usize },
    #[error(transparent)]
    NotReady(#[from] ready::NotReady),
    #[error(transparent)]
    Elf(#[from] elf::ElfError),
    /// A dynamically linked shim fails every pod on a node without its
    /// loader (k3s nodes have none): it is never installed.
    #[error("the shim asks for the program interpreter {interpreter}; install a statically linked build (scripts/build-shim.sh)")]
    ShimNeedsLoader { interpreter: String },
}

pub(crate) fn io_err(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io {
        action,
        path,
        source,
    }
}

/// `path` as seen from inside a container that mounts the host at `root`.
pub(crate) fn host_path(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix("/") {
        Ok(relative) => root.join(relative),
        Err(_) => root.join(path),
    }
}

/// The plugin entry the installer chains for `args`.
pub fn entry(args: &InstallArgs) -> PluginEntry {
    PluginEntry {
        daemon_socket: args.daemon_socket.clone(),
        if_name: args.if_name.clone(),
        mtu: args.mtu,
        selection: args.selection,
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
    apply_conflist_with(conf_dir, entry, |_| {})
}

/// [`apply_conflist`], calling `before_replace` between reading the config
/// and replacing it: where another writer's change must not be lost.
fn apply_conflist_with(
    conf_dir: &Path,
    entry: &PluginEntry,
    before_replace: impl FnMut(&Path),
) -> Result<ChainOutcome, InstallError> {
    let path = conflist::primary_config(conf_dir)
        .map_err(io_err("listing", conf_dir))?
        .ok_or_else(|| InstallError::NoPrimaryConfig(conf_dir.to_path_buf()))?;
    let mut outcome = ChainOutcome::Unchanged;
    let edited = edit_conflist(&path, before_replace, |text| {
        let (out, chained) = conflist::chain(&path, text, entry)?;
        outcome = chained;
        Ok((chained != ChainOutcome::Unchanged).then_some(out))
    })?;
    if edited {
        info!(path = %path.display(), ?outcome, "chained tailnet-cni into the primary CNI config");
    }
    Ok(outcome)
}

/// Rewrites the conflist at `path` with what `edit` makes of its text
/// (`None`: nothing to change), without losing a concurrent writer's
/// update: when the file changes between our read and our replace (k3s
/// rewrites it when its agent starts), the edit is redone on what is there
/// now. Only a rewrite between the final check and the rename can still be
/// lost, a window of microseconds (`atomic_replace` says why that is
/// acceptable). Returns whether the file was rewritten.
fn edit_conflist(
    path: &Path,
    mut before_replace: impl FnMut(&Path),
    mut edit: impl FnMut(&str) -> Result<Option<String>, InstallError>,
) -> Result<bool, InstallError> {
    for _ in 0..CONFLIST_EDIT_ATTEMPTS {
        let read = FileSnapshot::read(path).map_err(io_err("reading", path))?;
        let text = std::str::from_utf8(read.bytes()).map_err(|e| {
            io_err("reading", path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        let Some(out) = edit(text)? else {
            return Ok(false);
        };
        before_replace(path);
        match atomic_replace(path, &read, out.as_bytes(), read.permissions())? {
            Replace::Done => return Ok(true),
            Replace::TargetChanged => {
                info!(path = %path.display(), "the CNI config changed while it was edited; editing it again")
            }
        }
    }
    Err(InstallError::ConflistKeepsChanging {
        path: path.to_path_buf(),
        attempts: CONFLIST_EDIT_ATTEMPTS,
    })
}

/// One pass: resolve the dirs, put the shim in each, and chain the plugin
/// once every copy is in place and the daemon is ready.
async fn apply_once(
    args: &InstallArgs,
    source: &Path,
    entry: &PluginEntry,
) -> Result<ChainOutcome, InstallError> {
    let layout = Layout::resolve(args)?;
    layout.require_bin_dirs()?;
    install_shim(source, &layout.bin_dirs)?;
    if let Some(addr) = args.daemon_readyz {
        ready::check(addr).await?;
    }
    apply_conflist(&layout.conf_dir, entry)
}

/// Installs once, then (with `--watch`) keeps the entry in place.
pub async fn install(args: &InstallArgs) -> Result<(), InstallError> {
    let source = shim_source(args)?;
    if let Ok(layout) = Layout::resolve(args) {
        remove_leftovers(&layout);
    }
    let entry = entry(args);
    if entry.selection.is_none() {
        warn!("no daemon config (--config): the plugin entry names no selection, so every pod's ADD goes to the daemon");
    }
    if !args.watch {
        apply_once(args, &source, &entry).await?;
        return Ok(());
    }
    let mut passes = Passes::new(args);
    while passes.next().await {
        match apply_once(args, &source, &entry).await {
            Ok(ChainOutcome::Unchanged) => {}
            Ok(outcome) => info!(?outcome, "chained the plugin entry"),
            // The primary CNI may not have written its config yet.
            Err(InstallError::NoPrimaryConfig(dir)) => {
                warn!(dir = %dir.display(), "waiting for the primary CNI config")
            }
            Err(InstallError::NotReady(reason)) => {
                info!(%reason, "waiting for the daemon before chaining")
            }
            Err(error) => warn!(%error, "not chaining the plugin; will retry"),
        }
    }
    info!("installer stopping; the plugin entry stays in place");
    Ok(())
}

/// Removes the plugin entry and the shim binaries; with `--watch`, keeps
/// them removed until stopped, so a DaemonSet can run it on every node
/// (`deploy/uninstall/`). Removing what is already gone is no error.
pub async fn uninstall(args: &InstallArgs) -> Result<(), InstallError> {
    if !args.watch {
        return remove_installation(args);
    }
    let mut passes = Passes::new(args);
    while passes.next().await {
        if let Err(error) = remove_installation(args) {
            warn!(%error, "cannot remove the plugin; will retry");
        }
    }
    Ok(())
}

/// One uninstall pass over the dirs resolved now.
fn remove_installation(args: &InstallArgs) -> Result<(), InstallError> {
    let layout = Layout::resolve(args)?;
    let primary = match conflist::primary_config(&layout.conf_dir) {
        Ok(primary) => primary,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("listing", &layout.conf_dir)(e)),
    };
    if let Some(path) = primary {
        let edited = edit_conflist(&path, |_| {}, |text| Ok(conflist::unchain(&path, text)?))?;
        if edited {
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

/// The passes of `--watch`: one at once, then one every interval, until
/// SIGTERM or Ctrl-C. Polling a small file every few seconds is cheap and,
/// unlike inotify, survives the directory being replaced or recreated by
/// the primary CNI.
struct Passes {
    tick: tokio::time::Interval,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl Passes {
    fn new(args: &InstallArgs) -> Self {
        Self {
            tick: tokio::time::interval(Duration::from_secs(args.watch_interval_secs.max(1))),
            shutdown: Box::pin(shutdown_signal()),
        }
    }

    /// Waits for the next pass; `false` once asked to stop.
    async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.tick.tick() => true,
            _ = &mut self.shutdown => false,
        }
    }
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
            if let Err(error) = tokio::signal::ctrl_c().await {
                warn!(%error, "cannot watch Ctrl-C either; stopping now");
            }
        }
    }
}

#[cfg(test)]
mod tests;
