//! `keyward gateway --config gateway.toml`: the reverse proxy that enforces keys in-process,
//! optionally serving the admin API from the same process (`admin_listen`), so both share one
//! verify cache and one set of limit counters.
//!
//! ```toml
//! listen = "127.0.0.1:8081"          # where clients connect
//! data_dir = "./keyward-data"         # the same store `keyward serve` uses
//! admin_listen = "127.0.0.1:8080"     # optional: the admin API in this process too
//! ratelimit_headers_on_success = true # RateLimit fields on admitted responses as well
//!
//! [[route]]
//! prefix = "/orders"                  # path prefix, matched at segment boundaries
//! upstream = "http://127.0.0.1:9000"  # plain HTTP upstream
//! permissions = "orders.read"         # permission query the route requires
//! cost = 1                            # units per request (default 1)
//! allow_query_key = false             # accept ?api_key= (logged as a warning)
//! timeout_seconds = 30                # upstream response-header timeout (default 30)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use keyward_core::permission::PermissionQuery;
use keyward_engine::clock::SystemClock;
use keyward_engine::{EngineConfig, Keyward};
use keyward_http::AppState;
use keyward_http::gateway::{GatewayConfig, GatewayRoute, serve_gateway};
use keyward_store::SqliteStore;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpSocket};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: SocketAddr,
    data_dir: PathBuf,
    admin_listen: Option<SocketAddr>,
    #[serde(default)]
    ratelimit_headers_on_success: bool,
    quota_lease: Option<u64>,
    threads: Option<usize>,
    #[serde(rename = "route", default)]
    routes: Vec<FileRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    prefix: String,
    upstream: String,
    permissions: Option<String>,
    cost: Option<u64>,
    #[serde(default)]
    allow_query_key: bool,
    timeout_seconds: Option<u64>,
}

/// The parsed configuration.
pub struct Loaded {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub admin_listen: Option<SocketAddr>,
    pub quota_lease: u64,
    pub threads: usize,
    pub gateway: GatewayConfig,
}

/// Reads and validates a gateway config file; errors name the file and the field.
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: FileConfig = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid gateway config", path.display()))?;
    if file.routes.is_empty() {
        bail!("{}: define at least one [[route]]", path.display());
    }
    let routes = file
        .routes
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let at = format!("{}: route[{i}]", path.display());
            if !r.prefix.starts_with('/') {
                bail!("{at}.prefix must start with '/'");
            }
            let upstream: hyper::Uri = r
                .upstream
                .parse()
                .with_context(|| format!("{at}.upstream is not a URL"))?;
            if upstream.scheme_str() != Some("http") || upstream.host().is_none() {
                bail!("{at}.upstream must be an http://host:port URL");
            }
            let permissions = r
                .permissions
                .as_deref()
                .map(PermissionQuery::parse)
                .transpose()
                .with_context(|| format!("{at}.permissions"))?;
            Ok(GatewayRoute {
                prefix: r.prefix,
                upstream,
                permissions,
                cost: r.cost.unwrap_or(1),
                allow_query_key: r.allow_query_key,
                timeout: Duration::from_secs(r.timeout_seconds.unwrap_or(30).max(1)),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Loaded {
        listen: file.listen,
        data_dir: file.data_dir,
        admin_listen: file.admin_listen,
        quota_lease: file
            .quota_lease
            .unwrap_or(EngineConfig::default().quota_lease)
            .max(1),
        threads: file
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, 256),
        gateway: GatewayConfig {
            routes,
            ratelimit_headers_on_success: file.ratelimit_headers_on_success,
        },
    })
}

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    crate::serve::init_logging(crate::cli::LogFormat::Text);
    let loaded = load(config_path)?;
    let store = SqliteStore::open(&loaded.data_dir).await?;
    let config = EngineConfig {
        quota_lease: loaded.quota_lease,
        ..EngineConfig::default()
    };
    let engine = Arc::new(Keyward::new(
        Arc::new(store.clone()),
        Arc::new(SystemClock),
        config,
    ));
    if let Some(root) = engine
        .bootstrap()
        .await
        .context("creating the first root key")?
    {
        println!(
            "keyward: created the first root key ({}), with all permissions:",
            root.record.key_id
        );
        println!();
        println!("    {}", root.key.expose());
        println!();
        println!("This root key will not be shown again. Store it now.");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin = match loaded.admin_listen {
        Some(addr) => {
            let admin_listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            println!(
                "keyward: admin API listening on http://{}",
                admin_listener.local_addr()?
            );
            let state = AppState {
                engine: Arc::clone(&engine),
            };
            Some(tokio::spawn(keyward_http::serve(
                admin_listener,
                state,
                stopped(stop_rx.clone()),
            )))
        }
        None => None,
    };
    let upkeep = crate::serve::spawn_upkeep(Arc::clone(&engine), Duration::from_secs(5));
    let workers = spawn_gateway_threads(&loaded, &engine, &stop_rx)?;
    crate::serve::shutdown_signal().await;
    let _ = stop_tx.send(true);
    for worker in workers {
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .context("gateway thread")?
            .map_err(|_| anyhow::anyhow!("a gateway thread panicked"))??;
    }
    if let Some(admin) = admin {
        admin
            .await
            .context("admin task")?
            .context("serving the admin API")?;
    }
    upkeep.abort();
    crate::serve::shutdown_engine(&engine).await;
    store.close().await;
    Ok(())
}

