//! The mail contract, checked against each provider's published API description
//! (`schemas/`, see its README): Resend and SendGrid (OpenAPI 3.1), Mailpit (Swagger 2.0).
//! Postmark publishes none; its shapes are the ones `docs/mail-providers.md` gives.
//!
//! - the shop's requests (`shop_domain::mail::build_request`) against the documented
//!   request schema, headers and authentication;
//! - devmail's answers, over HTTP from the real binary, against the documented response
//!   schema for their status (or the docs' shape where the description has none);
//! - every documented answer of the send operations as `shop_domain::mail::classify`
//!   reads it: retried or not, and with the provider's own words in the message.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jsonschema::{Draft, Validator};
use serde_json::{json, Map, Value};
use shop_domain::mail::{
    build_request, classify, order_email, Delivery, Email, MailConfig, MailRequest, Provider,
};
use shop_domain::order::Order;

/// The providers with a published description.
const DESCRIBED: [Provider; 3] = [Provider::Resend, Provider::SendGrid, Provider::Mailpit];
const API_KEY: &str = "re_contract_key";
const VERIFIED: &str = "orders@shop.example";
/// devmail's body limit is 1 MiB.
const TOO_LARGE: usize = 1024 * 1024 + 1;

// ----------------------------------------------------------------------------------------
// The descriptions

/// One provider's published API description.
struct Description {
    provider: Provider,
    doc: Value,
}

/// A response the description documents for the send operation.
struct Documented<'d> {
    status: u16,
    /// None: documented without a body.
    schema: Option<&'d Value>,
    /// The description's own examples of the body.
    examples: Vec<Value>,
}

