//! Confirmation emails: the message, the provider's HTTP request, and what the provider's
//! answer means (sent, refused for good, or worth another try).
//!
//! Providers (wire formats in `docs/mail-providers.md`): Resend, Postmark, SendGrid
//! v3 and Mailpit (a local mail catcher). Only Resend takes an `Idempotency-Key`; for the
//! others, the per-order fulfilment claim is what keeps an email from going out twice.

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Value};

use crate::catalogue::format_money;
use crate::order::{Order, OrderStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Resend,
    Postmark,
    SendGrid,
    Mailpit,
}

impl Provider {
    pub const ALL: [Provider; 4] = [
        Provider::Resend,
        Provider::Postmark,
        Provider::SendGrid,
        Provider::Mailpit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Provider::Resend => "resend",
            Provider::Postmark => "postmark",
            Provider::SendGrid => "sendgrid",
            Provider::Mailpit => "mailpit",
        }
    }

    /// Base URL used when `mail_api_base_url` is empty.
    pub fn default_base_url(self) -> &'static str {
        match self {
            Provider::Resend => "https://api.resend.com",
            Provider::Postmark => "https://api.postmarkapp.com",
            Provider::SendGrid => "https://api.sendgrid.com",
            Provider::Mailpit => "http://127.0.0.1:8025",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Provider::Resend => "/emails",
            Provider::Postmark => "/email",
            Provider::SendGrid => "/v3/mail/send",
            Provider::Mailpit => "/api/v1/send",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!(
                    "unknown mail provider {s:?} (expected resend, postmark, sendgrid or mailpit)"
                )
            })
    }
}

/// Mail settings, from the Spin variables `mail_provider`, `mail_api_base_url`,
/// `mail_api_key` (secret) and `mail_from`.
#[derive(Clone)]
pub struct MailConfig {
    pub provider: Provider,
    pub base_url: String,
    pub api_key: String,
    pub from: String,
}

impl fmt::Debug for MailConfig {
    // The API key is a secret: never in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailConfig")
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("from", &self.from)
            .finish()
    }
}

impl MailConfig {
    pub fn new(provider: &str, base_url: &str, api_key: &str, from: &str) -> Result<Self, String> {
        let provider: Provider = provider.parse()?;
        let base_url = match base_url.trim().trim_end_matches('/') {
            "" => provider.default_base_url().to_owned(),
            url if url.starts_with("http://") || url.starts_with("https://") => url.to_owned(),
            other => return Err(format!("mail_api_base_url {other:?} is not an http(s) URL")),
        };
        if crate::validation::validate_email(from).is_err() {
            return Err(format!("mail_from {from:?} is not an email address"));
        }
        if api_key.trim().is_empty() && provider != Provider::Mailpit {
            return Err(format!("mail_api_key is required for {provider}"));
        }
        Ok(Self {
            provider,
            base_url,
            api_key: api_key.trim().to_owned(),
            from: from.trim().to_owned(),
        })
    }
}

