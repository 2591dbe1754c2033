//! The console's HTTP server: axum on a one-thread tokio runtime in a thread of its own (not a
//! shard), at nice 10, so that under CPU contention the shards win.
//!
//! axum was chosen over hand-written HTTP because it is the tokio project's own framework on
//! hyper, well kept and widely used, with typed extractors that turn bad input into 4xx
//! responses; glommio has no maintained HTTP server and running HTTP on a data shard is what
//! this module exists to avoid.
//!
//! Safety of actions: every mutating endpoint is a POST that needs (1) the per-process random
//! CSRF token, which only the served page knows (a `<meta>` tag), in `X-CSRF-Token`;
//! (2) `Content-Type: application/json`, which a cross-site HTML form cannot send; (3) no
//! cross-site `Origin` or `Sec-Fetch-Site`. Request bodies are capped at
//! [`MAX_BODY_BYTES`]. Responses carry a strict Content-Security-Policy (no inline script).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::api::{self, Api, ApiFailure};
use super::metrics::{self as prom, ClusterGauges};
use super::ShardLink;
use crate::config::BrokerConfig;
use crate::metrics::BrokerStats;

/// Largest request body accepted (the actions' JSON is tiny).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Where the console listens when nothing is configured and clients use a fixed port.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8080";
/// The CSRF token's header.
const CSRF_HEADER: &str = "x-csrf-token";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// Where to serve, per the configuration: an explicit address must bind (start-up fails
/// otherwise); the default is tried only when clients listen on a fixed port (a quick start,
/// not a test on port 0 that may run beside other brokers) and is skipped with a warning if
/// taken, so a second broker on one host still starts.
pub fn bind(config: &BrokerConfig) -> Result<Option<std::net::TcpListener>, String> {
    if config.http_disabled {
        return Ok(None);
    }
    if let Some(addr) = config.http {
        return std::net::TcpListener::bind(addr)
            .map(Some)
            .map_err(|e| format!("cannot listen for http on {addr}: {e}"));
    }
    if config.listen.port() == 0 {
        return Ok(None);
    }
    match std::net::TcpListener::bind(DEFAULT_ADDRESS) {
        Ok(listener) => Ok(Some(listener)),
        Err(e) => {
            tracing::warn!(address = DEFAULT_ADDRESS, error = %e,
                "web console not started: the default port is taken (set --http HOST:PORT or --http off)");
            Ok(None)
        }
    }
}

struct Console {
    api: Arc<Api>,
    csrf_token: String,
    index_html: String,
}

/// Starts the HTTP thread on `listener`; returns the bound address.
pub fn start(
    listener: std::net::TcpListener,
    link: ShardLink,
    stats: Arc<BrokerStats>,
    started: Instant,
    shards: usize,
    node_id: i32,
) -> Result<SocketAddr, String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    // 244 random bits (two v4 UUIDs from the OS's random source), new every process.
    let csrf_token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let console = Arc::new(Console {
        api: Arc::new(Api::new(link, stats, started, shards, node_id)),
        index_html: INDEX_HTML.replace("{{csrf_token}}", &csrf_token),
        csrf_token,
    });
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            // SAFETY: setpriority on this thread's own tid.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, 10);
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the http runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot serve http");
                        return;
                    }
                };
                if let Err(e) = axum::serve(listener, router(console)).await {
                    tracing::error!(error = %e, "http server stopped");
                }
            });
        })
        .map_err(|e| format!("cannot start the http thread: {e}"))?;
    Ok(addr)
}

fn router(console: Arc<Console>) -> Router {
    let api_routes = Router::new()
        .route("/overview", get(api::overview))
        .route("/topics", get(api::topics).post(api::create_topic))
        .route("/topics/{topic}", get(api::topic))
        .route("/topics/{topic}/partitions", post(api::add_partitions))
        .route("/topics/{topic}/delete", post(api::delete_topic))
        .route(
            "/topics/{topic}/partitions/{partition}/messages",
            get(api::messages),
        )
        .route("/groups", get(api::groups))
        .route("/groups/{group}/delete", post(api::delete_group))
        .route("/stats", get(api::stats))
        .with_state(console.api.clone());
    Router::new()
        .route("/", get(index))
        .route(
            "/assets/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/assets/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE_CSS)),
        )
        .route("/favicon.svg", get(|| asset("image/svg+xml", FAVICON_SVG)))
        .route("/metrics", get(metrics))
        .with_state(console.clone())
        .nest("/api/v1", api_routes)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(console, guard))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

async fn index(State(console): State<Arc<Console>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        console.index_html.clone(),
    )
        .into_response()
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn not_found() -> ApiFailure {
    ApiFailure(StatusCode::NOT_FOUND, "not found".into())
}

async fn metrics(State(console): State<Arc<Console>>) -> Result<Response, ApiFailure> {
    let api = &console.api;
    let shards = api.shards;
    let gauges = api
        .link
        .run(move |shard| async move {
            let metadata = shard.metadata();
            let mut per_shard = vec![0usize; shards];
            for topic in metadata.topics.values() {
                for (i, p) in topic.partitions.iter().enumerate() {
                    if p.leader == shard.broker.node_id {
                        per_shard[shard.owner_of(&topic.name, i as i32)] += 1;
                    }
                }
            }
            ClusterGauges {
                partitions_per_shard: per_shard,
                under_replicated_partitions: super::providers::under_replicated(&metadata),
                topics: metadata.topics.len(),
            }
        })
        .await
        .map_err(|_| ApiFailure(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))?;
    let body = prom::render(
        api.stats.clone(),
        gauges,
        shards,
        api.started.elapsed().as_secs_f64(),
        api.node_id,
    )
    .map_err(|_| ApiFailure(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed".into()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// True when a header says the request comes from another site.
fn cross_site(headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(host));
        if !same {
            return true;
        }
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.to_str(), Ok("same-origin") | Ok("none")) {
            return true;
        }
    }
    false
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Security headers on every response, and the CSRF/origin checks on everything but reads.
async fn guard(
    State(console): State<Arc<Console>>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD {
        let headers = request.headers();
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let token_ok = headers
            .get(CSRF_HEADER)
            .is_some_and(|t| same_token(t.as_bytes(), console.csrf_token.as_bytes()));
        let refusal = if method != Method::POST {
            Some((
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and POST are served",
            ))
        } else if cross_site(headers) {
            Some((StatusCode::FORBIDDEN, "cross-site request refused"))
        } else if !token_ok {
            Some((StatusCode::FORBIDDEN, "missing or wrong CSRF token"))
        } else if !json {
            Some((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "actions take Content-Type: application/json",
            ))
        } else {
            None
        };
        if let Some((status, message)) = refusal {
            tracing::info!(%method, uri = %request.uri(), %status, message, "http action refused");
            return with_security_headers(ApiFailure(status, message.into()).into_response());
        }
    }
    with_security_headers(next.run(request).await)
}

fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}
