//! Reading another process's status endpoint (`hub status`, `edge-agent status`): one plain
//! HTTP/1.1 GET over loopback or a LAN with hyper's client, bounded in time and size; and the
//! text table both print.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper_util::rt::TokioIo;

/// Largest body read from a status endpoint (a hub with many thousand sites stays below it).
pub const MAX_STATUS_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Why a status document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not `http://host:port/path`.
    #[error("{url:?} is not an http://host:port/path URL: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No TCP connection (refused, unreachable, name not resolved).
    #[error("cannot reach {what} at {url}: {source}")]
    Connect {
        /// What was asked for (`hub status`, ...).
        what: &'static str,
        /// The URL.
        url: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The exchange failed after connecting, or the body was too large.
    #[error("{what} at {url}: {message}")]
    Http {
        /// What was asked for.
        what: &'static str,
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// No answer within the timeout.
    #[error("{what} at {url}: no answer within {timeout:?}")]
    Timeout {
        /// What was asked for.
        what: &'static str,
        /// The URL.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// An answer, but not a 200 with JSON.
    #[error("{what} at {url}: HTTP {code}: {body}")]
    Status {
        /// What was asked for.
        what: &'static str,
        /// The URL.
        url: String,
        /// The HTTP status code.
        code: u16,
        /// The start of the body.
        body: String,
    },
    /// A 200 whose body is not the JSON expected.
    #[error("{what} at {url}: not the expected JSON: {message}")]
    Json {
        /// What was asked for.
        what: &'static str,
        /// The URL.
        url: String,
        /// The parser's message.
        message: String,
    },
}

/// Appends `header` and `rows` to `out` as a table: each line starts with `indent`, columns are
/// left-aligned to their widest cell (in characters) and two spaces apart, trailing blanks cut.
pub fn text_table<R: AsRef<[String]>>(header: &[&str], rows: &[R], indent: &str, out: &mut String) {
    use std::fmt::Write as _;
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row.as_ref()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{indent}{}", text.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.as_ref().iter().map(String::as_str));
    }
}

/// Parses `url` (only `http://`, with a host; the path defaults to `default_path`).
pub fn parse_url(url: &str, default_path: &str) -> Result<Uri, FetchError> {
    let bad = |reason: &str| FetchError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// is served by the status endpoint"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
    if authority.host().is_empty() {
        return Err(bad("no host"));
    }
    if authority.port_u16().is_none() {
        return Err(bad("no port (the [metrics] listen port, e.g. :9465)"));
    }
    let path = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("/") | Some("") => default_path,
        Some(p) => p,
    };
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| bad(&e.to_string()))
}

/// The status URL of a `[metrics] listen` address: a wildcard address is asked on loopback.
pub fn url_for_listen(addr: std::net::SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!(
        "http://{}/status",
        std::net::SocketAddr::new(ip, addr.port())
    )
}

/// `hub status` / `edge-agent status`: resolves the `/status` URL (`url`, or the metrics
/// listener `listen` of the config file `config` names) and shows the document on a runtime of
/// its own. `what` names the command and `file` the config kind in messages.
pub fn run_status_command<T: serde::de::DeserializeOwned>(
    what: &'static str,
    file: &str,
    request: StatusRequest,
    metrics_listen: impl FnOnce(&std::path::Path) -> anyhow::Result<Option<std::net::SocketAddr>>,
    render: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    let url = match (request.url, &request.config) {
        (Some(u), _) => u,
        (None, Some(path)) => url_for_listen(metrics_listen(path)?.ok_or_else(|| {
            anyhow::anyhow!(
                "config {}: metrics.listen is not set, so nothing serves /status; set it or pass --url",
                path.display()
            )
        })?),
        (None, None) => anyhow::bail!("--config <{file}> or --url is required"),
    };
    let uri = parse_url(&url, "/status")?;
    let options = ShowOptions {
        json: request.json,
        watch: request.watch.map(Duration::from_secs),
        timeout: Duration::from_secs(request.timeout_s),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(show(what, &uri, options, render))?;
    Ok(())
}

/// What `hub status` / `edge-agent status` were asked on their command lines.
#[derive(Debug, Clone)]
pub struct StatusRequest {
    /// The binary's config file, whose `[metrics] listen` serves `/status`.
    pub config: Option<std::path::PathBuf>,
    /// The status endpoint, instead of a config.
    pub url: Option<String>,
    /// Print the JSON document instead of the table.
    pub json: bool,
    /// Refresh every this many seconds.
    pub watch: Option<u64>,
    /// Seconds to wait for the answer.
    pub timeout_s: u64,
}

/// How `hub status` / `edge-agent status` show a status document.
#[derive(Debug, Clone, Copy)]
pub struct ShowOptions {
    /// Print the JSON document (one line per refresh) instead of the table.
    pub json: bool,
    /// Refresh every this long until interrupted; once when `None`.
    pub watch: Option<Duration>,
    /// Timeout of one request.
    pub timeout: Duration,
}

/// Reads the document at `uri` and prints it to standard output: `render`'s text, or the JSON
/// the endpoint sent. Once: an error is returned. With `watch`: the screen is redrawn every
/// interval (on a terminal; otherwise each refresh follows the last), an unreachable endpoint
/// is shown and asked again, and it ends only when interrupted.
pub async fn show<T: serde::de::DeserializeOwned>(
    what: &'static str,
    uri: &Uri,
    options: ShowOptions,
    render: impl Fn(&T) -> String,
) -> Result<(), FetchError> {
    use std::io::{IsTerminal, Write};
    let print = |text: &str| {
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) ends the output, not the process with a panic.
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    };
    loop {
        let got = get_json::<serde_json::Value>(what, uri, options.timeout).await;
        let text = got.and_then(|v| {
            if options.json {
                Ok(format!("{v}\n"))
            } else {
                serde_json::from_value::<T>(v)
                    .map(|doc| render(&doc))
                    .map_err(|e| FetchError::Json {
                        what,
                        url: uri.to_string(),
                        message: e.to_string(),
                    })
            }
        });
        let Some(every) = options.watch else {
            print(&text?);
            return Ok(());
        };
        let text = text.unwrap_or_else(|e| format!("{e}\n"));
        if std::io::stdout().is_terminal() && !options.json {
            print(&format!("\x1b[2J\x1b[H{text}"));
        } else {
            print(&text);
        }
        tokio::time::sleep(every).await;
    }
}

