//! netagent: the daemon of every node (see `netagent::agent`).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use netagent::config::{Args, Config, LogFormat};
use tokio_util::sync::CancellationToken;

fn init_logging(cfg: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .with_context(|| format!("invalid --log-level {:?}", cfg.log_level))?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cfg.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.state_dir)
        .with_context(|| {
            format!(
                "cannot create the state directory {}",
                cfg.state_dir.display()
            )
        })?;
    // One daemon per state directory.
    let lock_path = cfg.state_dir.join("lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| {
            anyhow::anyhow!(
                "another netagent is running with the state directory {}",
                cfg.state_dir.display()
            )
        })?;

    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
            shutdown.cancel();
        });
    }
    let host = cfg.host.clone();
    tracing::info!(hostname = %cfg.hostname, state_dir = %cfg.state_dir.display(), version = env!("CARGO_PKG_VERSION"), "netagent starting");
    let metrics_addr = cfg.metrics_addr;
    let agent = netagent::agent::Agent::new(cfg);
    netagent::metrics::attach(&agent);
    if let Some(addr) = metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
        tracing::info!(%addr, "metrics listening");
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let app = netagent::api::metrics_app();
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "the metrics server failed");
            }
        });
    }
    agent.resume().await?;
    let api = netagent::api::serve(agent.clone(), &host, shutdown.clone().cancelled_owned());
    let result = api.await;
    agent.shutdown().await;
    tracing::info!("netagent stopped");
    result
}

fn main() -> ExitCode {
    // `netagent shim TASK_DIR`: the task shim the executor starts (single-threaded, before any
    // runtime exists: it changes its own namespaces).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.len() == 3 && argv[1] == "shim" {
        let code = executor::shim::run(std::path::Path::new(&argv[2]));
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    let cfg = match Config::load(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("netagent: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // A node whose kernel can balance no VIP says so now, not when the first task starts.
    if let Err(e) = netagent::node_runtime::detect_lb(&cfg) {
        eprintln!("netagent: load balancer: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = init_logging(&cfg) {
        eprintln!("netagent: {e:#}");
        return ExitCode::FAILURE;
    }
    pki::install_crypto_provider();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netagent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("netagent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
