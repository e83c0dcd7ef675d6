//! The small HTTP server both binaries run on `[metrics] listen`: `/metrics` (Prometheus text),
//! `/healthz` (the process runs), `/readyz` (named readiness checks), `/status` (JSON),
//! `/status/<name>` (one item's detail, JSON, when the binary answers it) and `/` (an embedded
//! HTML page, when the binary has one: the hub's console).
//!
//! The readiness and status answers come from callbacks the binary registers on [`Endpoints`]
//! once it has built what they look at (the recorder must be installed first, so the server
//! starts before the hub or agent exists). Until then `/readyz` says "starting" with 503.
//! Callbacks may block (a Kafka metadata request): they run on tokio's blocking pool, bounded by
//! [`CALLBACK_TIMEOUT`]. Requests are bounded too: GET/HEAD only, no body read, headers at most
//! [`MAX_HEADER_BYTES`], read within [`HEADER_READ_TIMEOUT`], at most [`MAX_CONNECTIONS`] open
//! connections.

use std::convert::Infallible;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Largest request head (request line and headers) accepted; larger ones get 431.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// A client must send its request head within this long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// A readiness or status callback that takes longer answers 503.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// One named readiness check and its outcome, as `/readyz` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked, e.g. `edge-kafka` or `cluster:central`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// A short human explanation (the error when it failed).
    pub detail: String,
}

impl Check {
    /// A check named `name` with its outcome.
    pub fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok,
            detail: detail.into(),
        }
    }
}

/// A blocking check (a Kafka metadata request, say) whose outcome is reused for a while, so that
/// however often `/readyz` is polled the checked system sees at most one call per `ttl`. Callers
/// that arrive while a call runs wait for it and share its outcome.
pub struct CachedCheck {
    name: String,
    ttl: Duration,
    probe: Box<dyn Fn() -> Result<String, String> + Send + Sync>,
    last: std::sync::Mutex<Option<(std::time::Instant, Result<String, String>)>>,
}

impl std::fmt::Debug for CachedCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedCheck")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl CachedCheck {
    /// A check named `name` running `probe` (Ok: a detail, Err: what failed) at most once per
    /// `ttl`.
    pub fn new(
        name: impl Into<String>,
        ttl: Duration,
        probe: impl Fn() -> Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            ttl,
            probe: Box::new(probe),
            last: std::sync::Mutex::new(None),
        }
    }

    /// The latest outcome, probing again when it is older than the ttl (blocking).
    pub fn check(&self) -> Check {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = last.as_ref().is_some_and(|(at, _)| at.elapsed() < self.ttl);
        if !fresh {
            let outcome = (self.probe)();
            if let Err(e) = &outcome {
                debug!(check = %self.name, error = %e, "readiness check failed");
            }
            *last = Some((std::time::Instant::now(), outcome));
        }
        let (_, outcome) = last.as_ref().expect("set above");
        match outcome {
            Ok(detail) => Check::new(self.name.clone(), true, detail.clone()),
            Err(e) => Check::new(self.name.clone(), false, e.clone()),
        }
    }
}

/// The `/readyz` body: ready when every check passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// All checks passed.
    pub ready: bool,
    /// The checks, in the order the callback gave them.
    pub checks: Vec<Check>,
}

impl Readiness {
    /// Ready when every check passed (and there is at least one).
    pub fn from_checks(checks: Vec<Check>) -> Self {
        Self {
            ready: !checks.is_empty() && checks.iter().all(|c| c.ok),
            checks,
        }
    }
}

type ReadinessFn = dyn Fn() -> Vec<Check> + Send + Sync;
type StatusFn = dyn Fn() -> serde_json::Value + Send + Sync;
type DetailFn = dyn Fn(&str) -> Option<serde_json::Value> + Send + Sync;

/// Longest `<name>` of `/status/<name>` looked up; longer names answer 404 without a lookup.
pub const MAX_DETAIL_NAME_BYTES: usize = 255;

