//! The bodies of the fuzz targets: each takes arbitrary bytes, feeds them to one of the
//! shop's parsers the way the outside world can, and panics only if a promise is
//! broken. `fuzz/fuzz_targets/*.rs` hands them to libFuzzer (`make fuzz`); the tests
//! of this crate replay every seed and past finding in `fuzz/corpus/` and random inputs
//! through them on the stable toolchain (`make test`).
//!
//! | Target | Input | Promise |
//! | --- | --- | --- |
//! | [`order_request`] | `POST /api/orders`: body and `Idempotency-Key` bytes | an order or an RFC 9457 problem (400/422) naming fields by JSON Pointer or `header:`; never the card number in it |
//! | [`event_envelope`] | a Redis message | an event that re-encodes to itself, or a decode error |
//! | [`mail_response`] | a provider's answer: status and body | sent, permanent or transient as the status says; a short, printable message |
//! | [`app_manifest`] | `spin.toml` | an application or an error; never a panic; a host name passes `allowed_outbound_hosts` only by name or wildcard, never by an address or CIDR range |
//! | [`runtime_config`] | `runtime-config.toml` | a store map or an error; never a panic |
//! | [`route`] | a route and a request path | a route or an error; a match's path info is the path's tail (none for an exact route), with one of each `spin-*` header |

use chrono::NaiveDate;
use shop_domain::checkout;
use shop_domain::event;
use shop_domain::mail::{self, Delivery, Provider};
use spin_app_config::app::{AppConfig, Overrides};
use spin_app_config::manifest::RuntimeConfig;
use spin_app_config::routes::Router;

use shop_domain::mail::MAX_PROVIDER_MESSAGE_CHARS;

/// Splits `data` at its first 0xFF byte: what comes before, and after (empty if none).
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Bytes 0xFF-separated: `Idempotency-Key` (absent if the input has no separator),
/// then the body.
pub fn order_request(data: &[u8]) {
    let (key, body) = match data.iter().position(|b| *b == 0xFF) {
        Some(_) => {
            let (key, body) = split(data);
            (Some(key), body)
        }
        None => (None, data),
    };
    let today = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap_or_default();
    match checkout::validate(body, key, today) {
        Ok(placement) => assert!(placement.item_count() >= 1),
        Err(problem) => {
            assert!(
                matches!(problem.status, 400 | 422),
                "status {}",
                problem.status
            );
            for error in &problem.errors {
                assert!(
                    error.pointer.is_empty()
                        || error.pointer.starts_with('/')
                        || error.pointer.starts_with("header:"),
                    "pointer {:?}",
                    error.pointer
                );
            }
            let rendered = String::from_utf8_lossy(&problem.to_json()).into_owned();
            let parsed: serde_json::Value =
                serde_json::from_str(&rendered).expect("a problem is JSON");
            assert_eq!(parsed["status"], problem.status);
            // The card number never comes back in an answer, whatever else is wrong.
            if let Some(number) = card_number(body) {
                assert!(
                    !rendered.contains(&number),
                    "card number echoed: {rendered}"
                );
            }
        }
    }
}

/// The digits of `card.number` in a JSON body, if there are enough to be a card.
fn card_number(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let number = value.get("card")?.get("number")?.as_str()?;
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    (digits.len() >= 12).then_some(digits)
}

/// A Redis message as fulfilment receives it.
pub fn event_envelope(data: &[u8]) {
    if let Ok(event) = event::decode(data) {
        let again = event::decode(&event.to_json()).expect("an event re-encodes");
        assert_eq!(again, event);
    }
}

/// Byte 0: provider; bytes 1-2: status (big-endian); the rest: body.
pub fn mail_response(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let provider = Provider::ALL[usize::from(which) % Provider::ALL.len()];
    let (status, body) = match rest {
        [hi, lo, body @ ..] => (u16::from_be_bytes([*hi, *lo]) % 600, body),
        _ => (200, rest),
    };
    let check_message = |message: &str| {
        assert!(
            message.chars().count() <= MAX_PROVIDER_MESSAGE_CHARS,
            "message of {} chars",
            message.chars().count()
        );
        assert!(
            !message.chars().any(char::is_control),
            "control character in {message:?}"
        );
    };
    match mail::classify(provider, status, body, None) {
        Delivery::Sent { message_id } => {
            assert!((200..300).contains(&status));
            if let Some(id) = message_id {
                check_message(&id);
            }
        }
        Delivery::Transient { status: s, message } => {
            assert_eq!(s, status);
            assert!(matches!(status, 408 | 409 | 429 | 500..=599), "{status}");
            check_message(&message);
        }
        Delivery::Permanent { status: s, message } => {
            assert_eq!(s, status);
            assert!(!matches!(status, 408 | 429 | 500..=599), "{status}");
            check_message(&message);
        }
    }
}

/// `spin.toml` text, resolved with no environment and no overrides.
pub fn app_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let overrides = Overrides {
        variables: &[],
        environment: &[],
        component_ids: &[],
        runtime_config: None,
    };
    let env = Default::default();
    if let Ok(app) = AppConfig::from_parts(text, std::path::Path::new("."), None, &env, &overrides)
    {
        for route in &app.http_routes {
            assert!(app.components.contains_key(&route.component));
        }
        // A host name is allowed only by a pattern naming it or a wildcard: never by an
        // address or a CIDR range.
        let name = "conformance-probe.invalid";
        for component in app.components.values() {
            let hosts = &component.allowed_hosts;
            if hosts.allows("http", name, 80) || hosts.allows_url(&format!("redis://{name}")) {
                assert!(
                    text.contains('*') || text.to_ascii_lowercase().contains(name),
                    "{name} allowed by {:?}",
                    component.id
                );
            }
            let _ = hosts.allows_url("http://[::1]:8080/x");
        }
    }
}

/// `runtime-config.toml` text.
pub fn runtime_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RuntimeConfig::parse(text);
    }
}

/// A route and a path, 0xFF-separated.
pub fn route(data: &[u8]) {
    let (route, path) = split(data);
    let (Ok(route), Ok(path)) = (std::str::from_utf8(route), std::str::from_utf8(path)) else {
        return;
    };
    let Ok((router, _)) = Router::build([(route, (), "c")]) else {
        return;
    };
    let Some(found) = router.route(path) else {
        return;
    };
    let info = &found.path_info;
    if found.route.wildcard {
        // What the wildcard matched ends the path (slashes at either end aside).
        assert!(
            path.trim_end_matches('/').ends_with(info.trim_matches('/')),
            "{route:?} {path:?} -> {info:?}"
        );
        assert!(
            info.is_empty() || info.starts_with('/'),
            "{route:?} {path:?} -> {info:?}"
        );
    } else {
        assert!(info.is_empty(), "exact {route:?} {path:?} -> {info:?}");
    }
    let headers = found.spin_headers("http", "example.com", path, "127.0.0.1:1".parse().unwrap());
    for name in [
        "spin-path-info",
        "spin-full-url",
        "spin-matched-route",
        "spin-base-path",
        "spin-raw-component-route",
        "spin-component-route",
        "spin-client-addr",
    ] {
        let count = headers.iter().filter(|(n, _)| n == name).count();
        assert_eq!(count, 1, "{name} in {headers:?}");
    }
}

/// A fuzz target's body: any bytes in, a panic only for a broken promise.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/` and `fuzz/corpus/` name them.
pub const TARGETS: [(&str, Target); 6] = [
    ("order_request", order_request),
    ("event_envelope", event_envelope),
    ("mail_response", mail_response),
    ("app_manifest", app_manifest),
    ("runtime_config", runtime_config),
    ("route", route),
];
