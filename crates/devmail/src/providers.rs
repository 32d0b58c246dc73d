//! The four send APIs, as the providers document them: request shapes, authentication,
//! sender verification, and each provider's own error bodies.

use serde_json::{json, Value};

/// Which API a request was addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Resend,
    Postmark,
    SendGrid,
    Mailpit,
}

impl Provider {
    pub fn from_path(path: &str) -> Option<Provider> {
        match path {
            "/emails" => Some(Provider::Resend),
            "/email" => Some(Provider::Postmark),
            "/v3/mail/send" => Some(Provider::SendGrid),
            "/api/v1/send" => Some(Provider::Mailpit),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Provider::Resend => "resend",
            Provider::Postmark => "postmark",
            Provider::SendGrid => "sendgrid",
            Provider::Mailpit => "mailpit",
        }
    }
}

/// An HTTP answer: status, content type, body, extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: body.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    pub fn text(status: u16, text: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: text.as_bytes().to_vec(),
            headers: Vec::new(),
        }
    }
}

/// An error in `provider`'s own shape. `code` is the provider's error name (Resend),
/// number (Postmark) or offending field (SendGrid, empty for none); Mailpit has none.
pub fn error(provider: Provider, status: u16, code: &str, message: &str) -> Answer {
    match provider {
        Provider::Resend => Answer::json(
            status,
            json!({ "statusCode": status, "message": message, "name": code }),
        ),
        Provider::Postmark => Answer::json(
            status,
            json!({ "ErrorCode": code.parse::<i64>().unwrap_or(0), "Message": message }),
        ),
        Provider::SendGrid => {
            // SendGrid's description types `field` as a string and `help` as an object
            // (both "when applicable"), so they are left out rather than sent as null.
            let mut error = json!({ "message": message });
            if !code.is_empty() {
                error["field"] = json!(code);
            }
            Answer::json(status, json!({ "errors": [error] }))
        }
        // Mailpit's `JSONErrorResponse`: `{"Error": "..."}`.
        Provider::Mailpit => Answer::json(status, json!({ "Error": message })),
    }
}

/// The error a provider returns for a fault injected with `status`.
pub fn injected(provider: Provider, status: u16) -> Answer {
    let (code, message) = match (provider, status) {
        (Provider::Resend, 429) => ("rate_limit_exceeded", "Too many requests. You can only make 2 requests per second. See rate limit response headers for more information. Or contact support to increase rate limit."),
        (Provider::Resend, _) => ("internal_server_error", "An unexpected error occurred."),
        (Provider::Postmark, 429) => ("429", "Rate limit exceeded."),
        (Provider::Postmark, _) => ("0", "Internal server error."),
        (Provider::SendGrid | Provider::Mailpit, 429) => ("", "too many requests"),
        (Provider::SendGrid, _) => ("", "internal server error"),
        (Provider::Mailpit, _) => ("", "service unavailable"),
    };
    error(provider, status, code, message)
}

/// The refusal of a body over the size limit.
pub fn too_large(provider: Provider) -> Answer {
    match provider {
        Provider::Resend => error(
            provider,
            413,
            "validation_error",
            "Request body is too large.",
        ),
        Provider::Postmark => error(
            provider,
            413,
            "300",
            "Request too large: the request exceeded the size limit.",
        ),
        // The example of SendGrid's documented 413 answer.
        Provider::SendGrid => error(provider, 413, "", "content too large"),
        // What Mailpit's send handler answers (Go's `http.MaxBytesError`), though its
        // description lists only 200 and 400.
        Provider::Mailpit => error(provider, 413, "", "http: request body too large"),
    }
}