/// The callbacks behind `/readyz`, `/status` and `/status/<name>`, and the page at `/`,
/// registered by the binary once it can answer.
#[derive(Default)]
pub struct Endpoints {
    readiness: RwLock<Option<Arc<ReadinessFn>>>,
    status: RwLock<Option<Arc<StatusFn>>>,
    detail: RwLock<Option<Arc<DetailFn>>>,
    page: RwLock<Option<&'static str>>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |l: bool| if l { "set" } else { "unset" };
        f.debug_struct("Endpoints")
            .field(
                "readiness",
                &set(self
                    .readiness
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some()),
            )
            .field(
                "status",
                &set(self
                    .status
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some()),
            )
            .finish()
    }
}

impl Endpoints {
    /// `/readyz` answers from `f` from now on (200 when every check passed, else 503).
    pub fn set_readiness(&self, f: impl Fn() -> Vec<Check> + Send + Sync + 'static) {
        *self
            .readiness
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(f));
    }

    /// `/status` answers with the JSON `f` returns from now on.
    pub fn set_status(&self, f: impl Fn() -> serde_json::Value + Send + Sync + 'static) {
        *self.status.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(f));
    }

    /// `/status/<name>` answers with the JSON `f` returns for `name` from now on (404 for
    /// `None`). `name` is percent-decoded, at most [`MAX_DETAIL_NAME_BYTES`].
    pub fn set_detail(
        &self,
        f: impl Fn(&str) -> Option<serde_json::Value> + Send + Sync + 'static,
    ) {
        *self.detail.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(f));
    }

    /// `/` serves this HTML page from now on (404 until set).
    pub fn set_page(&self, html: &'static str) {
        *self.page.write().unwrap_or_else(PoisonError::into_inner) = Some(html);
    }

    /// The detail of `name` now (blocking: runs the callback); `None` when unknown or not
    /// served.
    pub fn detail(&self, name: &str) -> Option<serde_json::Value> {
        let f = self
            .detail
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        f.and_then(|f| f(name))
    }

    fn page(&self) -> Option<&'static str> {
        *self.page.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The readiness now (blocking: runs the callback).
    pub fn readiness(&self) -> Readiness {
        let f = self
            .readiness
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match f {
            Some(f) => Readiness::from_checks(f()),
            None => Readiness::from_checks(vec![Check::new(
                "started",
                false,
                "the process is still starting",
            )]),
        }
    }

    /// The status JSON now (blocking: runs the callback); `None` while starting.
    pub fn status(&self) -> Option<serde_json::Value> {
        let f = self
            .status
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        f.map(|f| f())
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Metrics,
    Healthz,
    Readyz,
    Status,
    /// `/status/<name>`, the name percent-decoded.
    Detail(String),
    Page,
    NotFound,
    MethodNotAllowed,
}

fn route(method: &Method, path: &str) -> Route {
    if *method != Method::GET && *method != Method::HEAD {
        return Route::MethodNotAllowed;
    }
    match path {
        "/" => Route::Page,
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/status" => Route::Status,
        _ => match path.strip_prefix("/status/").and_then(percent_decode) {
            Some(name)
                if !name.is_empty()
                    && name.len() <= MAX_DETAIL_NAME_BYTES
                    && !name.contains('/') =>
            {
                Route::Detail(name)
            }
            _ => Route::NotFound,
        },
    }
}

/// Decodes `%XX` escapes of a path segment; `None` for a bad escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Serves the endpoints on `listener` until the runtime shuts down. `metrics` renders `/metrics`.
pub fn spawn(listener: TcpListener, metrics: PrometheusHandle, endpoints: Arc<Endpoints>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "status endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            let endpoints = endpoints.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let metrics = metrics.clone();
                    let endpoints = endpoints.clone();
                    async move { Ok::<_, Infallible>(respond(req, metrics, endpoints).await) }
                });
                let mut http = http1::Builder::new();
                http.timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .max_header_size(MAX_HEADER_BYTES)
                    .max_buf_size(MAX_HEADER_BYTES.max(8192) * 2);
                let served = http.serve_connection(TokioIo::new(stream), service).await;
                if let Err(e) = served {
                    debug!(%peer, error = %e, "status endpoint: connection ended with an error");
                }
                drop(permit);
            });
        }
    });
}

