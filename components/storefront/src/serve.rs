//! What the storefront answers, host-independent (and so unit-tested natively):
//!
//! | Path | Body | `Cache-Control` |
//! | --- | --- | --- |
//! | `/`, `/orders/{order id}` | the page (`site/index.html`) | `no-cache` (revalidated by ETag) |
//! | `/static/<stem>.<hash>.<ext>` | that file | a year, `immutable`: the name changes with the bytes |
//! | `/static/<name>` | the same file | `no-cache` |
//! | anything else | 404: a small page for browsers, problem+json for the rest | `no-store` |
//!
//! Only `GET` and `HEAD`; others get 405 with `Allow`. `If-None-Match` gets 304.

use std::borrow::Cow;

use shop_domain::ids::is_order_id;
use shop_domain::problem::{self, Problem};

use crate::embedded::{INDEX_HTML, NOT_FOUND_HTML, STATIC_FILES};

/// What the answer depends on.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Without the query string.
    pub path: &'a str,
    pub if_none_match: Option<&'a str>,
    pub accept: Option<&'a str>,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Cow<'static, [u8]>,
}

impl Response {
    /// The value of header `name` (lower case), if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Fingerprinted files never change under their name.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// The page and unfingerprinted names: kept, but checked (cheaply, by ETag) every time,
/// so a new deployment shows at once.
pub const REVALIDATE: &str = "no-cache";
/// Errors are not kept: the file may exist after the next deployment.
pub const NO_STORE: &str = "no-store";

/// The page loads its own scripts, styles and icon and calls its own origin's API;
/// nothing else. Links (the trace viewer) are navigations, which this does not limit.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
    base-uri 'none'; frame-ancestors 'none'";

pub fn respond(request: &Request<'_>) -> Response {
    if !matches!(request.method, "GET" | "HEAD") {
        let problem = Problem::new(
            405,
            "method-not-allowed",
            "Method not allowed",
            format!(
                "{} accepts GET and HEAD, not {}",
                request.path, request.method
            ),
        );
        let mut response = problem_response(&problem);
        response.headers.push(("allow", "GET, HEAD".to_owned()));
        return response;
    }
    let mut response = match route(request.path) {
        Some(Found::Page) => {
            let mut response = validated(request, 200, INDEX_HTML.etag, INDEX_HTML.body);
            response
                .headers
                .push(("content-type", "text/html; charset=utf-8".to_owned()));
            response
                .headers
                .push(("cache-control", REVALIDATE.to_owned()));
            document_headers(&mut response);
            response
        }
        Some(Found::Static {
            file,
            fingerprinted,
        }) => {
            let mut response = validated(request, 200, file.etag, file.body);
            response
                .headers
                .push(("content-type", file.content_type.to_owned()));
            let cache = if fingerprinted { IMMUTABLE } else { REVALIDATE };
            response.headers.push(("cache-control", cache.to_owned()));
            response
        }
        None => not_found(request),
    };
    response
        .headers
        .push(("x-content-type-options", "nosniff".to_owned()));
    if request.method == "HEAD" {
        response.body = Cow::Borrowed(&[]);
    }
    response
}

enum Found {
    Page,
    Static {
        file: &'static crate::StaticFile,
        fingerprinted: bool,
    },
}

fn route(path: &str) -> Option<Found> {
    if path == "/" {
        return Some(Found::Page);
    }
    if let Some(id) = path.strip_prefix("/orders/") {
        // The order page is the shop's page; it reads the order from the API. An id of
        // the wrong shape can name no order: a real 404, not a page saying so.
        return is_order_id(id).then_some(Found::Page);
    }
    let name = path.strip_prefix("/static/")?;
    STATIC_FILES.iter().find_map(|file| {
        if file.fingerprinted == name {
            Some(Found::Static {
                file,
                fingerprinted: true,
            })
        } else if file.name == name {
            Some(Found::Static {
                file,
                fingerprinted: false,
            })
        } else {
            None
        }
    })
}

/// `status` with `body`, or 304 if the client's copy is current.
fn validated(request: &Request<'_>, status: u16, etag: &str, body: &'static [u8]) -> Response {
    let current = request
        .if_none_match
        .is_some_and(|header| if_none_match_matches(header, etag));
    Response {
        status: if current { 304 } else { status },
        headers: vec![("etag", etag.to_owned())],
        body: Cow::Borrowed(if current { &[] } else { body }),
    }
}

/// RFC 9110 §13.1.2: `*`, or a list of entity tags compared weakly (`W/"x"` matches
/// `"x"`). A malformed header matches nothing, so the full answer is sent.
pub fn if_none_match_matches(header: &str, etag: &str) -> bool {
    let header = header.trim();
    if header == "*" {
        return true;
    }
    let opaque = |tag: &str| tag.strip_prefix("W/").unwrap_or(tag).to_owned();
    let ours = opaque(etag);
    let mut rest = header;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return false;
        }
        let tag_start = rest.strip_prefix("W/").unwrap_or(rest);
        let Some(quoted) = tag_start.strip_prefix('"') else {
            return false;
        };
        // An entity tag's opaque part may hold commas, never a double quote.
        let Some(end) = quoted.find('"') else {
            return false;
        };
        if format!("\"{}\"", &quoted[..end]) == ours {
            return true;
        }
        rest = &quoted[end + 1..];
    }
}