/// A send request reduced to what every provider has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Reads `body` as `provider`'s request shape, or answers with its validation error.
pub fn parse(provider: Provider, body: &[u8]) -> Result<Mail, Answer> {
    let value: Value = serde_json::from_slice(body).map_err(|e| match provider {
        // Resend documents `validation_error` as a 400.
        Provider::Resend => error(
            provider,
            400,
            "validation_error",
            &format!("Invalid JSON: {e}"),
        ),
        Provider::Postmark => error(
            provider,
            422,
            "402",
            &format!("Received invalid JSON input: {e}"),
        ),
        Provider::SendGrid => error(provider, 400, "", "Bad Request"),
        Provider::Mailpit => error(provider, 400, "", &e.to_string()),
    })?;
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mail = match provider {
        Provider::Resend => Mail {
            from: text(&value, "from"),
            to: match value.get("to") {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                _ => Vec::new(),
            },
            subject: text(&value, "subject"),
            text: text(&value, "text"),
            html: text(&value, "html"),
        },
        Provider::Postmark => Mail {
            from: text(&value, "From"),
            to: text(&value, "To")
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            subject: text(&value, "Subject"),
            text: text(&value, "TextBody"),
            html: text(&value, "HtmlBody"),
        },
        Provider::SendGrid => {
            let content = |kind: &str| {
                value
                    .get("content")
                    .and_then(Value::as_array)
                    .and_then(|c| {
                        c.iter()
                            .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
                    })
                    .map(|c| text(c, "value"))
                    .unwrap_or_default()
            };
            Mail {
                from: value
                    .get("from")
                    .map(|f| text(f, "email"))
                    .unwrap_or_default(),
                to: value
                    .get("personalizations")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.get("to").and_then(Value::as_array))
                    .flatten()
                    .map(|t| text(t, "email"))
                    .filter(|e| !e.is_empty())
                    .collect(),
                // The message-level subject, or the one a personalization sets.
                subject: Some(text(&value, "subject"))
                    .filter(|s| !s.is_empty())
                    .or_else(|| {
                        value
                            .pointer("/personalizations/0/subject")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .unwrap_or_default(),
                text: content("text/plain"),
                html: content("text/html"),
            }
        }
        Provider::Mailpit => Mail {
            from: value
                .get("From")
                .map(|f| text(f, "Email"))
                .unwrap_or_default(),
            to: mailpit_recipients(&value)?,
            subject: text(&value, "Subject"),
            text: text(&value, "Text"),
            html: text(&value, "HTML"),
        },
    };
    match refusal(provider, &mail) {
        Some(answer) => Err(answer),
        None => Ok(mail),
    }
}

/// `provider`'s refusal of a request without sender, recipient or subject, or with a
/// malformed sender, in its own words; None if it would accept it.
fn refusal(provider: Provider, mail: &Mail) -> Option<Answer> {
    let (no_from, no_to, no_subject) = (
        mail.from.is_empty(),
        mail.to.is_empty(),
        mail.subject.is_empty(),
    );
    if provider == Provider::Mailpit {
        // What Mailpit's message builder checks, in its order and words. Its description
        // requires only `From` (Cc or Bcc alone are recipients enough), and it takes any
        // sender address.
        let reason = match (no_from, no_subject, no_to) {
            (true, _, _) => "from not set",
            (_, true, _) => "subject not set",
            (_, _, true) => "no recipients (to, cc, bcc) set",
            _ => return None,
        };
        let message = format!("error building message: {reason}");
        return Some(error(provider, 400, "", &message));
    }
    let names = match provider {
        Provider::Resend => ["from", "to", "subject"],
        Provider::Postmark => ["From", "To", "Subject"],
        _ => ["from", "personalizations", "subject"],
    };
    let missing = [no_from, no_to, no_subject]
        .iter()
        .position(|&absent| absent);
    if let Some(field) = missing.map(|i| names[i]) {
        return Some(match provider {
            Provider::Resend => error(
                provider,
                422,
                "missing_required_field",
                &format!("Missing `{field}` field."),
            ),
            Provider::Postmark => error(
                provider,
                422,
                "300",
                &format!("Invalid email request: '{field}' is required."),
            ),
            _ => error(
                provider,
                400,
                field,
                &format!("The {field} field is required."),
            ),
        });
    }
    if mail.from.contains('@') {
        return None;
    }
    Some(match provider {
        Provider::Resend => error(provider, 422, "invalid_from_address", "Invalid `from` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format."),
        Provider::Postmark => error(provider, 422, "300", "Invalid 'From' address."),
        _ => error(provider, 400, "from.email", "The from email does not contain a valid address."),
    })
}

/// Every recipient of a Mailpit request (To, Cc, Bcc), or its refusal of a bad address.
fn mailpit_recipients(value: &Value) -> Result<Vec<String>, Answer> {
    let addresses = |field: &'static str| {
        value
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(move |a| {
                // To and Cc are `{Email, Name}` objects, Bcc plain addresses.
                let email = a.get("Email").unwrap_or(a);
                (field, email.as_str().unwrap_or_default().to_owned())
            })
    };
    let mut recipients = Vec::new();
    for (field, email) in addresses("To")
        .chain(addresses("Cc"))
        .chain(addresses("Bcc"))
    {
        if !email.contains('@') {
            let message = format!("invalid {field} address: {email}");
            return Err(error(Provider::Mailpit, 400, "", &message));
        }
        recipients.push(email);
    }
    Ok(recipients)
}