async fn respond(
    req: Request<Incoming>,
    metrics: PrometheusHandle,
    endpoints: Arc<Endpoints>,
) -> Response<Full<Bytes>> {
    match route(req.method(), req.uri().path()) {
        Route::Metrics => match blocking(move || metrics.render()).await {
            Ok(text) => reply(StatusCode::OK, "text/plain; version=0.0.4", text),
            Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", e),
        },
        Route::Healthz => reply(StatusCode::OK, "text/plain", "ok\n"),
        Route::Readyz => {
            let readiness = blocking(move || endpoints.readiness())
                .await
                .unwrap_or_else(|e| {
                    Readiness::from_checks(vec![Check::new("readiness", false, e)])
                });
            let code = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(code, &readiness)
        }
        Route::Status => match blocking(move || endpoints.status()).await {
            Ok(Some(v)) => json(StatusCode::OK, &v),
            Ok(None) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"state": "starting"}),
            ),
            Err(e) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "error": e }),
            ),
        },
        Route::Detail(name) => match blocking(move || endpoints.detail(&name)).await {
            Ok(Some(v)) => json(StatusCode::OK, &v),
            Ok(None) => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "no such item"}),
            ),
            Err(e) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "error": e }),
            ),
        },
        Route::Page => match endpoints.page() {
            Some(html) => reply(StatusCode::OK, "text/html; charset=utf-8", html),
            None => not_found(),
        },
        Route::NotFound => not_found(),
        Route::MethodNotAllowed => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET and HEAD\n",
        ),
    }
}

fn not_found() -> Response<Full<Bytes>> {
    reply(
        StatusCode::NOT_FOUND,
        "text/plain",
        "not found; try /metrics, /healthz, /readyz or /status\n",
    )
}

/// Runs `f` on the blocking pool, at most [`CALLBACK_TIMEOUT`].
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    match tokio::time::timeout(CALLBACK_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("the callback failed: {e}")),
        Err(_) => Err(format!(
            "the callback did not answer within {CALLBACK_TIMEOUT:?}"
        )),
    }
}

fn json(code: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_string_pretty(body).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("cannot serialize: {e}") }).to_string()
    });
    text.push('\n');
    reply(code, "application/json", text)
}