/// Pages get a policy that limits them to their own origin, and no `Referer`: an order
/// page's URL is a bearer URL and must not leak to the trace viewer it links to.
fn document_headers(response: &mut Response) {
    response.headers.push((
        "content-security-policy",
        CONTENT_SECURITY_POLICY.to_owned(),
    ));
    response
        .headers
        .push(("referrer-policy", "no-referrer".to_owned()));
}

fn wants_html(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept.split(',').any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            // `q=0` means "not this".
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            !refused
                && (media.eq_ignore_ascii_case("text/html")
                    || media.eq_ignore_ascii_case("application/xhtml+xml"))
        })
    })
}

fn not_found(request: &Request<'_>) -> Response {
    let mut response = if wants_html(request.accept) {
        let mut response = Response {
            status: 404,
            headers: vec![("content-type", "text/html; charset=utf-8".to_owned())],
            body: Cow::Borrowed(NOT_FOUND_HTML.body),
        };
        document_headers(&mut response);
        response
    } else {
        problem_response(&Problem::not_found(format!(
            "no page or file at {}",
            request.path
        )))
    };
    response.headers.push(("vary", "accept".to_owned()));
    response
}

fn problem_response(problem: &Problem) -> Response {
    Response {
        status: problem.status,
        headers: vec![
            ("content-type", problem::CONTENT_TYPE.to_owned()),
            ("cache-control", NO_STORE.to_owned()),
        ],
        body: Cow::Owned(problem.to_json()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BROWSER_ACCEPT: &str =
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8";
    const ORDER_ID: &str = "ord_0123456789abcdef0123456789abcdef";

    fn get(path: &str) -> Response {
        respond(&Request {
            method: "GET",
            path,
            if_none_match: None,
            accept: None,
        })
    }

    fn static_file(name: &str) -> &'static crate::StaticFile {
        STATIC_FILES
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no {name} in site/static"))
    }

    fn page() -> String {
        String::from_utf8(get("/").body.into_owned()).unwrap()
    }

    #[test]
    fn the_page_is_html_revalidated_on_every_use() {
        let response = get("/");
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(response.header("cache-control"), Some("no-cache"));
        assert_eq!(response.header("etag"), Some(INDEX_HTML.etag));
        assert_eq!(response.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
        assert!(response
            .header("content-security-policy")
            .is_some_and(
                |csp| csp.contains("connect-src 'self'") && csp.contains("script-src 'self'")
            ));
        assert!(page().contains("<main"), "{}", page());
    }

    #[test]
    fn an_order_page_is_the_same_page_and_a_malformed_id_is_not_found() {
        let order = get(&format!("/orders/{ORDER_ID}"));
        assert_eq!(order.status, 200);
        assert_eq!(order.body, get("/").body);
        for path in [
            "/orders/",
            "/orders/ord_123",
            "/orders/ORD_0123456789ABCDEF0123456789ABCDEF",
            &format!("/orders/{ORDER_ID}/"),
            &format!("/orders/{ORDER_ID}/items"),
            "/orders",
        ] {
            assert_eq!(get(path).status, 404, "{path}");
        }
    }

    #[test]
    fn the_page_refers_to_every_static_file_by_its_fingerprinted_name() {
        let html = page();
        for name in ["app.css", "app.js", "icon.svg"] {
            let file = static_file(name);
            assert_ne!(file.fingerprinted, file.name);
            assert!(
                html.contains(&format!("\"/static/{}\"", file.fingerprinted)),
                "{name} is not referred to as {}",
                file.fingerprinted
            );
            assert!(!html.contains(&format!("\"/static/{name}\"")));
        }
    }

    #[test]
    fn fingerprinted_files_are_immutable_and_plain_names_revalidate() {
        for (name, content_type) in [
            ("app.css", "text/css; charset=utf-8"),
            ("app.js", "text/javascript; charset=utf-8"),
            ("icon.svg", "image/svg+xml"),
        ] {
            let file = static_file(name);
            let versioned = get(&format!("/static/{}", file.fingerprinted));
            assert_eq!(versioned.status, 200, "{name}");
            assert_eq!(versioned.header("content-type"), Some(content_type));
            assert_eq!(versioned.header("cache-control"), Some(IMMUTABLE));
            assert_eq!(versioned.header("etag"), Some(file.etag));
            assert_eq!(versioned.body, file.body);
            let plain = get(&format!("/static/{name}"));
            assert_eq!(plain.status, 200);
            assert_eq!(plain.header("content-type"), Some(content_type));
            assert_eq!(plain.header("cache-control"), Some(REVALIDATE));
            assert_eq!(plain.body, versioned.body);
        }
    }

    #[test]
    fn a_fingerprint_is_the_hash_of_the_bytes() {
        let file = static_file("app.js");
        let hash = file.etag.trim_matches('"');
        assert_eq!(hash.len(), 16);
        assert_eq!(file.fingerprinted, format!("app.{hash}.js"));
        // A stale fingerprint names bytes this build does not have.
        let stale = format!("/static/app.{}.js", "0".repeat(16));
        assert_ne!(stale, format!("/static/{}", file.fingerprinted));
        assert_eq!(get(&stale).status, 404);
    }

    #[test]
    fn if_none_match_answers_304_without_a_body() {
        let etag = INDEX_HTML.etag;
        for header in [
            etag.to_owned(),
            format!("W/{etag}"),
            format!("\"other\", {etag}"),
            format!("\"a,b\",{etag}"),
            "*".to_owned(),
        ] {
            let response = respond(&Request {
                method: "GET",
                path: "/",
                if_none_match: Some(&header),
                accept: None,
            });
            assert_eq!(response.status, 304, "{header}");
            assert!(response.body.is_empty());
            assert_eq!(response.header("etag"), Some(etag));
            assert_eq!(response.header("cache-control"), Some("no-cache"));
        }
        for header in ["\"other\"", "", "garbage", &etag[..etag.len() - 1], "W/"] {
            let response = respond(&Request {
                method: "GET",
                path: "/",
                if_none_match: Some(header),
                accept: None,
            });
            assert_eq!(response.status, 200, "{header:?}");
            assert!(!response.body.is_empty());
        }
    }

    #[test]
    fn head_has_the_headers_of_get_and_no_body() {
        let path = format!("/static/{}", static_file("app.css").fingerprinted);
        let head = respond(&Request {
            method: "HEAD",
            path: &path,
            if_none_match: None,
            accept: None,
        });
        let get = get(&path);
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        assert_eq!(head.headers, get.headers);
    }

    #[test]
    fn unknown_paths_are_404_as_a_page_for_browsers_and_problem_json_otherwise() {
        for path in [
            "/static/nope.js",
            "/static/",
            "/static",
            "/static/../index.html",
            "/index.html",
            "/favicon.ico",
            "/site/index.html",
        ] {
            let response = get(path);
            assert_eq!(response.status, 404, "{path}");
            assert_eq!(
                response.header("content-type"),
                Some("application/problem+json")
            );
            assert_eq!(response.header("cache-control"), Some(NO_STORE));
            let problem: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            assert_eq!(problem["status"], 404);
            assert_eq!(problem["type"], "/problems/not-found");
            let browser = respond(&Request {
                method: "GET",
                path,
                if_none_match: None,
                accept: Some(BROWSER_ACCEPT),
            });
            assert_eq!(browser.status, 404);
            assert_eq!(
                browser.header("content-type"),
                Some("text/html; charset=utf-8")
            );
            assert_eq!(browser.header("vary"), Some("accept"));
            assert!(String::from_utf8_lossy(&browser.body).contains("href=\"/\""));
        }
    }

    #[test]
    fn accept_negotiation_honours_q_zero() {
        assert!(wants_html(Some(BROWSER_ACCEPT)));
        assert!(wants_html(Some("TEXT/HTML")));
        assert!(!wants_html(Some("text/html;q=0, application/json")));
        assert!(!wants_html(Some("application/json")));
        assert!(!wants_html(Some("*/*")));
        assert!(!wants_html(None));
    }

    #[test]
    fn other_methods_are_405_with_allow() {
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get"] {
            let response = respond(&Request {
                method,
                path: "/",
                if_none_match: None,
                accept: Some(BROWSER_ACCEPT),
            });
            assert_eq!(response.status, 405, "{method}");
            assert_eq!(response.header("allow"), Some("GET, HEAD"));
            assert_eq!(
                response.header("content-type"),
                Some("application/problem+json")
            );
        }
    }
}
