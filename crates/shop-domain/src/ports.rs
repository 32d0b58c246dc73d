//! What the use cases ([`crate::checkout`], [`crate::fulfilment`]) need from the world
//! besides the key-value store: time and randomness, a way to publish the order event,
//! a way to send mail, and somewhere to report the steps they take (the components
//! make OpenTelemetry spans of them; tests ignore them).

use chrono::{DateTime, Utc};

use crate::event::OrderPlaced;

/// Time, randomness and waiting.
#[allow(async_fn_in_trait)] // used generically in a single-threaded guest: no Send needed
pub trait Environment {
    fn now(&self) -> DateTime<Utc>;
    /// 16 bytes from a secure random source.
    fn random(&self) -> [u8; 16];
    /// Blocks for `ms` milliseconds (backoff between retries).
    fn sleep_ms(&self, ms: u64);
    /// Waits `ms` milliseconds while the caller's other futures run: a fulfilment
    /// handler's other orders go on sending while one backs off, instead of each
    /// backoff holding up all of them (and their mail leases running out). Blocks, as
    /// [`Environment::sleep_ms`], unless the environment can do better.
    async fn pause_ms(&self, ms: u64) {
        self.sleep_ms(ms);
    }
}

/// A value for a step's attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Attribute {
    Text(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Attribute {
    fn from(value: &str) -> Self {
        Attribute::Text(value.to_owned())
    }
}

impl From<String> for Attribute {
    fn from(value: String) -> Self {
        Attribute::Text(value)
    }
}

impl From<i64> for Attribute {
    fn from(value: i64) -> Self {
        Attribute::Int(value)
    }
}

impl From<u32> for Attribute {
    fn from(value: u32) -> Self {
        Attribute::Int(value.into())
    }
}

impl From<bool> for Attribute {
    fn from(value: bool) -> Self {
        Attribute::Bool(value)
    }
}

/// One step in progress; it ends when dropped. Steps nest lexically.
pub trait Step {
    fn attribute(&mut self, key: &'static str, value: Attribute);
    /// The step failed: `message` says why, in full (a provider's own words...).
    fn fail(&mut self, message: &str);
}

/// Where steps are reported.
pub trait Trace {
    type Step: Step;
    fn step(&self, name: &'static str) -> Self::Step;
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTrace;

impl Step for () {
    fn attribute(&mut self, _: &'static str, _: Attribute) {}
    fn fail(&mut self, _: &str) {}
}

impl Trace for NoTrace {
    type Step = ();
    fn step(&self, _: &'static str) {}
}

/// Publishes the order-placed event (Spin: outbound Redis `PUBLISH`). The publisher
/// may add the W3C trace context of its own span to the event.
pub trait Publisher {
    fn publish(&self, event: OrderPlaced) -> Result<(), String>;
}

/// What a mail provider answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailAnswer {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
    /// SendGrid's `X-Message-Id`.
    pub message_id: Option<String>,
}

/// Why a send got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendFailure {
    /// The manifest does not allow the host: no retry can help.
    Denied(String),
    /// Connection refused, reset, timed out...: worth another try.
    Transport(String),
}

/// Sends one HTTP request to the mail provider (Spin: outbound `wasi:http`).
#[allow(async_fn_in_trait)] // used generically in a single-threaded guest: no Send needed
pub trait Mailer {
    async fn send(&self, request: &crate::mail::MailRequest) -> Result<MailAnswer, SendFailure>;
}