/// The domain of an address like `Name <a@b.com>` or `a@b.com`.
pub fn domain_of(address: &str) -> String {
    let address = match (address.rfind('<'), address.rfind('>')) {
        (Some(start), Some(end)) if start < end => &address[start + 1..end],
        _ => address,
    };
    address
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The refusal of an unverified sender, word for word as each provider sends it.
pub fn unverified_sender(provider: Provider, from: &str) -> Answer {
    let domain = domain_of(from);
    match provider {
        Provider::Resend => error(
            provider,
            403,
            "validation_error",
            &format!("The {domain} domain is not verified. Please, add and verify your domain on https://resend.com/domains"),
        ),
        Provider::Postmark => error(
            provider,
            422,
            "300",
            &format!("The 'From' address you supplied ({from}) is not a verified sender signature. Please add and confirm this address in order to be able to use it in the 'From' field of your messages."),
        ),
        Provider::SendGrid => error(
            provider,
            403,
            "from",
            "The from address does not match a verified Sender Identity. Mail cannot be sent until this error is resolved. Visit https://sendgrid.com/docs/for-developers/sending-email/sender-identity/ to see the Sender Identity requirements",
        ),
        Provider::Mailpit => unreachable_for_mailpit(),
    }
}

fn unreachable_for_mailpit() -> Answer {
    // Mailpit has no sender verification; callers never ask for it.
    error(
        Provider::Mailpit,
        500,
        "",
        "mailpit has no sender verification",
    )
}

/// Checks the provider's credential header against `api_key` (any non-empty key when
/// none is configured). Mailpit has no authentication.
pub fn authenticate(
    provider: Provider,
    header: impl Fn(&str) -> Option<String>,
    api_key: Option<&str>,
) -> Result<(), Answer> {
    let presented = match provider {
        Provider::Mailpit => return Ok(()),
        Provider::Postmark => header("x-postmark-server-token"),
        Provider::Resend | Provider::SendGrid => {
            header("authorization").and_then(|h| h.strip_prefix("Bearer ").map(str::to_owned))
        }
    };
    let valid = match (&presented, api_key) {
        (None, _) => false,
        (Some(p), Some(key)) => p == key,
        (Some(p), None) => !p.is_empty(),
    };
    if valid {
        return Ok(());
    }
    Err(match (provider, presented.is_some()) {
        (Provider::Resend, false) => error(provider, 401, "missing_api_key", "Missing API key in the authorization header. Include the following header in the request: Authorization: Bearer YOUR_API_KEY"),
        (Provider::Resend, true) => error(provider, 403, "invalid_api_key", "API key is invalid"),
        (Provider::Postmark, _) => error(provider, 401, "10", "Request does not contain a valid Server token."),
        // The example of SendGrid's documented 401 answer, for a request without a key.
        (_, false) => error(provider, 401, "", "authorization required"),
        _ => error(provider, 401, "", "The provided authorization grant is invalid, expired, or revoked"),
    })
}

/// The success answer with the new message's id.
pub fn accepted(provider: Provider, id: &str, mail: &Mail, at: &str) -> Answer {
    match provider {
        Provider::Resend => Answer::json(200, json!({ "id": id })),
        Provider::Postmark => Answer::json(
            200,
            json!({ "To": mail.to.join(", "), "SubmittedAt": at, "MessageID": id, "ErrorCode": 0, "Message": "OK" }),
        ),
        Provider::SendGrid => Answer {
            status: 202,
            content_type: "text/plain",
            body: Vec::new(),
            headers: vec![("x-message-id", id.to_owned())],
        },
        Provider::Mailpit => Answer::json(200, json!({ "ID": id })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unverified_sender_bodies_match_the_providers() {
        let a = unverified_sender(Provider::Resend, "Shop <orders@shop.example>");
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(a.status, 403);
        assert_eq!(v["name"], "validation_error");
        assert!(v["message"]
            .as_str()
            .unwrap()
            .starts_with("The shop.example domain is not verified"));
        let a = unverified_sender(Provider::Postmark, "orders@shop.example");
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!((a.status, v["ErrorCode"].as_i64()), (422, Some(300)));
        let a = unverified_sender(Provider::SendGrid, "orders@shop.example");
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["errors"][0]["field"], "from");
    }

    #[test]
    fn parses_each_request_shape() {
        let m = parse(
            Provider::Resend,
            br#"{"from":"a@x.com","to":"b@y.com","subject":"s","text":"t"}"#,
        )
        .unwrap();
        assert_eq!(m.to, ["b@y.com"]);
        let m = parse(Provider::SendGrid, br#"{"personalizations":[{"to":[{"email":"b@y.com"}]}],"from":{"email":"a@x.com"},"subject":"s","content":[{"type":"text/plain","value":"t"}]}"#).unwrap();
        assert_eq!((m.to[0].as_str(), m.text.as_str()), ("b@y.com", "t"));
        let m = parse(
            Provider::Mailpit,
            br#"{"From":{"Email":"a@x.com"},"To":[{"Email":"b@y.com"}],"Subject":"s","Text":"t"}"#,
        )
        .unwrap();
        assert_eq!(m.from, "a@x.com");
        let err = parse(Provider::Resend, br#"{"from":"a@x.com","subject":"s"}"#).unwrap_err();
        assert_eq!(err.status, 422);
        assert!(String::from_utf8_lossy(&err.body).contains("missing_required_field"));
    }

    #[test]
    fn documented_variants_and_mailpits_own_refusals() {
        // SendGrid: a personalization may carry the subject.
        let m = parse(Provider::SendGrid, br#"{"personalizations":[{"to":[{"email":"b@y.com"}],"subject":"s"}],"from":{"email":"a@x.com"}}"#).unwrap();
        assert_eq!(m.subject, "s");
        // Mailpit: Cc alone is a recipient; refusals are `{"Error"}` with a 400.
        let m = parse(
            Provider::Mailpit,
            br#"{"From":{"Email":"a"},"Cc":[{"Email":"c@y.com"}],"Bcc":["d@y.com"],"Subject":"s"}"#,
        )
        .unwrap();
        assert_eq!(m.to, ["c@y.com", "d@y.com"]);
        for (body, words) in [
            (&b"{"[..], "EOF while parsing an object at line 1 column 1"),
            (
                br#"{"Subject":"s"}"#,
                "error building message: from not set",
            ),
            (
                br#"{"From":{"Email":"a@x.com"},"To":[{"Email":"b@y.com"}]}"#,
                "error building message: subject not set",
            ),
            (
                br#"{"From":{"Email":"a@x.com"},"Bcc":["nobody"],"Subject":"s"}"#,
                "invalid Bcc address: nobody",
            ),
        ] {
            let refused = parse(Provider::Mailpit, body).unwrap_err();
            assert_eq!(refused, Answer::json(400, json!({ "Error": words })));
        }
    }

    #[test]
    fn authentication_per_provider() {
        let bearer =
            |v: &'static str| move |name: &str| (name == "authorization").then(|| v.to_owned());
        assert!(authenticate(Provider::Resend, bearer("Bearer k"), Some("k")).is_ok());
        assert_eq!(
            authenticate(Provider::Resend, bearer("Bearer x"), Some("k"))
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(
            authenticate(Provider::Resend, |_: &str| None, Some("k"))
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            authenticate(Provider::Postmark, bearer("Bearer k"), Some("k"))
                .unwrap_err()
                .status,
            401
        );
        assert!(authenticate(Provider::Mailpit, |_: &str| None, Some("k")).is_ok());
    }
}