/// A message to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The email telling the customer what became of `order` (confirmed or failed).
pub fn order_email(order: &Order) -> Email {
    let mut rows = String::new();
    let mut html_rows = String::new();
    for line in &order.lines {
        rows.push_str(&format!(
            "  {} x {} ({})  {}\n",
            line.quantity,
            line.name,
            line.sku,
            format_money(line.subtotal_minor())
        ));
        html_rows.push_str(&format!(
            "<tr><td>{}</td><td>{} ({})</td><td>{}</td></tr>",
            line.quantity,
            escape_html(&line.name),
            escape_html(&line.sku),
            format_money(line.subtotal_minor())
        ));
    }
    let total = format_money(order.total_minor);
    let (subject, headline) = match &order.status {
        OrderStatus::Failed { reason } => (
            format!("Order {} could not be completed", order.id),
            format!("We could not complete your order: {reason}. You have not been charged."),
        ),
        _ => (
            format!("Order {} confirmed", order.id),
            "Thank you! Your order is confirmed.".to_owned(),
        ),
    };
    Email {
        to: order.email.clone(),
        text: format!(
            "{headline}\n\nOrder {}\n{rows}Total: {total}\nPaid with {} ending {}\n",
            order.id, order.card.brand, order.card.last4
        ),
        html: format!(
            "<p>{}</p><p>Order <code>{}</code></p><table>{html_rows}</table><p><b>Total: {total}</b></p>",
            escape_html(&headline),
            order.id
        ),
        subject,
    }
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An HTTP request ready to send with any client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl MailRequest {
    /// Header value by name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The `POST` request that sends `email` through the configured provider.
/// `idempotency_key` is passed to providers that support one (Resend).
pub fn build_request(config: &MailConfig, email: &Email, idempotency_key: &str) -> MailRequest {
    let provider = config.provider;
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("accept".to_owned(), "application/json".to_owned()),
    ];
    let body = match provider {
        Provider::Resend => {
            headers.push(("authorization".into(), format!("Bearer {}", config.api_key)));
            headers.push(("idempotency-key".into(), idempotency_key.to_owned()));
            json!({
                "from": config.from,
                "to": [email.to],
                "subject": email.subject,
                "text": email.text,
                "html": email.html,
            })
        }
        Provider::Postmark => {
            headers.push(("x-postmark-server-token".into(), config.api_key.clone()));
            json!({
                "From": config.from,
                "To": email.to,
                "Subject": email.subject,
                "TextBody": email.text,
                "HtmlBody": email.html,
                "MessageStream": "outbound",
            })
        }
        Provider::SendGrid => {
            headers.push(("authorization".into(), format!("Bearer {}", config.api_key)));
            json!({
                "personalizations": [{"to": [{"email": email.to}]}],
                "from": {"email": config.from},
                "subject": email.subject,
                "content": [
                    {"type": "text/plain", "value": email.text},
                    {"type": "text/html", "value": email.html},
                ],
            })
        }
        Provider::Mailpit => json!({
            "From": {"Email": config.from},
            "To": [{"Email": email.to}],
            "Subject": email.subject,
            "Text": email.text,
            "HTML": email.html,
        }),
    };
    MailRequest {
        url: format!("{}{}", config.base_url, provider.path()),
        headers,
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

/// What a provider's answer means for the order's notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Sent {
        message_id: Option<String>,
    },
    /// Refused for good (bad key, unverified sender, invalid message): do not retry.
    Permanent {
        status: u16,
        message: String,
    },
    /// Rate limit, outage, timeout: worth retrying.
    Transient {
        status: u16,
        message: String,
    },
}

/// Classifies a provider response. `message_id_header` is SendGrid's `X-Message-Id`.
pub fn classify(
    provider: Provider,
    status: u16,
    body: &[u8],
    message_id_header: Option<&str>,
) -> Delivery {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if (200..300).contains(&status) {
        let message_id = match provider {
            Provider::Resend => field("id"),
            Provider::Postmark => {
                // Postmark reports some failures inside a 200 with a non-zero ErrorCode.
                let code = json
                    .as_ref()
                    .and_then(|j| j.get("ErrorCode"))
                    .and_then(Value::as_i64);
                if code.is_some_and(|c| c != 0) {
                    return Delivery::Permanent {
                        status,
                        message: provider_message(provider, json.as_ref(), body),
                    };
                }
                field("MessageID")
            }
            Provider::SendGrid => message_id_header.map(str::to_owned),
            Provider::Mailpit => field("ID"),
        };
        return Delivery::Sent {
            message_id: message_id.map(|id| printable(&id)),
        };
    }
    let message = provider_message(provider, json.as_ref(), body);
    let transient = match status {
        408 | 429 | 500..=599 => true,
        // Resend: the same key is still being processed: try again. A key reused with
        // another payload (`invalid_idempotent_request`) is permanent.
        409 if provider == Provider::Resend => {
            field("name").as_deref() == Some("concurrent_idempotent_requests")
        }
        _ => false,
    };
    if transient {
        Delivery::Transient { status, message }
    } else {
        Delivery::Permanent { status, message }
    }
}

/// The human-readable reason in a provider's error body, or the raw body (cut short).
fn provider_message(provider: Provider, json: Option<&Value>, body: &[u8]) -> String {
    let from_json = json.and_then(|j| match provider {
        Provider::Resend => j.get("message").and_then(Value::as_str).map(str::to_owned),
        Provider::Postmark => {
            let message = j.get("Message").and_then(Value::as_str)?;
            Some(match j.get("ErrorCode").and_then(Value::as_i64) {
                Some(code) => format!("{message} (ErrorCode {code})"),
                None => message.to_owned(),
            })
        }
        Provider::SendGrid => {
            let messages: Vec<&str> = j
                .get("errors")?
                .as_array()?
                .iter()
                .filter_map(|e| e.get("message").and_then(Value::as_str))
                .collect();
            (!messages.is_empty()).then(|| messages.join("; "))
        }
        Provider::Mailpit => j
            .get("Error")
            .or_else(|| j.get("error"))
            .and_then(Value::as_str)
            .map(str::to_owned),
    });
    let message = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let message = printable(&message);
    if message.is_empty() {
        "no response body".to_owned()
    } else {
        message
    }
}

/// The longest provider message kept on an order, in characters.
pub const MAX_PROVIDER_MESSAGE_CHARS: usize = 300;

/// `text` as it may be stored, shown and logged: control characters (newlines, escape
/// sequences) as spaces, trimmed, at most [`MAX_PROVIDER_MESSAGE_CHARS`] characters.
/// What a provider answers is not under the shop's control.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .chars()
        .take(MAX_PROVIDER_MESSAGE_CHARS)
        .collect()
}