impl Description {
    fn load(provider: Provider) -> Description {
        let file = match provider {
            Provider::Resend => "resend.json",
            Provider::SendGrid => "sendgrid_mail.json",
            Provider::Mailpit => "mailpit_swagger.json",
            Provider::Postmark => panic!("Postmark publishes no API description"),
        };
        let path = format!("{}/schemas/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let doc = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        Description { provider, doc }
    }

    fn is_swagger2(&self) -> bool {
        self.doc.get("swagger").is_some()
    }

    /// Follows local `$ref`s (to a response, request body, parameter or schema).
    fn deref<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {reference}"));
            value = self
                .doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {reference}"));
        }
        value
    }

    /// The path of the send operation, as the shop calls it.
    fn send_path(&self) -> &'static str {
        match self.provider {
            Provider::Resend => "/emails",
            Provider::SendGrid => "/v3/mail/send",
            Provider::Mailpit => "/api/v1/send",
            Provider::Postmark => unreachable!("not described"),
        }
    }

    fn operation(&self) -> &Value {
        let operation = &self.doc["paths"][self.send_path()]["post"];
        assert!(
            operation.is_object(),
            "{}: no POST {}",
            self.provider,
            self.send_path()
        );
        operation
    }

    fn parameters(&self) -> impl Iterator<Item = &Value> {
        self.operation()["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| self.deref(p))
    }

    /// The JSON Schema of the send operation's JSON request body.
    fn request_schema(&self) -> &Value {
        if self.is_swagger2() {
            let body = self.parameters().find(|p| p["in"] == "body");
            &body.expect("a body parameter")["schema"]
        } else {
            let body = self.deref(&self.operation()["requestBody"]);
            &body["content"]["application/json"]["schema"]
        }
    }

    /// Whether the operation documents `application/json` request bodies.
    fn consumes_json(&self) -> bool {
        if self.is_swagger2() {
            let consumes = self.operation().get("consumes");
            let consumes = consumes
                .or(self.doc.get("consumes"))
                .and_then(Value::as_array);
            consumes.is_some_and(|c| c.iter().any(|m| m == "application/json"))
        } else {
            let body = self.deref(&self.operation()["requestBody"]);
            body["content"].get("application/json").is_some()
        }
    }

    /// The security schemes the send operation requires (its own, else the document's).
    fn security_schemes(&self) -> Vec<&Value> {
        let requirements = self.operation().get("security");
        let requirements = requirements.or(self.doc.get("security"));
        let definitions = if self.is_swagger2() {
            &self.doc["securityDefinitions"]
        } else {
            &self.doc["components"]["securitySchemes"]
        };
        requirements
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .flat_map(|requirement| requirement.keys())
            .map(|name| {
                let scheme = &definitions[name];
                assert!(scheme.is_object(), "undefined security scheme {name}");
                scheme
            })
            .collect()
    }

    /// Every response documented for the send operation.
    fn responses(&self) -> Vec<Documented<'_>> {
        let responses = self.operation()["responses"]
            .as_object()
            .expect("responses");
        responses
            .iter()
            .map(|(code, response)| {
                let status = code
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: response {code:?}", self.provider));
                let response = self.deref(response);
                let (schema, mut examples) = if self.is_swagger2() {
                    let example = response.pointer("/examples/application~1json").cloned();
                    (response.get("schema"), example.into_iter().collect())
                } else {
                    match response.get("content") {
                        None => (None, Vec::new()),
                        Some(content) => {
                            let media = &content["application/json"];
                            assert!(media.is_object(), "{}: {code} is not JSON", self.provider);
                            let named = media.get("examples").and_then(Value::as_object);
                            let named = named.into_iter().flatten().map(|(_, e)| &e["value"]);
                            let examples = named.chain(media.get("example")).cloned().collect();
                            (media.get("schema"), examples)
                        }
                    }
                };
                if let Some(example) = schema.and_then(|s| self.deref(s).get("example")) {
                    examples.push(example.clone());
                }
                Documented {
                    status,
                    schema,
                    examples,
                }
            })
            .collect()
    }

    fn response(&self, status: u16) -> Option<Documented<'_>> {
        self.responses().into_iter().find(|r| r.status == status)
    }

    /// A validator for `schema`, one of this description's schemas. Its `$ref`s point
    /// into `#/components/...` (OpenAPI 3) or `#/definitions/...` (Swagger 2), so those
    /// go into the schema document beside it; nothing is ever fetched.
    fn validator(&self, schema: &Value) -> Validator {
        let mut document = schema.as_object().expect("a schema object").clone();
        for key in ["components", "definitions"] {
            if let Some(value) = self.doc.get(key) {
                document.insert(key.to_owned(), value.clone());
            }
        }
        // OpenAPI 3.1 schemas are JSON Schema 2020-12; Swagger 2's are a Draft 4 subset.
        let draft = if self.is_swagger2() {
            Draft::Draft4
        } else {
            Draft::Draft202012
        };
        jsonschema::options()
            .with_draft(draft)
            .should_validate_formats(true)
            .offline()
            .build(&Value::Object(document))
            .unwrap_or_else(|e| panic!("{}: schema {schema}: {e}", self.provider))
    }

    /// An instance of `schema` from its examples, or else from its types: every
    /// property, so that an error message the schema documents is in it.
    fn instance(&self, schema: &Value, name: &str) -> Value {
        let schema = self.deref(schema);
        if let Some(example) = schema.get("example") {
            return example.clone();
        }
        if let Some(value) = schema.get("const") {
            return value.clone();
        }
        if let Some(first) = schema.pointer("/enum/0") {
            return first.clone();
        }
        let alternative = schema.get("oneOf").or(schema.get("anyOf"));
        if let Some(first) = alternative.and_then(|a| a.get(0)) {
            return self.instance(first, name);
        }
        match schema["type"].as_str() {
            Some("object") => {
                let properties = schema["properties"].as_object().into_iter().flatten();
                let object: Map<String, Value> = properties
                    .map(|(key, property)| (key.clone(), self.instance(property, key)))
                    .collect();
                Value::Object(object)
            }
            Some("array") => json!([self.instance(&schema["items"], name)]),
            Some("string") if schema["format"] == "email" => json!("ada@example.com"),
            Some("string") => json!(format!("{name} built from the description")),
            Some("integer") | Some("number") => json!(schema["minimum"].as_i64().unwrap_or(1)),
            Some("boolean") => json!(true),
            other => panic!("{}: cannot build a {other:?} for {name}", self.provider),
        }
    }

    /// The strings in `instance` that `schema` describes as an error message: the
    /// provider's own words, which the order must record.
    fn described_messages(&self, schema: &Value, instance: &Value, out: &mut Vec<String>) {
        let schema = self.deref(schema);
        match instance {
            Value::Object(fields) => {
                for (key, value) in fields {
                    let Some(property) = schema.pointer(&format!("/properties/{key}")) else {
                        continue;
                    };
                    let description = self.deref(property)["description"].as_str();
                    let describes_message = description
                        .is_some_and(|d| d.to_ascii_lowercase().contains("error message"));
                    match value {
                        Value::String(text) if describes_message => out.push(text.clone()),
                        _ => self.described_messages(property, value, out),
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.described_messages(&schema["items"], item, out);
                }
            }
            _ => {}
        }
    }
}

