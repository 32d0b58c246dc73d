//! `devmail`: a local stand-in for the mail providers the shop can use (Resend,
//! Postmark, SendGrid, Mailpit). It speaks their send APIs and error bodies, keeps what
//! it accepted (JSON at `/__devmail/messages`, an inbox page at `/`), and can be told to
//! fail or delay the next requests, so tests exercise the shop's retry and refusal paths.
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set it exports a `SERVER` span per send request
//! (service `devmail`), continuing the caller's `traceparent`, failed with the
//! provider's message on a refusal: the shop's trace ends inside the "provider".

mod providers;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use providers::{Answer, Provider};

/// Largest request body accepted (larger: 413 in the provider's shape).
const MAX_BODY: usize = 1024 * 1024;
/// How much of a larger body is still read (and dropped) before answering 413, so that a
/// client still sending gets the answer rather than a reset connection.
const MAX_BODY_DRAINED: usize = 16 * MAX_BODY;
/// Resend's limit on `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 256;

#[derive(Parser)]
#[command(
    version,
    about = "Dev mail API: Resend/Postmark/SendGrid/Mailpit send endpoints with an inbox"
)]
struct Cli {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8025")]
    listen: String,
    /// API key the providers require; without it any non-empty key is accepted.
    #[arg(long)]
    api_key: Option<String>,
    /// A verified sender domain (repeatable); without any, every domain is verified.
    #[arg(long = "verified-domain")]
    verified_domains: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Message {
    id: String,
    provider: &'static str,
    from: String,
    to: Vec<String>,
    subject: String,
    text: String,
    html: String,
    received_at: String,
    idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Attempt {
    provider: &'static str,
    path: String,
    status: u16,
    idempotency_key: Option<String>,
    at: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct Faults {
    /// How many of the next send requests are affected.
    count: u32,
    /// Status to fail with; 0 or absent = only delay, then process normally.
    #[serde(default)]
    status: u16,
    #[serde(default)]
    delay_ms: u64,
    /// Refuse the sender as unverified, whatever its domain (a provider whose domain
    /// verification lapsed for a while).
    #[serde(default)]
    unverified: bool,
}

/// Resend idempotency: the body's hash and the answer given, or "still running".
enum Remembered {
    InProgress,
    Done(String, Answer),
}

#[derive(Default)]
struct State {
    messages: Vec<Message>,
    attempts: Vec<Attempt>,
    faults: Faults,
    idempotency: HashMap<String, Remembered>,
    next_id: u64,
}

struct DevMail {
    api_key: Option<String>,
    verified_domains: Vec<String>,
    state: Mutex<State>,
    /// Set when spans are exported.
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
}

impl DevMail {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn verified(&self, from: &str) -> bool {
        let domain = providers::domain_of(from);
        self.verified_domains.is_empty()
            || self
                .verified_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&domain))
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // Made before the async runtime (its HTTP client blocks), flushed after it.
    let pipeline = host_telemetry::Pipeline::from_env("devmail")?;
    let tracer = pipeline
        .as_ref()
        .map(|p| opentelemetry::trace::TracerProvider::tracer(&p.provider, "devmail"));
    let app = Arc::new(DevMail {
        api_key: cli.api_key,
        verified_domains: cli.verified_domains,
        state: Mutex::new(State::default()),
        tracer,
    });
    let result = tokio::runtime::Runtime::new()?.block_on(serve(app, &cli.listen));
    if let Some(pipeline) = pipeline {
        pipeline.shutdown();
    }
    result
}

async fn serve(app: Arc<DevMail>, listen: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("devmail listening on http://{}", listener.local_addr()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(&app, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    Ok(())
}

/// The `since=N` of a query string (0 when absent or not a number).
fn since(query: Option<&str>) -> usize {
    query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("since="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn route(app: &DevMail, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let answer = match (&method, path.as_str()) {
        (&Method::POST, p) if Provider::from_path(p).is_some() => traced_send(app, req).await,
        // `?since=N`: only the messages after the first N, so that a poller (the
        // benchmark) reads each message once.
        (&Method::GET, "/__devmail/messages") => {
            let since = since(req.uri().query());
            let state = app.state();
            Answer::json(200, json!(state.messages.get(since..).unwrap_or_default()))
        }
        (&Method::DELETE, "/__devmail/messages") => {
            let mut state = app.state();
            state.messages.clear();
            state.attempts.clear();
            state.idempotency.clear();
            Answer::json(200, json!({ "cleared": true }))
        }
        (&Method::GET, "/__devmail/requests") => Answer::json(200, json!(app.state().attempts)),
        (&Method::POST, "/__devmail/faults") => match read_body(req).await {
            Ok(body) => match serde_json::from_slice::<Faults>(&body) {
                Ok(faults) => {
                    app.state().faults = faults.clone();
                    Answer::json(
                        200,
                        json!({ "count": faults.count, "status": faults.status, "delay_ms": faults.delay_ms, "unverified": faults.unverified }),
                    )
                }
                Err(e) => Answer::json(
                    400,
                    json!({ "error": format!("expected {{count, status?, delay_ms?}}: {e}") }),
                ),
            },
            Err(_) => Answer::json(413, json!({ "error": "body too large" })),
        },
        (&Method::DELETE, "/__devmail/faults") => {
            app.state().faults = Faults::default();
            Answer::json(200, json!({ "cleared": true }))
        }
        (&Method::GET, "/__devmail/health") => Answer::text(200, "ok"),
        (&Method::GET, "/") => inbox(&app.state().messages),
        _ => Answer::json(
            404,
            json!({ "error": format!("no route for {method} {path}") }),
        ),
    };
    tracing::info!("{method} {path} -> {}", answer.status);
    let mut builder = Response::builder()
        .status(answer.status)
        .header("content-type", answer.content_type);
    for (name, value) in &answer.headers {
        builder = builder.header(*name, value);
    }
    builder
        .body(Full::new(Bytes::from(answer.body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"internal error"))))
}

/// The request body, or Err if it is over [`MAX_BODY`] (or unreadable).
async fn read_body(req: Request<Incoming>) -> Result<Bytes, ()> {
    let body = Limited::new(req.into_body(), MAX_BODY_DRAINED)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|_| ())?;
    if body.len() > MAX_BODY {
        return Err(());
    }
    Ok(body)
}

/// [`send`] in a `SERVER` span continuing the caller's trace, as the provider's own
/// API server would be traced.
async fn traced_send(app: &DevMail, req: Request<Incoming>) -> Answer {
    use opentelemetry::trace::{Span, SpanKind, Status, Tracer};
    use opentelemetry::KeyValue;
    let Some(tracer) = &app.tracer else {
        return send(app, req).await;
    };
    let path = req.uri().path().to_owned();
    let provider = Provider::from_path(&path).map_or("unknown", Provider::name);
    let mut span = tracer
        .span_builder(format!("POST {path}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", path.clone()),
            KeyValue::new("url.path", path),
            KeyValue::new("shop.mail.provider", provider),
        ])
        .start_with_context(tracer, &host_telemetry::extract(req.headers()));
    let answer = send(app, req).await;
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(answer.status),
    ));
    if answer.status >= 400 {
        // The provider's own words, as its error body gives them.
        let message: String = String::from_utf8_lossy(&answer.body)
            .chars()
            .take(500)
            .collect();
        span.add_event(
            "exception",
            vec![KeyValue::new("exception.message", message.clone())],
        );
        span.set_status(Status::error(format!("{} {message}", answer.status)));
    }
    span.end();
    answer
}

/// One send request, whichever provider's API it is addressed to.
async fn send(app: &DevMail, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_owned();
    let provider = Provider::from_path(&path).expect("routed by provider path");
    let headers = req.headers().clone();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let idempotency_key = match provider {
        Provider::Resend => header("idempotency-key"),
        _ => None,
    };

    let answer = send_inner(app, provider, req, &header, idempotency_key.as_deref()).await;
    let mut state = app.state();
    state.attempts.push(Attempt {
        provider: provider.name(),
        path,
        status: answer.status,
        idempotency_key,
        at: now(),
    });
    answer
}

async fn send_inner(
    app: &DevMail,
    provider: Provider,
    req: Request<Incoming>,
    header: &impl Fn(&str) -> Option<String>,
    idempotency_key: Option<&str>,
) -> Answer {
    let body = match read_body(req).await {
        Ok(body) => body,
        Err(()) => return providers::too_large(provider),
    };

    // Injected faults come first: the provider is "down" whatever the request says.
    let fault = {
        let mut state = app.state();
        if state.faults.count > 0 {
            state.faults.count -= 1;
            Some(state.faults.clone())
        } else {
            None
        }
    };
    // A delayed request holds its Resend key "in progress" meanwhile; only the request
    // that marked the key frees it, if it ends without an answer to remember.
    let claimed = match (idempotency_key, &fault) {
        (Some(key), Some(fault)) if fault.delay_ms > 0 => {
            let mut state = app.state();
            let free = !state.idempotency.contains_key(key);
            if free {
                state
                    .idempotency
                    .insert(key.to_owned(), Remembered::InProgress);
            }
            free.then_some(key)
        }
        _ => None,
    };
    let holds_key = claimed.is_some();
    let answer = answer_send(
        app,
        provider,
        &body,
        fault,
        holds_key,
        header,
        idempotency_key,
    )
    .await;
    if let Some(key) = claimed {
        let mut state = app.state();
        if matches!(state.idempotency.get(key), Some(Remembered::InProgress)) {
            state.idempotency.remove(key);
        }
    }
    answer
}

/// The answer to a send request whose body is read and whose fault, if any, is drawn.
/// `holds_key`: this request marked its idempotency key in progress.
async fn answer_send(
    app: &DevMail,
    provider: Provider,
    body: &[u8],
    fault: Option<Faults>,
    holds_key: bool,
    header: &impl Fn(&str) -> Option<String>,
    idempotency_key: Option<&str>,
) -> Answer {
    let refuse_sender = fault.as_ref().is_some_and(|f| f.unverified);
    if let Some(fault) = fault {
        if fault.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
        }
        if fault.status > 0 {
            return providers::injected(provider, fault.status);
        }
    }

