//! What every `nave` process sets up: its log, its runtime, its shutdown signal, the pid
//! file of a node, and a spoke's engine threads.

use std::path::PathBuf;

/// Logs to stderr (text, or JSON with `--log-json`), filtered by `NAVE_LOG` (default
/// info); spans also go to an OTLP collector when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn init_logging(json: bool, node: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("NAVE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let (text, json) = if json {
        (None, Some(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)))
    } else {
        (Some(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)), None)
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(nave_hub::otlp::OtlpLayer::from_env(node))
        .init();
}

/// A spoke's engine threads (`threads` in its config or `--threads`), unless the
/// environment already sets them (`nave up` does, for each spoke it starts). Called
/// before any thread exists.
pub fn engine_threads(threads: Option<usize>) {
    if let Some(t) = threads {
        for var in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
            if std::env::var_os(var).is_none() {
                std::env::set_var(var, t.to_string());
            }
        }
    }
}

/// The process's pid file in its node directory, removed when the node stops.
pub struct PidFile(PathBuf);

impl PidFile {
    pub fn create(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("pid");
        std::fs::write(&path, std::process::id().to_string())?;
        Ok(Self(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(None)
}

/// A runtime of `threads` workers (default: the machine's cores).
pub fn runtime_with(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = threads {
        b.worker_threads(t);
    }
    Ok(b.enable_all().build()?)
}
