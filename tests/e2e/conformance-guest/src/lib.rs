//! What Spin's conformance cases ask of a host, answered from inside a guest. Built for
//! `wasm32-wasip1`, so it is a core module (with wit-bindgen's component-type section and
//! `wasi_snapshot_preview1` imports) that the runner has to turn into a component.
//!
//! The request's `probe` header picks what it does:
//! - none: answers the request's `spin-*` headers, in order, as JSON `[[name, value], ...]`
//!   (duplicates would show), plus its path and query;
//! - `kv-spin` / `kv-wasi`: opens the store named by the `label` header through
//!   `fermyon:spin/key-value` or `wasi:keyvalue/store`, and answers `ok` (after a set and
//!   get round trip) or the error's name;
//! - `outbound`: GETs the `url` header with outbound `wasi:http` and answers
//!   `status <code>: <body>` or `error: <ErrorCode>`;
//! - `redis-connections`: opens outbound Redis at the `url` header twice; on the first
//!   connection `SELECT 1`, then `SET` of the `key` header; on the second, `GET` of it
//!   and `CLIENT ID` on both: answers `second sees <value or nil>, same client <bool>`.
//!   On Spin every `open` is a connection of its own, so it is always
//!   `second sees nil, same client false`, and the key is in database 1;
//! - `redis-blocking`: opens outbound Redis at the `url` header and sends, through
//!   `execute`, `BLPOP` of the `key` header for the `seconds` header's seconds: answers
//!   `answered <results>` once Redis answers, or `error: <what failed>`. Spin's outbound
//!   Redis sets no response timeout, so a command Redis holds for a while is answered;
//! - `kv-idle`: opens the store `default` through `fermyon:spin/key-value`, sets a key,
//!   waits the `ms` header's milliseconds, then reads the key back: answers `ok` or
//!   `error: <what the get returned>` (how a host's store behaves when Redis drops the
//!   connection between two calls of one instance);
//! - `instance`: answers `requests before <n>, dirty bytes <m>` (what earlier requests
//!   left in this instance's globals and in a 1 MiB static buffer), then dirties both and
//!   1 MiB of heap: on a fresh instance, as Spin gives every request, it is always
//!   `requests before 0, dirty bytes 0`.

use spin_sdk::http::{IncomingRequest, Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::{Error as SpinKvError, Store};
use spin_sdk::wit::wasi::keyvalue::store as wasi_store;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[http_component]
async fn handle(request: IncomingRequest) -> Response {
    let headers = request.headers().entries();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    // Written through WASI preview 1's fd_write, which the adapter must carry to stdout.
    println!(
        "conformance-guest: {}",
        request.path_with_query().unwrap_or_default()
    );
    let body = match header("probe").as_deref() {
        None => spin_headers(&request, &headers),
        Some("kv-spin") => open_spin_store(&header("label").unwrap_or_default()),
        Some("kv-wasi") => open_wasi_bucket(&header("label").unwrap_or_default()),
        Some("outbound") => outbound_get(header("url").unwrap_or_default()).await,
        Some("redis-connections") => redis_connections(
            &header("url").unwrap_or_default(),
            &header("key").unwrap_or_default(),
        ),
        Some("redis-blocking") => redis_blocking(
            &header("url").unwrap_or_default(),
            &header("key").unwrap_or_default(),
            header("seconds").and_then(|s| s.parse().ok()).unwrap_or(0),
        ),
        Some("kv-idle") => set_wait_get(header("ms").and_then(|ms| ms.parse().ok()).unwrap_or(0)),
        Some("instance") => what_earlier_requests_left(),
        Some(other) => return text(400, format!("unknown probe {other:?}")),
    };
    text(200, body)
}

static REQUESTS: AtomicU64 = AtomicU64::new(0);
static SCRATCH: Mutex<[u8; 1 << 20]> = Mutex::new([0; 1 << 20]);

fn what_earlier_requests_left() -> String {
    let before = REQUESTS.fetch_add(1, Ordering::Relaxed);
    let mut scratch = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
    let dirty = scratch.iter().filter(|&&b| b != 0).count();
    scratch.fill(0xa5);
    // Heap pages too: a later instance reusing this memory slot must not see them.
    std::mem::forget(vec![0x5au8; 1 << 20]);
    format!("requests before {before}, dirty bytes {dirty}")
}

fn spin_headers(request: &IncomingRequest, headers: &[(String, Vec<u8>)]) -> String {
    let spin: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| name.to_ascii_lowercase().starts_with("spin-"))
        .map(|(name, value)| {
            (
                name.to_ascii_lowercase(),
                String::from_utf8_lossy(value).into_owned(),
            )
        })
        .collect();
    serde_json::json!({
        "path_with_query": request.path_with_query(),
        "spin_headers": spin,
    })
    .to_string()
}