    if let Err(answer) = providers::authenticate(provider, header, app.api_key.as_deref()) {
        return answer;
    }
    let hash = body_hash(body);
    if let Some(key) = idempotency_key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
            return providers::error(
                provider,
                400,
                "invalid_idempotency_key",
                "The key must be between 1-256 chars.",
            );
        }
        match app.state().idempotency.get(key) {
            Some(Remembered::Done(seen, answer)) if *seen == hash => return answer.clone(),
            Some(Remembered::Done(..)) => {
                return providers::error(provider, 409, "invalid_idempotent_request", "Same idempotency key used with a different request payload. Change your idempotency key or payload.")
            }
            Some(Remembered::InProgress) if !holds_key => {
                return providers::error(provider, 409, "concurrent_idempotent_requests", "Same idempotency key used while original request is still in progress. Try the request again later.")
            }
            _ => {}
        }
    }
    let mail = match providers::parse(provider, body) {
        Ok(mail) => mail,
        Err(answer) => return answer,
    };
    if provider != Provider::Mailpit && (refuse_sender || !app.verified(&mail.from)) {
        return providers::unverified_sender(provider, &mail.from);
    }

    let mut state = app.state();
    state.next_id += 1;
    let id = message_id(state.next_id, &hash);
    let at = now();
    let answer = providers::accepted(provider, &id, &mail, &at);
    state.messages.push(Message {
        id,
        provider: provider.name(),
        from: mail.from,
        to: mail.to,
        subject: mail.subject,
        text: mail.text,
        html: mail.html,
        received_at: at,
        idempotency_key: idempotency_key.map(str::to_owned),
    });
    if let Some(key) = idempotency_key {
        state
            .idempotency
            .insert(key.to_owned(), Remembered::Done(hash, answer.clone()));
    }
    answer
}

fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// A UUID-shaped id, unique within this process.
fn message_id(n: u64, hash: &str) -> String {
    format!(
        "{:08x}-{}-4{}-a{}-{:012x}",
        n,
        &hash[0..4],
        &hash[4..7],
        &hash[7..10],
        n
    )
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The inbox page: newest first; HTML bodies shown in a sandboxed frame.
fn inbox(messages: &[Message]) -> Answer {
    let mut rows = String::new();
    for m in messages.iter().rev() {
        rows.push_str(&format!(
            "<article><h2>{}</h2><p class=meta>{} &middot; from <b>{}</b> to <b>{}</b> via {}</p><pre>{}</pre>{}</article>",
            escape(&m.subject),
            escape(&m.received_at),
            escape(&m.from),
            escape(&m.to.join(", ")),
            m.provider,
            escape(&m.text),
            if m.html.is_empty() {
                String::new()
            } else {
                format!("<iframe sandbox srcdoc=\"{}\"></iframe>", escape(&m.html))
            },
        ));
    }
    if rows.is_empty() {
        rows.push_str("<p>No mail yet. Place an order and it will appear here.</p>");
    }
    let page = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>devmail inbox ({count})</title>\
         <meta http-equiv=refresh content=5>\
         <style>body{{font-family:system-ui,sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem}}\
         article{{border:1px solid #ccc;border-radius:6px;padding:0 1rem 1rem;margin:1rem 0}}\
         .meta{{color:#555}}pre{{white-space:pre-wrap;background:#f6f6f6;padding:.5rem}}\
         iframe{{width:100%;height:12rem;border:1px solid #ddd}}</style></head>\
         <body><h1>devmail inbox</h1><p>{count} message(s); JSON at <a href=/__devmail/messages>/__devmail/messages</a></p>{rows}</body></html>",
        count = messages.len()
    );
    Answer {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: page.into_bytes(),
        headers: Vec::new(),
    }
}