fn reply(
    code: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    #[test]
    fn routes_by_method_and_exact_path() {
        let cases = [
            (Method::GET, "/metrics", Route::Metrics),
            (Method::HEAD, "/metrics", Route::Metrics),
            (Method::GET, "/healthz", Route::Healthz),
            (Method::GET, "/readyz", Route::Readyz),
            (Method::GET, "/status", Route::Status),
            (Method::GET, "/", Route::Page),
            (Method::GET, "/console", Route::NotFound),
            (Method::GET, "/metrics/x", Route::NotFound),
            (
                Method::GET,
                "/status/plant-7",
                Route::Detail("plant-7".into()),
            ),
            (Method::GET, "/status/a%20b", Route::Detail("a b".into())),
            (Method::GET, "/status/", Route::NotFound),
            (Method::GET, "/status/a/b", Route::NotFound),
            (Method::GET, "/status/a%2Fb", Route::NotFound),
            (Method::GET, "/status/%zz", Route::NotFound),
            (Method::POST, "/metrics", Route::MethodNotAllowed),
            (Method::DELETE, "/status", Route::MethodNotAllowed),
        ];
        for (m, p, want) in cases {
            assert_eq!(route(&m, p), want, "{m} {p}");
        }
        let long = format!("/status/{}", "x".repeat(MAX_DETAIL_NAME_BYTES + 1));
        assert_eq!(route(&Method::GET, &long), Route::NotFound);
    }

    #[test]
    fn ready_only_when_every_check_passed() {
        assert!(
            !Readiness::from_checks(vec![]).ready,
            "no checks: not ready"
        );
        assert!(Readiness::from_checks(vec![Check::new("a", true, "")]).ready);
        assert!(
            !Readiness::from_checks(vec![Check::new("a", true, ""), Check::new("b", false, "x")])
                .ready
        );
    }

    #[test]
    fn a_cached_check_probes_at_most_once_per_ttl() {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let c = calls.clone();
        let check = CachedCheck::new("kafka", Duration::from_millis(200), move || {
            let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n == 0 {
                Ok("3 brokers".into())
            } else {
                Err("timed out".into())
            }
        });
        assert_eq!(check.check(), Check::new("kafka", true, "3 brokers"));
        assert_eq!(
            check.check(),
            Check::new("kafka", true, "3 brokers"),
            "cached"
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            check.check(),
            Check::new("kafka", false, "timed out"),
            "probed again"
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// Sends raw request bytes and returns (status code, body).
    fn request(port: u16, raw: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The server may answer and close before reading everything (an oversized request).
        let _ = s.write_all(raw);
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let code = resp
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status in {resp:?}"));
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (code, body)
    }

    fn get(port: u16, path: &str) -> (u16, String) {
        request(
            port,
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_metrics_health_readiness_and_status() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("er_test_things_total", "site" => "plant-7").increment(3);
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoints = Arc::new(Endpoints::default());
        spawn(listener, handle, endpoints.clone());

        let port2 = port;
        let (code, body) = tokio::task::spawn_blocking(move || get(port2, "/metrics"))
            .await
            .unwrap();
        assert_eq!(code, 200);
        assert!(
            body.contains("er_test_things_total{site=\"plant-7\"} 3"),
            "{body}"
        );

        let run = move |path: &'static str| tokio::task::spawn_blocking(move || get(port, path));
        assert_eq!(run("/healthz").await.unwrap(), (200, "ok\n".to_owned()));

        let (code, body) = run("/readyz").await.unwrap();
        assert_eq!(
            code, 503,
            "not ready before the binary registered its checks"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ready"], false);
        assert_eq!(v["checks"][0]["name"], "started");
        assert_eq!(run("/status").await.unwrap().0, 503);

        let kafka_ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let k = kafka_ok.clone();
        endpoints.set_readiness(move || {
            vec![
                Check::new("listening", true, "udp 127.0.0.1:4433"),
                Check::new(
                    "cluster:central",
                    k.load(std::sync::atomic::Ordering::Relaxed),
                    "metadata",
                ),
            ]
        });
        endpoints.set_status(|| serde_json::json!({"hub_id": "hub-1", "sites_connected": 2}));

        let (code, body) = run("/readyz").await.unwrap();
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ready"], true);
        assert_eq!(v["checks"][1]["name"], "cluster:central");

        kafka_ok.store(false, std::sync::atomic::Ordering::Relaxed);
        let (code, body) = run("/readyz").await.unwrap();
        assert_eq!(code, 503, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["checks"][1]["ok"], false);
        assert_eq!(v["checks"][0]["ok"], true);

        let (code, body) = run("/status").await.unwrap();
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["sites_connected"], 2);

        assert_eq!(run("/").await.unwrap().0, 404, "no page registered");
        assert_eq!(
            run("/status/plant-7").await.unwrap().0,
            404,
            "no detail registered"
        );
        endpoints.set_page("<!doctype html><title>console</title>");
        endpoints.set_detail(|name| (name == "plant 7").then(|| serde_json::json!({"site": name})));
        let (code, body) = run("/").await.unwrap();
        assert_eq!(
            (code, body.as_str()),
            (200, "<!doctype html><title>console</title>")
        );
        let (code, body) = run("/status/plant%207").await.unwrap();
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["site"],
            "plant 7"
        );
        assert_eq!(run("/status/plant-8").await.unwrap().0, 404);
        let post = tokio::task::spawn_blocking(move || {
            request(
                port,
                b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            )
        });
        assert_eq!(post.await.unwrap().0, 405);
        let huge = tokio::task::spawn_blocking(move || {
            let mut raw = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
            // Past the limit, yet small enough to be read whole (no reset before the answer).
            raw.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES + 512));
            raw.extend(b"\r\n\r\n");
            request(port, &raw)
        });
        assert_eq!(huge.await.unwrap().0, 431, "oversized headers refused");
    }
}
