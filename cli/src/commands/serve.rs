//! `thaw serve`: run the host.

use std::sync::Arc;

use std::time::Duration;

use anyhow::Context as _;

use thaw_runtime::api::ReadyLine;
use thaw_runtime::cluster::Cluster;
use thaw_runtime::control::{KeyValueBackend, Platform};
use thaw_runtime::engine::Allocator;
use thaw_runtime::engine::artifact::sha256_hex;
use thaw_runtime::events::{EventOptions, Events, LocalClaims, TickClaims};
use thaw_runtime::history::History;
use thaw_runtime::http::admin::AdminContext;
use thaw_runtime::http::auth::{AdminAuth, AdminToken};
use thaw_runtime::http::server::{self, ListenerOptions, Shutdown};
use thaw_runtime::http::tls;
use thaw_runtime::manifest::Manifest;

use crate::config::{ServeArgs, ServeConfig};

/// Runs until SIGINT or SIGTERM, then drains in-flight requests.
pub async fn execute(args: ServeArgs, json_log: bool) -> anyhow::Result<()> {
    let config = args.resolve()?;
    // The data plane's certificates, refused before anything else with the file and the
    // reason; watched for changes once the host serves.
    let certificates = config
        .tls
        .clone()
        .map(tls::Certificates::load)
        .transpose()
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
    // Manifests are read (and built) before anything else, so a typo fails fast.
    let manifests = config
        .deploy
        .iter()
        .map(|path| Manifest::load(path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if config.build {
        for manifest in &manifests {
            manifest.build()?;
        }
    }
    thaw_runtime::guest::log::set_host_copy_rate(config.guest_log_to_host);
    let platform = open_platform(&config).await?;

    // Bound before the manifests are deployed: a cluster node registers its addresses, and
    // in a cluster a manifest's deploy goes through etcd like any other.
    let listeners = Listeners {
        data: server::bind(config.listen).await?,
        admin: server::bind(config.admin_listen).await?,
        metrics: match config.metrics_listen {
            Some(addr) => Some(server::bind(addr).await?),
            None => None,
        },
    };
    let ready = ReadyLine {
        functions: listeners.data.local_addr()?,
        admin: listeners.admin.local_addr()?,
        metrics: listeners
            .metrics
            .as_ref()
            .map(|m| m.local_addr())
            .transpose()?,
        tls: certificates.is_some(),
    };
    if !config.admin_listen.ip().is_loopback() {
        tracing::warn!(
            "the admin API listens on {}, beyond loopback: its token is all that guards it, and \
             it travels in clear text (no TLS); put a TLS proxy in front",
            ready.admin
        );
    }
    let cluster = match config.cluster.clone() {
        Some(options) => {
            Some(join_cluster(&config, &platform, options, &ready, !manifests.is_empty()).await?)
        }
        None => None,
    };
    deploy_manifests(&platform, &manifests).await?;
    let token = admin_token(&platform, &config, json_log)?;
    // One NATS connection serves the triggers and the queue: one server for both.
    let queue_nats = match config.queue.as_deref() {
        None => None,
        Some(url) if url.starts_with("nats://") || url.starts_with("tls://") => {
            Some(url.to_owned())
        }
        Some(url) => anyhow::bail!("--queue {url:?}: only nats://HOST:PORT is known"),
    };
    if let (Some(queue), Some(triggers)) = (&queue_nats, &config.events_nats)
        && queue != triggers
    {
        anyhow::bail!("--queue and --events-nats name different NATS servers; give one");
    }
    let event_options = EventOptions {
        shared_queue: queue_nats.is_some(),
        nats_url: config.events_nats.clone().or(queue_nats),
        redis_url: config.events_redis.clone(),
        // Unique per node: a Redis consumer group tells its consumers apart by name.
        node: match &config.cluster {
            Some(cluster) => cluster.node_id.clone(),
            None => host_name(),
        },
        ..EventOptions::default()
    };
    let events = Events::open(platform.clone(), event_options)
        .await
        .context("opening the event store (events.redb in the data directory)")?;
    // One machine-readable line on stdout; scripts and tests that bind port 0 read it.
    println!("{ready}");
    platform.spawn_background_work();
    // In a cluster each schedule's tick is claimed through etcd, so one node runs it.
    let claims: Arc<dyn TickClaims> = match &cluster {
        Some(cluster) => cluster.clone(),
        None => Arc::new(LocalClaims),
    };
    events.start(claims);
    serve_until_signal(
        &config,
        platform,
        events,
        cluster,
        token,
        listeners,
        certificates,
    )
    .await
}

/// The platform, with trace export and the key-value store the configuration asks for.
async fn open_platform(config: &ServeConfig) -> anyhow::Result<Arc<Platform>> {
    let mut platform_config = config.platform.clone();
    if let Some(endpoint) = &config.otlp_endpoint {
        platform_config.traces =
            Some(Arc::new(otlp_traces(endpoint).with_context(|| {
                format!("setting up trace export to {endpoint}")
            })?));
    }
    if let Some(url) = &config.keyvalue {
        let store = thaw_runtime::keyvalue::redis::RedisStore::connect(url)
            .await
            .with_context(|| {
                // Without the credentials a URL may carry.
                let host = url.rsplit_once('@').map_or(url.as_str(), |(_, host)| host);
                format!("connecting to the key-value store at {host}")
            })?;
        platform_config.keyvalue = KeyValueBackend::Redis(store);
    }
    let platform = tokio::task::spawn_blocking(move || Platform::open(platform_config))
        .await
        .context("start-up task failed")??;
    match platform.cache().engines().allocator() {
        Allocator::Pooling => tracing::info!(
            slots = platform.engine().options().instance_slots,
            "instance allocator: pooling with copy-on-write memory images"
        ),
        Allocator::OnDemand(reason) => {
            tracing::warn!("instance allocator: on-demand ({reason})")
        }
    }
    tracing::info!(
        data_dir = %platform.data_dir().root().display(),
        functions = platform.registry().len(),
        keyvalue = %platform.keyvalue().map_or("off".to_owned(), |kv| kv.describe()),
        "data directory loaded"
    );
    Ok(Arc::new(platform))
}

/// The host's listeners, bound.
struct Listeners {
    data: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
    metrics: Option<tokio::net::TcpListener>,
}

/// Joins the cluster of `options` at the addresses `ready` names (as peers reach them); with
/// manifests to deploy, waits until etcd's registry has been read (a manifest is compared
/// with the cluster's registry, not a stale local one).
async fn join_cluster(
    config: &ServeConfig,
    platform: &Arc<Platform>,
    mut options: thaw_runtime::cluster::ClusterOptions,
    ready: &ReadyLine,
    deploys: bool,
) -> anyhow::Result<Arc<Cluster>> {
    let advertise = config.advertise_host.as_deref();
    let host = advertised_host(advertise, ready.functions.ip());
    if options.node_id.is_empty() {
        options.node_id = format!("{}-{}", host_name(), ready.functions.port());
    }
    let cluster = Cluster::join(
        platform.clone(),
        options,
        format!("{host}:{}", ready.functions.port()),
        format!(
            "{}:{}",
            advertised_host(advertise, ready.admin.ip()),
            ready.admin.port()
        ),
    )
    .await?;
    if ready.admin.ip().is_loopback() && advertise.is_none() {
        tracing::warn!(
            "the admin listener is on loopback: peers on other machines cannot fetch code \
             from this node (set --admin-listen, and --advertise-host if needed)"
        );
    }
    if deploys && !cluster.wait_synced(Duration::from_secs(60)).await {
        anyhow::bail!(
            "--deploy in a cluster needs etcd's registry, and it was not read within 60 s"
        );
    }
    Ok(cluster)
}

/// `--deploy`: every function of the manifests, unless its newest version is that code with
/// that spec already (a rollback made since is kept).
async fn deploy_manifests(platform: &Arc<Platform>, manifests: &[Manifest]) -> anyhow::Result<()> {
    for manifest in manifests {
        for function in &manifest.functions {
            let (wasm, assets) = crate::commands::deploy::manifest_upload(manifest, function)
                .with_context(|| format!("reading the code of function {}", function.name))?;
            let wasm = wasm.unwrap_or_else(|| thaw_runtime::asset_spec::ASSETS_ONLY_WASM.to_vec());
            let spec = function.spec();
            // The spec as the host stores it: with the digest of the assets it was sent.
            let mut stored = spec.clone();
            if let (Some(settings), Some(bundle)) = (&mut stored.assets, &assets) {
                settings.digest = Some(sha256_hex(bundle));
            }
            if let Some(existing) = platform.registry().get(&function.name)
                && existing.newest().record.digest == sha256_hex(&wasm)
                && existing.newest().record.spec == stored
            {
                continue;
            }
            platform
                .deploy_with_assets(
                    &function.name,
                    spec,
                    wasm.into(),
                    assets.map(Into::into),
                    Default::default(),
                )
                .await
                .with_context(|| {
                    format!(
                        "deploying {} from {}",
                        function.name,
                        manifest.base.display()
                    )
                })?;
        }
    }
    Ok(())
}

/// The admin token: configured, or the data directory's (created, and said so once, on the
/// first start).
fn admin_token(
    platform: &Platform,
    config: &ServeConfig,
    json_log: bool,
) -> anyhow::Result<AdminToken> {
    let (token, created) =
        AdminToken::load_or_create(platform.data_dir().root(), config.admin_token.as_deref())?;
    if let Some(path) = created {
        if json_log {
            // A log pipeline gets one JSON object per line, and not the secret: it is in
            // the owner-only file.
            tracing::info!(path = %path.display(), "new admin token saved, readable by this user only");
        } else {
            // Printed once, when created; afterwards it lives only in the owner-only file.
            eprintln!(
                "thaw: new admin token {} (saved to {}, readable by this user only)",
                token.expose(),
                path.display()
            );
        }
    }
    Ok(token)
}

/// Serves the listeners until SIGINT or SIGTERM; then leaves the cluster, drains, and
/// exports the last traces.
async fn serve_until_signal(
    config: &ServeConfig,
    platform: Arc<Platform>,
    events: Arc<Events>,
    cluster: Option<Arc<Cluster>>,
    token: AdminToken,
    listeners: Listeners,
    certificates: Option<Arc<tls::Certificates>>,
) -> anyhow::Result<()> {
    let (stop, shutdown) = Shutdown::new();
    let listener_options = ListenerOptions {
        drain_timeout: config.drain_timeout,
        header_read_timeout: config.header_read_timeout,
        slow_clients: platform.slow_clients().clone(),
        send_timeout: config.send_timeout,
        stalled_readers: platform.stalled_readers().clone(),
        // The admin API and /metrics stay plain: they listen on loopback by default, and
        // TLS in front of them is the operator's proxy's (see docs/operations.md).
        tls: None,
    };
    let data_tls = certificates.map(|certificates| {
        tokio::spawn(certificates.clone().watch(shutdown.clone()));
        certificates.server_config()
    });
    let exposition = Arc::new(thaw_runtime::metrics::Exposition::with_events(
        events.clone(),
    ));
    let admin_context = Arc::new(AdminContext {
        exposition: exposition.clone(),
        history: History::spawn(platform.clone()),
        platform: platform.clone(),
        max_upload: config.max_upload_bytes,
        auth: AdminAuth::new(token),
        cluster: cluster.clone(),
        followers: Default::default(),
        events: Some(events.clone()),
    });
    let admin_task = tokio::spawn(server::serve(
        listeners.admin,
        shutdown.clone(),
        listener_options.clone(),
        move |req, peer| {
            thaw_runtime::http::admin::handle(admin_context.clone(), req, peer.remote.ip())
        },
    ));
    // `/metrics` alone, without the token (`--metrics-listen`).
    let metrics_task = listeners.metrics.map(|listener| {
        let metrics_platform = platform.clone();
        tokio::spawn(server::serve(
            listener,
            shutdown.clone(),
            listener_options.clone(),
            move |req, _peer| {
                thaw_runtime::http::admin::handle_metrics_only(
                    metrics_platform.clone(),
                    exposition.clone(),
                    req,
                )
            },
        ))
    });
    let flush_platform = platform.clone();
    let data_task = tokio::spawn(server::serve_functions(
        listeners.data,
        platform,
        Some(events),
        shutdown,
        ListenerOptions {
            tls: data_tls,
            ..listener_options
        },
    ));

    wait_for_signal().await?;
    tracing::info!("shutting down");
    // Out of the member list and every readiness count first, then drain.
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    let _ = stop.send(true);
    data_task.await??;
    admin_task.await??;
    if let Some(task) = metrics_task {
        task.await??;
    }
    // Off the reactor: the exporter's last batch is a blocking HTTP request.
    tokio::task::spawn_blocking(move || flush_platform.flush_traces()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Trace export over OTLP/HTTP (protobuf) to the collector at `endpoint`, a base URL as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` has it: spans go to `<endpoint>/v1/traces`. The exporter
/// (and its HTTP client) lives here, in the binary: the library takes any `SpanExporter`.
fn otlp_traces(endpoint: &str) -> anyhow::Result<thaw_runtime::telemetry::Tracing> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()?;
    Ok(thaw_runtime::telemetry::Tracing::new(exporter))
}

/// The host name peers reach a listener bound to `ip` at: `--advertise-host`, else the
/// address itself, unless it is every address (0.0.0.0, ::), then the machine's host name.
fn advertised_host(advertise: Option<&str>, ip: std::net::IpAddr) -> String {
    match advertise {
        Some(host) => host.to_owned(),
        None if ip.is_unspecified() => host_name(),
        None if ip.is_ipv6() => format!("[{ip}]"),
        None => ip.to_string(),
    }
}

/// The machine's host name (a pod's name on Kubernetes).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "thaw".to_owned())
}
