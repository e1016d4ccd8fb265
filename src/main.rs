//! The `skiff` binary: command-line parsing, wiring and signals only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use skiff_apiserver::{Server, ServerConfig};
use skiff_store::Store;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "skiff", version, about = "A Kubernetes-style orchestrator, WebAssembly first")]
struct Cli {
    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the Kubernetes API server and its store.
    Server(ServerArgs),
    /// Run a single-node cluster: the control plane on the embedded store (the node agent joins it in a
    /// later release).
    Up(UpArgs),
    /// Print the admin kubeconfig of a data directory.
    Kubeconfig {
        #[arg(long, env = "SKIFF_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Print the version of skiff and of the Kubernetes API it serves.
    Version,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Where credentials, the kubeconfig and the embedded store live [default: ~/.skiff, or /var/lib/skiff as root]
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address for the HTTPS API.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Storage: `embedded` (in the data directory) or `etcd://HOST:PORT[,HOST:PORT...]`.
    #[arg(long, default_value = "embedded")]
    store: String,
}

#[derive(clap::Args)]
struct UpArgs {
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Server(args) => serve(args),
        Command::Up(args) => {
            serve(ServerArgs { data_dir: args.data_dir, listen: args.listen, store: "embedded".into() })
        }
        Command::Kubeconfig { data_dir } => {
            let dir = data_dir.unwrap_or_else(default_data_dir);
            let path = dir.join("kubeconfig");
            let kubeconfig = std::fs::read_to_string(&path).with_context(|| {
                format!("no kubeconfig at {}: has `skiff server` run with this data dir?", path.display())
            })?;
            print!("{kubeconfig}");
            Ok(())
        }
        Command::Version => {
            println!(
                "skiff {} (Kubernetes API v1.{})",
                env!("CARGO_PKG_VERSION"),
                skiff_apiserver::router::KUBERNETES_MINOR
            );
            Ok(())
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `$HOME/.skiff` for a user, `/var/lib/skiff` for root, like k3s's split between rootless and system.
fn default_data_dir() -> PathBuf {
    let root = std::env::var("USER").map(|u| u == "root").unwrap_or(false) || std::env::var_os("HOME").is_none();
    match std::env::var_os("HOME") {
        Some(home) if !root => Path::new(&home).join(".skiff"),
        _ => PathBuf::from("/var/lib/skiff"),
    }
}

#[tokio::main]
async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let store = open_store(&args.store, &data_dir).await?;
    let shutdown = CancellationToken::new();
    let config = ServerConfig { data_dir: data_dir.clone(), listen: args.listen };
    let server = Server::bind(config, store, shutdown.clone()).await?;
    tracing::info!(
        kubeconfig = %data_dir.join("kubeconfig").display(),
        url = server.url(),
        "ready: export KUBECONFIG={}",
        data_dir.join("kubeconfig").display()
    );
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received, shutting down");
        shutdown.cancel();
    });
    server.run().await;
    Ok(())
}

async fn open_store(url: &str, data_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    if url == "embedded" {
        let dir = data_dir.join("store");
        let store = skiff_store::embedded::EmbeddedStore::open(&dir)
            .with_context(|| format!("cannot open the embedded store in {}", dir.display()))?;
        return Ok(Arc::new(store));
    }
    let Some(endpoints) = url.strip_prefix("etcd://") else {
        bail!("unsupported --store {url:?}: use `embedded` or `etcd://HOST:PORT[,HOST:PORT...]`");
    };
    let endpoints: Vec<String> =
        endpoints.split(',').filter(|e| !e.is_empty()).map(|e| format!("http://{e}")).collect();
    if endpoints.is_empty() {
        bail!("--store etcd:// needs at least one HOST:PORT");
    }
    let store = skiff_store::etcd::EtcdStore::connect(&endpoints)
        .await
        .with_context(|| format!("cannot connect to etcd at {}", endpoints.join(",")))?;
    Ok(Arc::new(store))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the process still dies on the default action; nothing to drain then.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