/// How often and how patiently fulfilment retries a transient failure within one
/// message (Spin's Redis trigger never redelivers, so retries happen in the handler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay_ms: 200,
            max_delay_ms: 2_000,
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `attempt + 1` (attempt counts from 1), or None when out of
    /// attempts. `retry_after_secs` (the provider's `Retry-After`) wins if it is longer,
    /// up to `max_delay_ms`.
    pub fn delay_after(&self, attempt: u32, retry_after_secs: Option<u64>) -> Option<u64> {
        if attempt >= self.max_attempts {
            return None;
        }
        let backoff = self
            .base_delay_ms
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        let wanted = backoff.max(retry_after_secs.unwrap_or(0).saturating_mul(1_000));
        Some(wanted.min(self.max_delay_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing: a provider's message went onto the order and into the logs as
    /// it came, newlines, escape sequences and all, however long.
    #[test]
    fn provider_messages_are_kept_printable_and_short() {
        let body = br#"{"statusCode":422,"name":"validation_error","message":"line one\nline two \u001b[31mred"}"#;
        let Delivery::Permanent { message, .. } = classify(Provider::Resend, 422, body, None)
        else {
            panic!("a 422 is permanent");
        };
        assert_eq!(message, "line one line two  [31mred");
        let long = format!(r#"{{"Error":"{}"}}"#, "x".repeat(5_000));
        let Delivery::Permanent { message, .. } =
            classify(Provider::Mailpit, 400, long.as_bytes(), None)
        else {
            panic!("a 400 is permanent");
        };
        assert_eq!(message.chars().count(), MAX_PROVIDER_MESSAGE_CHARS);
    }
    use crate::order::tests::sample_order;

    fn config(provider: Provider) -> MailConfig {
        MailConfig::new(provider.name(), "", "key-123", "shop@example.com").unwrap()
    }

    fn email() -> Email {
        order_email(&sample_order())
    }

    #[test]
    fn config_checks_and_hides_the_key() {
        assert!(MailConfig::new("carrier-pigeon", "", "k", "a@b.co").is_err());
        assert!(MailConfig::new("resend", "ftp://x", "k", "a@b.co").is_err());
        assert!(MailConfig::new("resend", "", "", "a@b.co").is_err());
        assert!(MailConfig::new("resend", "", "k", "nope").is_err());
        let c = MailConfig::new("Mailpit", "http://127.0.0.1:9/", "", "a@b.co").unwrap();
        assert_eq!(c.base_url, "http://127.0.0.1:9");
        let shown = format!("{:?}", config(Provider::Resend));
        assert!(!shown.contains("key-123"), "{shown}");
    }

    #[test]
    fn requests_match_each_providers_wire_format() {
        let e = email();
        let r = build_request(&config(Provider::Resend), &e, "order/ord_1");
        assert_eq!(r.url, "https://api.resend.com/emails");
        assert_eq!(r.header("Authorization"), Some("Bearer key-123"));
        assert_eq!(r.header("Idempotency-Key"), Some("order/ord_1"));
        let b: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(b["from"], "shop@example.com");
        assert_eq!(b["to"][0], "ada@example.com");
        assert!(b["text"].as_str().unwrap().contains("24.00 EUR"));

        let r = build_request(&config(Provider::Postmark), &e, "k");
        assert_eq!(r.url, "https://api.postmarkapp.com/email");
        assert_eq!(r.header("X-Postmark-Server-Token"), Some("key-123"));
        assert_eq!(r.header("Idempotency-Key"), None);
        let b: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(b["To"], "ada@example.com");
        assert_eq!(b["MessageStream"], "outbound");

        let r = build_request(&config(Provider::SendGrid), &e, "k");
        assert_eq!(r.url, "https://api.sendgrid.com/v3/mail/send");
        let b: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            b["personalizations"][0]["to"][0]["email"],
            "ada@example.com"
        );
        assert_eq!(b["from"]["email"], "shop@example.com");
        assert_eq!(b["content"][0]["type"], "text/plain");

        let r = build_request(&config(Provider::Mailpit), &e, "k");
        assert_eq!(r.url, "http://127.0.0.1:8025/api/v1/send");
        assert_eq!(r.header("Authorization"), None);
        let b: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(b["To"][0]["Email"], "ada@example.com");
        assert_eq!(b["From"]["Email"], "shop@example.com");
    }

    #[test]
    fn emails_never_show_more_than_the_last_four_digits() {
        let e = email();
        assert!(e.text.contains("ending 4242"));
        assert!(e.subject.contains("confirmed"));
        let mut failed = sample_order();
        failed.status = OrderStatus::Failed {
            reason: "payment capture declined".into(),
        };
        assert!(order_email(&failed)
            .subject
            .contains("could not be completed"));
    }

    fn kind(d: &Delivery) -> &'static str {
        match d {
            Delivery::Sent { .. } => "sent",
            Delivery::Permanent { .. } => "permanent",
            Delivery::Transient { .. } => "transient",
        }
    }

    #[test]
    fn resend_responses() {
        let p = Provider::Resend;
        assert_eq!(
            classify(p, 200, br#"{"id":"49a3999c"}"#, None),
            Delivery::Sent {
                message_id: Some("49a3999c".into())
            }
        );
        let unverified = br#"{"statusCode":403,"message":"The example.com domain is not verified. Please, add and verify your domain on https://resend.com/domains","name":"validation_error"}"#;
        match classify(p, 403, unverified, None) {
            Delivery::Permanent { status, message } => {
                assert_eq!(status, 403);
                assert!(message.starts_with("The example.com domain is not verified"));
            }
            other => panic!("{other:?}"),
        }
        let cases: &[(u16, &str, &str)] = &[
            (
                401,
                r#"{"statusCode":401,"message":"Missing API key","name":"missing_api_key"}"#,
                "permanent",
            ),
            (
                403,
                r#"{"statusCode":403,"message":"API key is invalid","name":"invalid_api_key"}"#,
                "permanent",
            ),
            (
                422,
                r#"{"statusCode":422,"message":"Invalid `from` field","name":"invalid_from_address"}"#,
                "permanent",
            ),
            (
                422,
                r#"{"statusCode":422,"message":"Missing `to` field","name":"missing_required_field"}"#,
                "permanent",
            ),
            (
                429,
                r#"{"statusCode":429,"message":"Too many requests","name":"rate_limit_exceeded"}"#,
                "transient",
            ),
            (
                409,
                r#"{"statusCode":409,"message":"Same idempotency key used while original request is still in progress","name":"concurrent_idempotent_requests"}"#,
                "transient",
            ),
            (
                409,
                r#"{"statusCode":409,"message":"Same idempotency key used with a different request payload","name":"invalid_idempotent_request"}"#,
                "permanent",
            ),
            (
                500,
                r#"{"statusCode":500,"message":"Internal server error","name":"internal_server_error"}"#,
                "transient",
            ),
        ];
        for (status, body, expected) in cases {
            assert_eq!(
                kind(&classify(p, *status, body.as_bytes(), None)),
                *expected,
                "{status} {body}"
            );
        }
    }

    #[test]
    fn postmark_responses() {
        let p = Provider::Postmark;
        assert_eq!(
            classify(
                p,
                200,
                br#"{"To":"a@b.co","MessageID":"b7bc2f4a","ErrorCode":0,"Message":"OK"}"#,
                None
            ),
            Delivery::Sent {
                message_id: Some("b7bc2f4a".into())
            }
        );
        match classify(p, 422, br#"{"ErrorCode":300,"Message":"The 'From' address you supplied (shop@example.com) is not a verified sender signature."}"#, None) {
            Delivery::Permanent { message, .. } => {
                assert!(message.contains("is not a verified sender signature"));
                assert!(message.contains("ErrorCode 300"));
            }
            other => panic!("{other:?}"),
        }
        for (status, expected) in [
            (401, "permanent"),
            (422, "permanent"),
            (429, "transient"),
            (500, "transient"),
            (503, "transient"),
        ] {
            let body = br#"{"ErrorCode":10,"Message":"x"}"#;
            assert_eq!(kind(&classify(p, status, body, None)), expected, "{status}");
        }
        assert_eq!(
            kind(&classify(
                p,
                200,
                br#"{"ErrorCode":406,"Message":"inactive"}"#,
                None
            )),
            "permanent"
        );
    }

    #[test]
    fn sendgrid_responses() {
        let p = Provider::SendGrid;
        assert_eq!(
            classify(p, 202, b"", Some("abc.def")),
            Delivery::Sent {
                message_id: Some("abc.def".into())
            }
        );
        let unverified = br#"{"errors":[{"message":"The from address does not match a verified Sender Identity. Mail cannot be sent until this error is resolved.","field":"from","help":null}]}"#;
        match classify(p, 403, unverified, None) {
            Delivery::Permanent { message, .. } => {
                assert!(message
                    .starts_with("The from address does not match a verified Sender Identity"))
            }
            other => panic!("{other:?}"),
        }
        for (status, expected) in [
            (400, "permanent"),
            (401, "permanent"),
            (413, "permanent"),
            (429, "transient"),
            (500, "transient"),
            (502, "transient"),
        ] {
            assert_eq!(
                kind(&classify(
                    p,
                    status,
                    br#"{"errors":[{"message":"m"}]}"#,
                    None
                )),
                expected,
                "{status}"
            );
        }
    }

    #[test]
    fn mailpit_responses() {
        let p = Provider::Mailpit;
        assert_eq!(
            classify(p, 200, br#"{"ID":"iAfZVVe2UQfNSG5BAjgYwa"}"#, None),
            Delivery::Sent {
                message_id: Some("iAfZVVe2UQfNSG5BAjgYwa".into())
            }
        );
        assert_eq!(
            classify(p, 400, b"invalid From address", None),
            Delivery::Permanent {
                status: 400,
                message: "invalid From address".into()
            }
        );
        assert_eq!(kind(&classify(p, 503, b"", None)), "transient");
        // Mailpit's send API answers its refusals as `JSONErrorResponse` (its Swagger),
        // and a body over its size limit the same way with a 413.
        for (status, body, message) in [
            (
                400,
                &br#"{"Error":"error building message: no recipients (to, cc, bcc) set"}"#[..],
                "error building message: no recipients (to, cc, bcc) set",
            ),
            (
                413,
                br#"{"Error":"http: request body too large"}"#,
                "http: request body too large",
            ),
        ] {
            assert_eq!(
                classify(p, status, body, None),
                Delivery::Permanent {
                    status,
                    message: message.into()
                }
            );
        }
    }

    #[test]
    fn sendgrid_documented_error_bodies() {
        // The examples of SendGrid's Mail Send description: no `help`, `field` absent or
        // the string "null", sometimes an error `id`.
        let p = Provider::SendGrid;
        for (status, body, message, expected) in [
            (
                400,
                r#"{"errors":[{"message":"invalid request","field":"null"}]}"#,
                "invalid request",
                "permanent",
            ),
            (
                404,
                r#"{"errors":[{"message":"not found","field":"null"}]}"#,
                "not found",
                "permanent",
            ),
            (
                405,
                r#"{"errors":[{"message":"method not allowed","field":"null"}]}"#,
                "method not allowed",
                "permanent",
            ),
            (
                500,
                r#"{"errors":[{"message":"internal server error"}],"id":"e-1"}"#,
                "internal server error",
                "transient",
            ),
            (
                400,
                r#"{"errors":[{"message":"a","field":"from"},{"message":"b","help":{}}]}"#,
                "a; b",
                "permanent",
            ),
        ] {
            let delivery = classify(p, status, body.as_bytes(), None);
            assert_eq!(kind(&delivery), expected, "{status} {body}");
            match delivery {
                Delivery::Permanent { message: m, .. } | Delivery::Transient { message: m, .. } => {
                    assert_eq!(m, message)
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn retry_policy_is_bounded_and_backs_off() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay_after(1, None), Some(200));
        assert_eq!(policy.delay_after(2, None), Some(400));
        assert_eq!(policy.delay_after(3, None), Some(800));
        assert_eq!(policy.delay_after(4, None), None);
        assert_eq!(policy.delay_after(1, Some(1)), Some(1_000));
        assert_eq!(policy.delay_after(1, Some(3600)), Some(2_000));
    }
}