fn assert_valid(validator: &Validator, instance: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("  {} (at {})", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: {instance}\n{}",
        errors.join("\n")
    );
}

/// The shape `docs/mail-providers.md` gives where a description documents none for a
/// status (all of Resend's errors, Postmark, SendGrid's 429/503, Mailpit's statuses
/// other than 200/400), as a JSON Schema.
fn docs_shape(provider: Provider, status: u16) -> Value {
    let text = json!({ "type": "string", "minLength": 1 });
    match (provider, status) {
        (Provider::Resend, _) => json!({
            "type": "object",
            "required": ["statusCode", "name", "message"],
            "properties": {
                "statusCode": { "const": status },
                "name": { "type": "string", "pattern": "^[a-z_]+$" },
                "message": text,
            },
        }),
        (Provider::Postmark, 200) => json!({
            "type": "object",
            "required": ["To", "SubmittedAt", "MessageID", "ErrorCode", "Message"],
            "properties": { "MessageID": text, "ErrorCode": { "const": 0 } },
        }),
        (Provider::Postmark, _) => json!({
            "type": "object",
            "required": ["ErrorCode", "Message"],
            "properties": { "ErrorCode": { "type": "integer" }, "Message": text },
        }),
        (Provider::SendGrid, _) => json!({
            "type": "object",
            "required": ["errors"],
            "properties": {
                "errors": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["message"],
                        "properties": { "message": text },
                    },
                },
            },
        }),
        // Mailpit's send handler answers every refusal as its `JSONErrorResponse`.
        (Provider::Mailpit, _) => json!({
            "type": "object",
            "required": ["Error"],
            "properties": { "Error": text },
        }),
    }
}

