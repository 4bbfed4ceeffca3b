//! `funksvd serve`: recommendations over HTTP/JSON from the published model, in one process
//! without MPI. Requests are answered on a tokio runtime (axum) from the model being served, an
//! `Arc<Loaded>` each request takes when it starts; a plain thread loads models (blocking
//! storage reads, `--data` through the same pipeline as the rank commands) and swaps a new one
//! in when model.json's tag changes. A request in flight keeps the model it started with; a model
//! that does not load or validate is refused, and the one being served stays.

mod api;
mod batch;
mod loaded;
mod metrics;
mod reload;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::{Error, Result};
pub use loaded::{Loaded, Sources};
use metrics::{Metrics, ENDPOINTS};

/// Bytes a request body may have.
const MAX_BODY: usize = 256 * 1024;

/// How the server runs (from `ServeArgs`).
pub struct Settings {
    pub listen: SocketAddr,
    pub sources: Sources,
    pub poll: Option<Duration>,
    pub token: Option<String>,
    pub max_n: usize,
    pub timeout: Duration,
    pub threads: usize,
}

/// What every request reaches.
pub struct App {
    served: RwLock<Option<Arc<Loaded>>>,
    pub metrics: Metrics,
    /// Recommend and similar requests ready at the same moment, scored together.
    pub batcher: batch::Batcher,
    token: Option<Vec<u8>>,
    pub max_n: usize,
    timeout: Duration,
}

impl App {
    /// The model being served (a request keeps its `Arc` to the end, whatever reloads).
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn swap(&self, new: Loaded) {
        *self.served.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(new));
    }
}

/// Serve until SIGTERM or SIGINT (then the requests in flight finish).
pub fn run(settings: Settings) -> Result<()> {
    let app = Arc::new(App {
        served: RwLock::new(None),
        metrics: Metrics::default(),
        batcher: batch::Batcher::default(),
        token: settings.token.map(String::into_bytes),
        max_n: settings.max_n,
        timeout: settings.timeout,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.threads)
        .thread_name("funksvd-http")
        .enable_all()
        .build()
        .map_err(|e| Error::runtime(format!("cannot start the HTTP runtime: {e}")))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(settings.listen))
        .map_err(|e| {
            Error::usage(format!(
                "--listen {}: cannot listen there ({e})",
                settings.listen
            ))
        })?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::runtime(e.to_string()))?;
    // Tests and scripts read the port from this line (with --listen 127.0.0.1:0).
    log::info!("listening on http://{bound}");
    reload::start(app.clone(), settings.sources, settings.poll)?;
    let router = router(app);
    runtime
        .block_on(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stopped())
                .await
        })
        .map_err(|e| Error::runtime(format!("the HTTP server stopped: {e}")))?;
    log::info!("stopped");
    Ok(())
}

fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/recommend",
            get(api::recommend_user).post(api::recommend_items),
        )
        .route("/v1/similar", get(api::similar))
        .route("/v1/predict", get(api::predict))
        .route("/v1/history", get(api::history))
        .layer(middleware::from_fn_with_state(app.clone(), authorized));
    Router::new()
        .merge(v1)
        .route("/healthz", get(api::healthz))
        .route("/livez", get(api::livez))
        .route("/metrics", get(api::metrics))
        .route("/", get(api::page))
        .fallback(|| async {
            api_error(
                StatusCode::NOT_FOUND,
                "no such endpoint (see GET / for them)",
            )
        })
        .layer(middleware::from_fn_with_state(app.clone(), measured))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

fn api_error(status: StatusCode, reason: &str) -> Response {
    api::Failure(status, reason.to_string()).into_response()
}

/// Every request: answered within `--timeout-seconds` (else 503), counted and timed by endpoint.
async fn measured(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let endpoint = endpoint_of(&request);
    let response = match tokio::time::timeout(app.timeout, next.run(request)).await {
        Ok(r) => r,
        Err(_) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request took longer than --timeout-seconds",
        ),
    };
    app.metrics.record(
        endpoint,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

fn endpoint_of(request: &Request) -> usize {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", |p| p.as_str());
    let name = match (path, request.method() == Method::POST) {
        ("/v1/recommend", false) => "recommend_user",
        ("/v1/recommend", true) => "recommend_items",
        ("/v1/similar", _) => "similar",
        ("/v1/predict", _) => "predict",
        ("/v1/history", _) => "history",
        ("/healthz", _) => "healthz",
        ("/livez", _) => "livez",
        ("/metrics", _) => "metrics",
        ("/", _) => "page",
        _ => "other",
    };
    ENDPOINTS
        .iter()
        .position(|&e| e == name)
        .unwrap_or(ENDPOINTS.len() - 1)
}

/// With `--token-file`, /v1 requests carry `Authorization: Bearer <token>` (compared in
/// constant time; never logged).
async fn authorized(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(token) = &app.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    if same_bytes(given, token) {
        return next.run(request).await;
    }
    let mut response = api_error(
        StatusCode::UNAUTHORIZED,
        "a bearer token is needed (Authorization: Bearer ...)",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Equal bytes, in a time that depends on the lengths only.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let mut differ = u8::from(a.len() != b.len());
    for (i, &y) in b.iter().enumerate() {
        differ |= a.get(i).copied().unwrap_or(!y) ^ y;
    }
    differ == 0
}

/// SIGTERM (Kubernetes stopping the pod) or SIGINT.
async fn stopped() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    futures::future::select(Box::pin(term.recv()), Box::pin(int.recv())).await;
    log::info!("stopping: answering the requests in flight");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_bytes(b"secret", b"secret"));
        assert!(!same_bytes(b"secreT", b"secret"));
        assert!(!same_bytes(b"secret!", b"secret"));
        assert!(!same_bytes(b"secre", b"secret"));
        assert!(!same_bytes(b"", b"secret"));
    }
}