/// Runs the gateway thread-per-core: each thread has its own single-threaded runtime, its own
/// `SO_REUSEPORT` listener on the same address and its own upstream connection pool, so a
/// request never hops between threads (a profile of the multi-threaded runtime showed about a
/// fifth of the CPU in cross-thread wake-ups). The engine (cache, limits, quota leases) is
/// shared by all threads.
fn spawn_gateway_threads(
    loaded: &Loaded,
    engine: &Arc<Keyward>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<std::thread::JoinHandle<anyhow::Result<()>>>> {
    let mut addr = loaded.listen;
    let mut workers = Vec::with_capacity(loaded.threads);
    for i in 0..loaded.threads {
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let (engine, config, mut stop) = (Arc::clone(engine), loaded.gateway.clone(), stop.clone());
        let worker = std::thread::Builder::new()
            .name(format!("keyward-gateway-{i}"))
            .spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let socket = if addr.is_ipv4() {
                        TcpSocket::new_v4()?
                    } else {
                        TcpSocket::new_v6()?
                    };
                    socket.set_reuseport(true)?;
                    socket.set_reuseaddr(true)?;
                    socket
                        .bind(addr)
                        .with_context(|| format!("cannot listen on {addr}"))?;
                    let listener = socket
                        .listen(1024)
                        .with_context(|| format!("cannot listen on {addr}"))?;
                    let _ = bound_tx.send(listener.local_addr()?);
                    let stopped = async move {
                        let _ = stop.wait_for(|stop| *stop).await;
                    };
                    serve_gateway(listener, engine, config, stopped)
                        .await
                        .context("serving the gateway")
                })
            })
            .context("starting a gateway thread")?;
        match bound_rx.recv() {
            Ok(bound) => addr = bound,
            // The thread ended before binding: its result says why.
            Err(_) => {
                return Err(match worker.join() {
                    Ok(Err(e)) => e,
                    _ => anyhow::anyhow!("a gateway thread failed to start"),
                });
            }
        }
        workers.push(worker);
    }
    println!(
        "keyward: gateway listening on http://{addr} ({} threads)",
        loaded.threads
    );
    Ok(workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> anyhow::Result<Loaded> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    #[test]
    fn a_full_config_loads() {
        let loaded = load_text(
            r#"
listen = "127.0.0.1:0"
data_dir = "/tmp/x"
ratelimit_headers_on_success = true
[[route]]
prefix = "/orders"
upstream = "http://127.0.0.1:9000"
permissions = "orders.read"
cost = 2
"#,
        )
        .unwrap();
        assert_eq!(loaded.gateway.routes[0].cost, 2);
        assert!(loaded.gateway.ratelimit_headers_on_success);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let base = "listen = \"127.0.0.1:0\"\ndata_dir = \"/tmp/x\"\n";
        let cases = [
            (base.to_owned(), "at least one [[route]]"),
            (
                format!("{base}[[route]]\nprefix = \"orders\"\nupstream = \"http://a:1\"\n"),
                "prefix must start with '/'",
            ),
            (
                format!("{base}[[route]]\nprefix = \"/o\"\nupstream = \"https://a:1\"\n"),
                "http://host:port",
            ),
            (
                format!(
                    "{base}[[route]]\nprefix = \"/o\"\nupstream = \"http://a:1\"\npermissions = \"a AND\"\n"
                ),
                "permissions",
            ),
            (format!("{base}colour = 1\n"), "not a valid gateway config"),
        ];
        for (text, expected) in cases {
            let err = format!("{:#}", load_text(&text).err().unwrap());
            assert!(err.contains(expected), "{err}");
        }
    }
}