/// The provider's own words in an error body, where its docs put them.
fn providers_words(provider: Provider, body: &Value) -> Vec<String> {
    let words = match provider {
        Provider::Resend => vec![&body["message"]],
        Provider::Postmark => vec![&body["Message"]],
        Provider::SendGrid => body["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| &e["message"])
            .collect(),
        Provider::Mailpit => vec![&body["Error"]],
    };
    words
        .into_iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// `docs/mail-providers.md`'s rule: 408, 429, 5xx and Resend's 409
/// `concurrent_idempotent_requests` are retried; every other refusal is permanent.
fn retried(provider: Provider, status: u16, body: &Value) -> bool {
    matches!(status, 408 | 429 | 500..=599)
        || (provider == Provider::Resend
            && status == 409
            && body["name"] == "concurrent_idempotent_requests")
}

/// Checks that `message` (what the order records) has each of the provider's `words`,
/// and is not the raw JSON body the shop falls back to when it finds no words.
fn assert_providers_words(message: &str, words: &[String], case: &str) {
    assert!(!words.is_empty(), "{case}: no message in the body");
    for word in words {
        assert!(message.contains(word), "{case}: {message:?} lacks {word:?}");
    }
    assert!(!message.contains("{\""), "{case}: the raw body {message:?}");
}

/// The message of a refusal, checking that it is retried or not as the rule says.
fn refusal_message(delivery: &Delivery, retried: bool, case: &str) -> String {
    match (delivery, retried) {
        (Delivery::Transient { message, .. }, true)
        | (Delivery::Permanent { message, .. }, false) => message.clone(),
        (other, _) => panic!("{case}: expected retried={retried}, got {other:?}"),
    }
}

// ----------------------------------------------------------------------------------------
// The shop's side

fn sample_order() -> Order {
    let order = json!({
        "id": "ord_0123456789abcdef0123456789abcdef",
        "email": "ada@example.com",
        "lines": [
            { "sku": "SPIN-MUG", "name": "Spin mug", "quantity": 2, "unit_price_minor": 1200 }
        ],
        "total_minor": 2400,
        "currency": "EUR",
        "card": { "brand": "visa", "last4": "4242" },
        "capture_fails": false,
        "status": { "state": "confirmed" },
        "notification": { "state": "pending", "last_error": null },
        "sequence": 1,
        "created_at": "2026-11-24T00:00:00Z",
        "updated_at": "2026-11-24T00:00:00Z",
    });
    Order::from_json(order.to_string().as_bytes()).expect("a sample order")
}

fn sample_email() -> (Email, String) {
    let order = sample_order();
    // As fulfilment keys it: one key per order and outcome.
    let key = format!("{}/confirmed", order.id);
    (order_email(&order), key)
}

fn config(provider: Provider, base_url: &str, api_key: &str, from: &str) -> MailConfig {
    MailConfig::new(provider.name(), base_url, api_key, from).expect("mail config")
}

#[test]
fn the_shops_requests_follow_each_description() {
    let (email, key) = sample_email();
    let failed_key = key.replace("/confirmed", "/failed");
    for provider in DESCRIBED {
        let d = Description::load(provider);
        let request = build_request(&config(provider, "", API_KEY, VERIFIED), &email, &key);

        // Where: the description's server (OpenAPI 3 names one) and the operation's path.
        let servers: Vec<&str> = d.doc["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["url"].as_str())
            .collect();
        if !d.is_swagger2() {
            assert!(
                servers.contains(&provider.default_base_url()),
                "{provider}: {servers:?}"
            );
        }
        assert!(request.url.ends_with(d.send_path()), "{}", request.url);

        // What: a JSON body the documented request schema accepts.
        assert!(d.consumes_json(), "{provider}");
        assert_eq!(request.header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let schema = d.request_schema();
        let validator = d.validator(schema);
        assert_valid(&validator, &body, &format!("{provider} request"));
        // The schema has teeth: without any one required property the body is refused.
        let required = d.deref(schema)["required"].as_array().expect("required");
        assert!(!required.is_empty());
        for property in required.iter().filter_map(Value::as_str) {
            let mut incomplete = body.clone();
            incomplete.as_object_mut().unwrap().remove(property);
            assert!(
                !validator.is_valid(&incomplete),
                "{provider} without {property}"
            );
        }

        if provider == Provider::SendGrid {
            // Formats count too: SendGrid's addresses are `format: email`.
            let mut bad_sender = body.clone();
            bad_sender["from"]["email"] = json!("not an address");
            assert!(!validator.is_valid(&bad_sender));
        }

        // Who: the documented authentication.
        let schemes = d.security_schemes();
        for scheme in &schemes {
            match (scheme["type"].as_str(), scheme["scheme"].as_str()) {
                (Some("http"), Some("bearer")) => assert_eq!(
                    request.header("authorization"),
                    Some(format!("Bearer {API_KEY}").as_str()),
                    "{provider}"
                ),
                other => panic!("{provider}: undocumented security scheme {other:?}"),
            }
        }
        if schemes.is_empty() {
            assert_eq!(request.header("authorization"), None, "{provider}");
        }

        // Documented headers: present if required, and valid when sent.
        for parameter in d.parameters().filter(|p| p["in"] == "header") {
            let name = parameter["name"].as_str().unwrap();
            match request.header(name) {
                Some(value) => assert_valid(
                    &d.validator(&parameter["schema"]),
                    &json!(value),
                    &format!("{provider} header {name}"),
                ),
                None => assert_ne!(parameter["required"], true, "{provider}: {name}"),
            }
        }
        if provider == Provider::Resend {
            let idempotency = d
                .parameters()
                .find(|p| p["name"] == "Idempotency-Key")
                .expect("Resend documents Idempotency-Key");
            let validator = d.validator(&idempotency["schema"]);
            for key in [&key, &failed_key] {
                let sent = build_request(&config(provider, "", API_KEY, VERIFIED), &email, key);
                let value = sent.header("Idempotency-Key").expect("an Idempotency-Key");
                assert_valid(&validator, &json!(value), "Idempotency-Key");
            }
            assert!(!validator.is_valid(&json!("k".repeat(257))));
        }
    }
}

// ----------------------------------------------------------------------------------------
// devmail's side, over HTTP from the real binary

struct DevMail {
    child: Child,
    base: String,
    client: reqwest::blocking::Client,
}

/// An HTTP answer, as the shop's fulfilment sees it.
struct Reply {
    status: u16,
    content_type: String,
    message_id: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        if self.body.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            let text = String::from_utf8_lossy(&self.body);
            panic!("{} answered {text:?}, not JSON: {e}", self.status)
        })
    }
}

impl DevMail {
    fn start() -> DevMail {
        let mut child = Command::new(env!("CARGO_BIN_EXE_devmail"))
            .args(["--listen", "127.0.0.1:0", "--api-key", API_KEY])
            .args(["--verified-domain", "shop.example"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("devmail");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("devmail listening on ")
            .expect(&line)
            .to_owned();
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        DevMail {
            child,
            base,
            client,
        }
    }

    fn config(&self, provider: Provider, api_key: &str, from: &str) -> MailConfig {
        config(provider, &self.base, api_key, from)
    }

    /// Sends `request` as fulfilment would, with `body` instead of its own if given.
    fn send(&self, request: &MailRequest, body: Option<Vec<u8>>) -> Reply {
        let mut post = self.client.post(&request.url);
        for (name, value) in &request.headers {
            post = post.header(name, value);
        }
        let response = post
            .body(body.unwrap_or_else(|| request.body.clone()))
            .send()
            .unwrap();
        let header = |name: &str| {
            let value = response.headers().get(name);
            value.map(|v| v.to_str().unwrap().to_owned())
        };
        Reply {
            status: response.status().as_u16(),
            content_type: header("content-type").unwrap_or_default(),
            message_id: header("x-message-id"),
            body: response.bytes().unwrap().to_vec(),
        }
    }

    fn fail_next(&self, faults: Value) {
        let response = self
            .client
            .post(format!("{}/__devmail/faults", self.base))
            .json(&faults)
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }

    fn accepted_ids(&self) -> Vec<String> {
        let url = format!("{}/__devmail/messages", self.base);
        let messages: Value = self.client.get(url).send().unwrap().json().unwrap();
        let messages = messages.as_array().unwrap().iter();
        messages
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for DevMail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks devmail's `reply` against what `provider` documents for `status`, and that
/// the shop reads it as the docs mean it; returns what the shop makes of it.
fn check_reply(provider: Provider, reply: &Reply, status: u16, case: &str) -> Delivery {
    let case = format!("{provider} {case}");
    assert_eq!(
        reply.status,
        status,
        "{case}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    let description = DESCRIBED
        .contains(&provider)
        .then(|| Description::load(provider));
    let documented = description.as_ref().and_then(|d| d.response(status));
    match (&description, &documented) {
        (Some(_), Some(Documented { schema: None, .. })) => {
            assert!(reply.body.is_empty(), "{case}: documented without a body");
        }
        (
            Some(d),
            Some(Documented {
                schema: Some(schema),
                ..
            }),
        ) => {
            assert!(reply.content_type.starts_with("application/json"), "{case}");
            assert_valid(&d.validator(schema), &reply.json(), &case);
        }
        _ => {
            assert!(reply.content_type.starts_with("application/json"), "{case}");
            let shape = docs_shape(provider, status);
            assert_valid(
                &jsonschema::validator_for(&shape).unwrap(),
                &reply.json(),
                &case,
            );
        }
    }

    let delivery = classify(
        provider,
        reply.status,
        &reply.body,
        reply.message_id.as_deref(),
    );
    if (200..300).contains(&status) {
        let Delivery::Sent {
            message_id: Some(_),
        } = &delivery
        else {
            panic!("{case}: {delivery:?}");
        };
        return delivery;
    }
    let body = reply.json();
    let message = refusal_message(&delivery, retried(provider, status, &body), &case);
    assert_providers_words(&message, &providers_words(provider, &body), &case);
    delivery
}

fn message_of(delivery: &Delivery) -> &str {
    match delivery {
        Delivery::Permanent { message, .. } | Delivery::Transient { message, .. } => message,
        Delivery::Sent { .. } => panic!("sent"),
    }
}

#[test]
fn devmails_answers_follow_each_description() {
    let mail = DevMail::start();
    let (email, key) = sample_email();
    for provider in Provider::ALL {
        // A fresh Idempotency-Key per case, so that Resend answers each on its own.
        let request = |api_key: &str, from: &str, case: &str| {
            let config = mail.config(provider, api_key, from);
            build_request(&config, &email, &format!("{key}/{case}"))
        };
        let ok = |case: &str| request(API_KEY, VERIFIED, case);

        // Sent: the shop's own request.
        let success = if provider == Provider::SendGrid {
            202
        } else {
            200
        };
        let sent = check_reply(provider, &mail.send(&ok("sent"), None), success, "sent");
        let Delivery::Sent {
            message_id: Some(id),
        } = sent
        else {
            unreachable!()
        };
        assert!(mail.accepted_ids().contains(&id), "{provider}: {id}");

        // Refused: an unverified sender (Mailpit verifies none), and the API key.
        if provider != Provider::Mailpit {
            let (status, words) = match provider {
                Provider::Resend => (403, "unverified.example domain is not verified"),
                Provider::Postmark => (422, "is not a verified sender signature"),
                _ => (403, "does not match a verified Sender Identity"),
            };
            let refused = request(API_KEY, "orders@unverified.example", "unverified");
            let delivery = check_reply(provider, &mail.send(&refused, None), status, "unverified");
            assert!(message_of(&delivery).contains(words), "{delivery:?}");

            let wrong_key_status = if provider == Provider::Resend {
                403
            } else {
                401
            };
            let wrong_key = request("not-the-key", VERIFIED, "wrong key");
            check_reply(
                provider,
                &mail.send(&wrong_key, None),
                wrong_key_status,
                "wrong key",
            );

            let mut no_key = ok("no key");
            no_key.headers.retain(|(name, _)| {
                !["authorization", "x-postmark-server-token"].contains(&name.as_str())
            });
            check_reply(provider, &mail.send(&no_key, None), 401, "no key");
        }

        // Refused: invalid bodies.
        let (invalid, missing_status) = match provider {
            Provider::Resend => (400, 422),
            Provider::Postmark => (422, 422),
            Provider::SendGrid | Provider::Mailpit => (400, 400),
        };
        let not_json = Some(b"{\"from\": ".to_vec());
        check_reply(
            provider,
            &mail.send(&ok("not JSON"), not_json),
            invalid,
            "not JSON",
        );
        let required: Vec<String> = match DESCRIBED.contains(&provider) {
            true => {
                let d = Description::load(provider);
                let schema = d.deref(d.request_schema());
                serde_json::from_value(schema["required"].clone()).unwrap()
            }
            false => ["From", "To", "Subject"].map(String::from).to_vec(),
        };
        for property in required {
            let case = format!("without {property}");
            let request = ok(&case);
            let mut body: Value = serde_json::from_slice(&request.body).unwrap();
            body.as_object_mut().unwrap().remove(&property);
            let body = Some(serde_json::to_vec(&body).unwrap());
            check_reply(provider, &mail.send(&request, body), missing_status, &case);
        }
        let too_large = Some(vec![b' '; TOO_LARGE]);
        check_reply(
            provider,
            &mail.send(&ok("large"), too_large),
            413,
            "too large",
        );

        // Failing: injected faults.
        for status in [429, 500, 503] {
            mail.fail_next(json!({ "count": 1, "status": status }));
            check_reply(provider, &mail.send(&ok("fault"), None), status, "fault");
        }
    }
}

#[test]
fn resend_idempotency_answers_follow_the_description() {
    let mail = DevMail::start();
    let (email, key) = sample_email();
    let provider = Provider::Resend;
    let config = mail.config(provider, API_KEY, VERIFIED);
    let first = build_request(&config, &email, &key);
    let sent = check_reply(provider, &mail.send(&first, None), 200, "first");
    let replayed = check_reply(provider, &mail.send(&first, None), 200, "replay");
    assert_eq!(sent, replayed, "a replay answers as the first time");
    assert_eq!(mail.accepted_ids().len(), 1);

    let other = Email {
        subject: "Another subject".into(),
        ..email.clone()
    };
    let conflicting = build_request(&config, &other, &key);
    let delivery = check_reply(provider, &mail.send(&conflicting, None), 409, "other body");
    assert!(matches!(delivery, Delivery::Permanent { .. }));

    for bad_key in [String::new(), "k".repeat(257)] {
        let request = build_request(&config, &email, &bad_key);
        check_reply(provider, &mail.send(&request, None), 400, "bad key");
    }

    // Two requests with one key at once: whichever draws the (delayed) fault holds the
    // key, and the other is told the first is still in progress.
    mail.fail_next(json!({ "count": 1, "delay_ms": 1500 }));
    let slow = build_request(&config, &email, "order-2/confirmed");
    let (answered, answers) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            let (answered, mail, slow) = (answered.clone(), &mail, &slow);
            scope.spawn(move || answered.send(mail.send(slow, None)).unwrap());
        }
        let concurrent = answers.recv().unwrap();
        let delivery = check_reply(provider, &concurrent, 409, "concurrent");
        assert!(matches!(delivery, Delivery::Transient { .. }));
        // That refusal leaves the holder's claim alone: a third request is refused too.
        let third = mail.send(&slow, None);
        check_reply(provider, &third, 409, "still concurrent");
        check_reply(provider, &answers.recv().unwrap(), 200, "delayed");
    });
    assert_eq!(mail.accepted_ids().len(), 2);
}

#[test]
fn devmail_accepts_what_the_descriptions_allow() {
    let mail = DevMail::start();
    let base = mail.base.clone();
    let from_named = format!("Spin Shop <{VERIFIED}>");
    let mailpit = Description::load(Provider::Mailpit);
    // Documented variants the shop does not send itself.
    let variants = [
        (
            Provider::Resend,
            json!({
                "from": from_named, "to": "ada@example.com", "subject": "Hi", "html": "<p>Hi</p>",
                "cc": ["bob@example.com"], "reply_to": "help@shop.example",
                "tags": [{ "name": "kind", "value": "order" }],
            }),
        ),
        (
            Provider::SendGrid,
            json!({
                "personalizations": [
                    { "to": [{ "email": "ada@example.com", "name": "Ada" }], "subject": "Hi" }
                ],
                "from": { "email": VERIFIED, "name": "Spin Shop" },
                "content": [{ "type": "text/html", "value": "<p>Hi</p>" }],
            }),
        ),
        (
            Provider::Mailpit,
            mailpit.instance(mailpit.request_schema(), "request"),
        ),
        (
            Provider::Mailpit,
            json!({
                "From": { "Email": "anyone@anywhere.test" }, "Cc": [{ "Email": "ada@example.com" }],
                "Subject": "Hi", "Text": "Hi",
            }),
        ),
    ];
    for (provider, body) in variants {
        let d = Description::load(provider);
        assert_valid(&d.validator(d.request_schema()), &body, "variant");
        let request = MailRequest {
            body: serde_json::to_vec(&body).unwrap(),
            ..build_request(
                &config(provider, &base, API_KEY, VERIFIED),
                &sample_email().0,
                "variant",
            )
        };
        let success = if provider == Provider::SendGrid {
            202
        } else {
            200
        };
        check_reply(
            provider,
            &mail.send(&request, None),
            success,
            &body.to_string(),
        );
    }
    // Mailpit's own refusals, in its words.
    for (body, words) in [
        (
            json!({ "From": { "Email": "a@x.test" }, "Subject": "Hi" }),
            "error building message: no recipients (to, cc, bcc) set",
        ),
        (
            // Recipients are checked before the subject.
            json!({ "From": { "Email": "a@x.test" }, "To": [{ "Email": "nobody" }] }),
            "invalid To address: nobody",
        ),
    ] {
        let request = MailRequest {
            body: serde_json::to_vec(&body).unwrap(),
            ..build_request(
                &config(Provider::Mailpit, &base, "", VERIFIED),
                &sample_email().0,
                "",
            )
        };
        let reply = mail.send(&request, None);
        let delivery = check_reply(Provider::Mailpit, &reply, 400, words);
        assert_eq!(message_of(&delivery), words);
    }
}

// ----------------------------------------------------------------------------------------
// Every documented answer, as the shop reads it

#[test]
fn every_documented_answer_is_classified_as_the_docs_mean_it() {
    let header_id = "from-x-message-id";
    for provider in DESCRIBED {
        let d = Description::load(provider);
        let responses = d.responses();
        let errors = responses.iter().filter(|r| r.status >= 300).count();
        match provider {
            // Resend's description documents only its success; its errors are checked in
            // shop-domain's unit tests against the shapes Resend's docs give.
            Provider::Resend => assert_eq!(errors, 0, "Resend now documents errors"),
            _ => assert!(errors > 0, "{provider}: no documented errors"),
        }
        for documented in &responses {
            let status = documented.status;
            let case = format!("{provider} {status}");
            let mut samples = documented.examples.clone();
            match documented.schema {
                Some(schema) => samples.push(d.instance(schema, "body")),
                None => samples.push(Value::Null),
            }
            for sample in samples {
                if let Some(schema) = documented.schema {
                    assert_valid(&d.validator(schema), &sample, &case);
                }
                let body = match &sample {
                    Value::Null => Vec::new(),
                    json => serde_json::to_vec(json).unwrap(),
                };
                let delivery = classify(provider, status, &body, Some(header_id));
                if (200..300).contains(&status) {
                    let id = match provider {
                        Provider::Resend => sample["id"].as_str(),
                        Provider::Mailpit => sample["ID"].as_str(),
                        _ => Some(header_id),
                    };
                    let expected = Delivery::Sent {
                        message_id: id.map(str::to_owned),
                    };
                    assert_eq!(delivery, expected, "{case}: {sample}");
                    continue;
                }
                let retried = retried(provider, status, &sample);
                let message = refusal_message(&delivery, retried, &case);
                let mut words = Vec::new();
                d.described_messages(documented.schema.unwrap(), &sample, &mut words);
                assert_providers_words(&message, &words, &format!("{case} {sample}"));
            }
        }
    }
}