fn open_spin_store(label: &str) -> String {
    match Store::open(label) {
        Ok(store) => round_trip(
            store
                .set("conformance", b"spin")
                .map_err(|e| format!("{e:?}")),
            store.get("conformance").map_err(|e| format!("{e:?}")),
            b"spin",
        ),
        Err(SpinKvError::AccessDenied) => "access-denied".to_owned(),
        Err(SpinKvError::NoSuchStore) => "no-such-store".to_owned(),
        Err(other) => format!("{other:?}"),
    }
}

fn open_wasi_bucket(label: &str) -> String {
    match wasi_store::open(label) {
        Ok(bucket) => round_trip(
            bucket
                .set("conformance", b"wasi")
                .map_err(|e| format!("{e:?}")),
            bucket.get("conformance").map_err(|e| format!("{e:?}")),
            b"wasi",
        ),
        Err(wasi_store::Error::AccessDenied) => "access-denied".to_owned(),
        Err(wasi_store::Error::NoSuchStore) => "no-such-store".to_owned(),
        Err(other) => format!("{other:?}"),
    }
}

fn set_wait_get(ms: u64) -> String {
    let store = match Store::open("default") {
        Ok(store) => store,
        Err(e) => return format!("error: open: {e:?}"),
    };
    if let Err(e) = store.set("idle", b"value") {
        return format!("error: set: {e:?}");
    }
    std::thread::sleep(std::time::Duration::from_millis(ms));
    match store.get("idle") {
        Ok(Some(value)) if value == b"value" => "ok".to_owned(),
        Ok(other) => format!("error: get answered {other:?}"),
        Err(e) => format!("error: get: {e:?}"),
    }
}

fn redis_connections(url: &str, key: &str) -> String {
    use spin_sdk::redis::{Connection, RedisParameter, RedisResult};
    let run = || -> Result<String, String> {
        let open = || Connection::open(url).map_err(|e| format!("open: {e}"));
        let client_id = |connection: &Connection| {
            connection
                .execute("CLIENT", &[RedisParameter::Binary(b"ID".to_vec())])
                .map_err(|e| format!("CLIENT ID: {e}"))
        };
        let first = open()?;
        first
            .execute("SELECT", &[RedisParameter::Int64(1)])
            .map_err(|e| format!("SELECT: {e}"))?;
        first
            .set(key, b"first".as_ref())
            .map_err(|e| format!("SET: {e}"))?;
        let second = open()?;
        let seen = match second.get(key).map_err(|e| format!("GET: {e}"))? {
            Some(value) => String::from_utf8_lossy(&value).into_owned(),
            None => "nil".to_owned(),
        };
        let same = match (
            client_id(&first)?.as_slice(),
            client_id(&second)?.as_slice(),
        ) {
            ([RedisResult::Int64(a)], [RedisResult::Int64(b)]) => a == b,
            other => return Err(format!("CLIENT ID answered {other:?}")),
        };
        Ok(format!("second sees {seen}, same client {same}"))
    };
    run().unwrap_or_else(|e| format!("error: {e}"))
}

fn redis_blocking(url: &str, key: &str, seconds: i64) -> String {
    use spin_sdk::redis::{Connection, RedisParameter};
    let connection = match Connection::open(url) {
        Ok(connection) => connection,
        Err(e) => return format!("error: open: {e}"),
    };
    let arguments = [
        RedisParameter::Binary(key.as_bytes().to_vec()),
        RedisParameter::Int64(seconds),
    ];
    match connection.execute("BLPOP", &arguments) {
        Ok(results) => format!("answered {results:?}"),
        Err(e) => format!("error: BLPOP: {e}"),
    }
}

fn round_trip(
    set: Result<(), String>,
    get: Result<Option<Vec<u8>>, String>,
    expected: &[u8],
) -> String {
    match (set, get) {
        (Ok(()), Ok(Some(value))) if value == expected => "ok".to_owned(),
        (set, get) => format!("opened, but set gave {set:?} and get gave {get:?}"),
    }
}

async fn outbound_get(url: String) -> String {
    let request = Request::builder().method(Method::Get).uri(url).build();
    match spin_sdk::http::send::<_, Response>(request).await {
        Ok(response) => format!(
            "status {}: {}",
            response.status(),
            String::from_utf8_lossy(response.body())
        ),
        Err(spin_sdk::http::SendError::Http(code)) => format!("error: {code:?}"),
        Err(other) => format!("error: {other}"),
    }
}

fn text(status: u16, body: String) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body)
        .build()
}
