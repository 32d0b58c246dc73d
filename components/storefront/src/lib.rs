//! `storefront`: the shop's web page, served by a Spin HTTP component.
//!
//! The page's files (`site/`: HTML, CSS, plain JavaScript, an SVG icon) are embedded
//! in the component at build time (`build.rs`), so it needs nothing from its host but
//! the HTTP trigger: no key-value store, no variables, no outbound calls, no file
//! mounts. The same `.wasm` runs under `spin up`, this project's runner, SpinKube and
//! Fermyon Cloud. Its route is `/...`: Spin sends the more specific `/api/...` to
//! `checkout`, whose API the page calls on the same origin.
//!
//! What is served where, with which headers, is [`serve::respond`]; the Spin glue is
//! the `component` module, compiled for wasm32 only.

pub mod serve;

/// A file of `site/static/`, at `/static/<name>` and `/static/<fingerprinted>`.
pub struct StaticFile {
    pub name: &'static str,
    /// `<stem>.<hash>.<ext>`: what the pages refer to.
    pub fingerprinted: &'static str,
    pub content_type: &'static str,
    /// A strong validator: a hash of `body`, quoted.
    pub etag: &'static str,
    pub body: &'static [u8],
}

/// An HTML page of `site/`, its `/static/` references fingerprinted.
pub struct Page {
    pub etag: &'static str,
    pub body: &'static [u8],
}

/// `STATIC_FILES`, `INDEX_HTML` (the shop and order pages), `NOT_FOUND_HTML`.
pub mod embedded {
    use super::{Page, StaticFile};
    include!(concat!(env!("OUT_DIR"), "/site.rs"));
}

#[cfg(target_arch = "wasm32")]
mod component;