/// GETs `uri` and parses its JSON body into `T`. `what` names the endpoint in errors.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    uri: &Uri,
    timeout: Duration,
) -> Result<T, FetchError> {
    match tokio::time::timeout(timeout, get(what, uri)).await {
        Ok(r) => {
            let body = r?;
            serde_json::from_slice(&body).map_err(|e| FetchError::Json {
                what,
                url: uri.to_string(),
                message: e.to_string(),
            })
        }
        Err(_) => Err(FetchError::Timeout {
            what,
            url: uri.to_string(),
            timeout,
        }),
    }
}

async fn get(what: &'static str, uri: &Uri) -> Result<Bytes, FetchError> {
    let url = uri.to_string();
    let http = |message: String| FetchError::Http {
        what,
        url: url.clone(),
        message,
    };
    let authority = uri.authority().expect("checked by parse_url");
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().expect("checked by parse_url");
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|source| FetchError::Connect {
            what,
            url: url.clone(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| http(e.to_string()))?;
    let code = resp.status();
    let body = Limited::new(resp.into_body(), MAX_STATUS_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| http(format!("reading the body: {e}")))?
        .to_bytes();
    driver.abort();
    if !code.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(FetchError::Status {
            what,
            url,
            code: code.as_u16(),
            body: text.chars().take(300).collect::<String>().trim().to_owned(),
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_take_a_default_path_and_refuse_what_cannot_be_served() {
        let ok = [
            ("http://127.0.0.1:9465", "http://127.0.0.1:9465/status"),
            ("http://127.0.0.1:9465/", "http://127.0.0.1:9465/status"),
            ("http://hub-1:9465/status", "http://hub-1:9465/status"),
            ("http://[::1]:9465", "http://[::1]:9465/status"),
        ];
        for (given, want) in ok {
            assert_eq!(parse_url(given, "/status").unwrap().to_string(), want);
        }
        for bad in [
            "https://h:1/status",
            "h:1",
            "http://h/status",
            "http://:1/x",
            "nonsense",
        ] {
            let e = parse_url(bad, "/status").unwrap_err();
            assert!(matches!(e, FetchError::BadUrl { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn a_wildcard_listen_address_is_asked_on_loopback() {
        let cases = [
            ("0.0.0.0:9465", "http://127.0.0.1:9465/status"),
            ("[::]:9465", "http://[::1]:9465/status"),
            ("10.1.2.3:9465", "http://10.1.2.3:9465/status"),
        ];
        for (listen, want) in cases {
            assert_eq!(url_for_listen(listen.parse().unwrap()), want);
        }
    }

    #[tokio::test]
    async fn a_closed_port_says_it_cannot_reach_the_endpoint() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let uri = parse_url(&format!("http://127.0.0.1:{port}"), "/status").unwrap();
        let e = get_json::<serde_json::Value>("hub status", &uri, Duration::from_secs(5))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "cannot reach hub status at http://127.0.0.1:{port}/status: "
            )),
            "{msg}"
        );
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_json_and_reports_http_errors_with_their_body() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoints = std::sync::Arc::new(crate::status::Endpoints::default());
        crate::status::spawn(listener, recorder.handle(), endpoints.clone());
        let uri = parse_url(&format!("http://127.0.0.1:{port}"), "/status").unwrap();
        let e = get_json::<serde_json::Value>("hub status", &uri, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, FetchError::Status { code: 503, body, .. } if body.contains("starting")),
            "{e}"
        );
        endpoints.set_status(|| serde_json::json!({"hub_id": "h"}));
        let v: serde_json::Value = get_json("hub status", &uri, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(v["hub_id"], "h");
    }
}
