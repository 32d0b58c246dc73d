//! Spin's HTTP routes: which route a path goes to, what it captured, and the values of
//! the `spin-*` headers that describe the match, as Spin's `routes` crate and
//! `trigger-http` (`headers.rs`) compute them.
//!
//! A route is exact (`/health`), may name segments (`/items/:id`), and may end in a
//! wildcard (`/api/...`, or `/api/*`). Matching and precedence are `routefinder`'s, the
//! router Spin's own crate is built on: segment by segment, an exact segment beats a
//! named one, which beats a wildcard (`/items/special` > `/items/:id` > `/items/...`),
//! so a longer prefix wins over a shorter one. A route listed twice is one route: the
//! last trigger for it wins.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use indexmap::IndexMap;

/// The routes of an application, each to a `T` (a component).
pub struct Router<T> {
    inner: routefinder::Router<Route<T>>,
}

/// One route as written in the manifest, with what it leads to.
#[derive(Debug)]
pub struct Route<T> {
    /// As written in `spin.toml`.
    pub raw: String,
    /// With the application's base (always `/` here) and without a trailing slash, as
    /// Spin's `spin-matched-route` carries it.
    pub based: String,
    pub wildcard: bool,
    pub target: T,
}

/// A route that an earlier trigger also listed, and so never matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateRoute {
    pub route: String,
    /// The component of the earlier trigger (never reached).
    pub replaced: String,
    /// The component that gets the route.
    pub effective: String,
}

/// A path matched to a route.
#[derive(Debug)]
pub struct RouteMatch<'a, T> {
    pub route: &'a Route<T>,
    /// `:name` segments and what they matched, in route order.
    pub named: Vec<(String, String)>,
    /// What the trailing wildcard matched, with its leading slash (and a trailing one
    /// if the path had it); empty for an exact route or the route's base itself.
    pub path_info: String,
}

impl<T> Router<T> {
    /// Builds the router from `(route, target, target's name)` in manifest order.
    /// Returns the routes that a later trigger replaced, which Spin reports (and never
    /// uses).
    pub fn build<'a>(
        routes: impl IntoIterator<Item = (&'a str, T, &'a str)>,
    ) -> Result<(Router<T>, Vec<DuplicateRoute>)> {
        let mut unique: IndexMap<&str, (T, &str)> = IndexMap::new();
        let mut duplicates = Vec::new();
        for (raw, target, name) in routes {
            if let Some((_, replaced)) = unique.insert(raw, (target, name)) {
                duplicates.push(DuplicateRoute {
                    route: raw.to_owned(),
                    replaced: replaced.to_owned(),
                    effective: name.to_owned(),
                });
            }
        }
        let mut inner = routefinder::Router::new();
        for (raw, (target, name)) in unique {
            let based = with_base(raw);
            let (spec, wildcard) = match based.strip_suffix("/...") {
                Some(prefix) => (format!("{prefix}/*"), true),
                None => (based.clone(), based.ends_with("/*")),
            };
            let route = Route {
                raw: raw.to_owned(),
                based: based.clone(),
                wildcard,
                target,
            };
            let spec: routefinder::RouteSpec = spec.parse().map_err(|e| {
                anyhow!("error parsing route {based:?} associated with component {name:?}: {e}")
            })?;
            if let Some(problem) = panics_when_matched(spec.segments()) {
                bail!("route {raw:?} of component {name:?}: {problem}");
            }
            // Adding a parsed spec cannot fail.
            let _ = inner.add(spec, route);
        }
        Ok((Router { inner }, duplicates))
    }

    /// The best route for `path` (the request's path, without its query), if any.
    pub fn route<'a>(&'a self, path: &str) -> Option<RouteMatch<'a, T>> {
        let found = self.inner.best_match(path)?;
        let captures = found.captures();
        let named = captures
            .iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        // routefinder ignores trailing slashes; Spin keeps them in the path info.
        let path_info = match captures.wildcard() {
            None => String::new(),
            Some("") if path.ends_with('/') => "/".to_owned(),
            Some("") => String::new(),
            Some(rest) if path.ends_with('/') => format!("/{rest}/"),
            Some(rest) => format!("/{rest}"),
        };
        Some(RouteMatch {
            route: found.handler(),
            named,
            path_info,
        })
    }

    /// Every route, in precedence order.
    pub fn routes(&self) -> impl Iterator<Item = &Route<T>> {
        self.inner.iter().map(|(_, route)| route)
    }
}

impl<T> Route<T> {
    /// As Spin lists it at startup: the based route, or a wildcard's prefix followed by
    /// ` (wildcard)`.
    pub fn display(&self) -> String {
        if !self.wildcard {
            return self.based.clone();
        }
        let prefix = self
            .based
            .strip_suffix("/...")
            .or_else(|| self.based.strip_suffix("/*"))
            .unwrap_or(&self.based);
        format!("{prefix} (wildcard)")
    }
}

impl<T> RouteMatch<'_, T> {
    /// The `spin-*` request headers Spin adds for this match (Spin 4's
    /// `compute_default_headers`), given the request's scheme, `Host` (Spin uses
    /// `localhost` without one), path and query, and the client's address.
    pub fn spin_headers(
        &self,
        scheme: &str,
        host: &str,
        path_and_query: &str,
        client_addr: std::net::SocketAddr,
    ) -> Vec<(String, String)> {
        let raw = &self.route.raw;
        let mut headers = vec![
            ("spin-path-info".to_owned(), self.path_info.clone()),
            (
                "spin-full-url".to_owned(),
                format!("{scheme}://{host}{path_and_query}"),
            ),
            ("spin-matched-route".to_owned(), self.route.based.clone()),
            ("spin-base-path".to_owned(), "/".to_owned()),
            ("spin-raw-component-route".to_owned(), raw.clone()),
            (
                "spin-component-route".to_owned(),
                raw.strip_suffix("/...").unwrap_or(raw).to_owned(),
            ),
            ("spin-client-addr".to_owned(), client_addr.to_string()),
        ];
        // One per name (a name used twice keeps its last value, as in Spin's map).
        let named: HashMap<&str, &str> = self
            .named
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let mut named: Vec<_> = named.into_iter().collect();
        named.sort();
        for (name, value) in named {
            headers.push((
                format!("spin-path-match-{}", name.replace('_', "-")).to_ascii_lowercase(),
                value.to_owned(),
            ));
        }
        headers
    }
}

/// Why routefinder would panic matching a path against these segments (under Spin too,
/// at the first request that reaches them), if it would: its parser accepts a `*`
/// mid-route, and it splits a route with non-ASCII characters at the wrong places, which
/// can leave a `:name` followed directly by text. Such a route is refused up front.
fn panics_when_matched(segments: &[routefinder::Segment]) -> Option<&'static str> {
    use routefinder::Segment;
    let mut segments = segments.iter().peekable();
    while let Some(segment) = segments.next() {
        let next = segments.peek();
        match segment {
            Segment::Wildcard if next.is_some() => {
                return Some("a wildcard (`*` or `...`) must end the route");
            }
            Segment::Param(_) if !matches!(next, None | Some(Segment::Slash | Segment::Dot)) => {
                return Some(
                    "a `:name` segment must be followed by `/`, `.` or the end of the route \
                     (routefinder, Spin's router, misreads routes with non-ASCII characters)",
                );
            }
            _ => {}
        }
    }
    None
}

/// The route with the application base `/`: made absolute, then one trailing slash
/// dropped (so `/` becomes the empty string, as in Spin).
fn with_base(route: &str) -> String {
    let absolute = if route.starts_with('/') {
        route.to_owned()
    } else {
        format!("/{route}")
    };
    match absolute.strip_suffix('/') {
        Some(stripped) => stripped.to_owned(),
        None => absolute,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&'static str, &'static str)]) -> Router<&'static str> {
        let (router, duplicates) =
            Router::build(routes.iter().map(|(route, c)| (*route, *c, *c))).unwrap();
        assert!(duplicates.is_empty(), "{duplicates:?}");
        router
    }

    fn target(router: &Router<&'static str>, path: &str) -> Option<&'static str> {
        router.route(path).map(|m| m.route.target)
    }

    #[test]
    fn exact_routes_and_trailing_wildcards() {
        let r = router(&[("/foo", "foo"), ("/foo/bar", "foobar"), ("/api/...", "api")]);
        assert_eq!(target(&r, "/foo"), Some("foo"));
        assert_eq!(target(&r, "/foo/"), Some("foo"));
        assert_eq!(target(&r, "/foo/bar"), Some("foobar"));
        assert_eq!(target(&r, "/foo/baz"), None);
        assert_eq!(target(&r, "/api"), Some("api"));
        assert_eq!(target(&r, "/api/orders/1"), Some("api"));
        assert_eq!(target(&r, "/apix"), None);
        assert_eq!(target(&r, "/"), None);
    }

    #[test]
    fn precedence_exact_then_parameter_then_wildcard_segment_by_segment() {
        let r = router(&[
            ("/...", "all"),
            ("/items/...", "items-wildcard"),
            ("/items/:id", "item"),
            ("/items/special", "special"),
            ("/one/...", "one"),
            ("/one/two/...", "one-two"),
            ("/one/two/three/...", "one-two-three"),
            ("/:any/fixed", "any-fixed"),
        ]);
        assert_eq!(target(&r, "/items/special"), Some("special"));
        assert_eq!(target(&r, "/items/42"), Some("item"));
        assert_eq!(target(&r, "/items/42/parts"), Some("items-wildcard"));
        assert_eq!(target(&r, "/items"), Some("items-wildcard"));
        assert_eq!(target(&r, "/one/two/three/four"), Some("one-two-three"));
        assert_eq!(target(&r, "/one/two/x"), Some("one-two"));
        assert_eq!(target(&r, "/one/x"), Some("one"));
        // An exact first segment beats a parameter in it, even with a wildcard after.
        assert_eq!(target(&r, "/one/fixed"), Some("one"));
        assert_eq!(target(&r, "/other/fixed"), Some("any-fixed"));
        assert_eq!(target(&r, "/"), Some("all"));
        assert_eq!(target(&r, "/anything/at/all"), Some("all"));
        // Order in the manifest does not matter.
        let reversed = router(&[
            ("/items/special", "special"),
            ("/items/:id", "item"),
            ("/items/...", "items-wildcard"),
        ]);
        assert_eq!(target(&reversed, "/items/special"), Some("special"));
        assert_eq!(target(&reversed, "/items/42"), Some("item"));
    }

    #[test]
    fn path_info_keeps_trailing_slashes_as_spin_does() {
        let r = router(&[("/test/...", "t")]);
        let info = |path: &str| r.route(path).unwrap().path_info;
        assert_eq!(info("/test"), "");
        assert_eq!(info("/test/"), "/");
        assert_eq!(info("/test/hello"), "/hello");
        assert_eq!(info("/test/hello/"), "/hello/");
        assert_eq!(info("/test/a/b/c"), "/a/b/c");
        let all = router(&[("/...", "all")]);
        assert_eq!(all.route("/1/2/3").unwrap().path_info, "/1/2/3");
        let exact = router(&[("/exact", "e")]);
        assert_eq!(exact.route("/exact").unwrap().path_info, "");
    }

    #[test]
    fn named_segments_are_captured() {
        let r = router(&[
            ("/1/:two/3", "a"),
            ("/base/:path_segment/:path_end/...", "b"),
        ]);
        let m = r.route("/1/2/3").unwrap();
        assert_eq!(m.named, [("two".to_owned(), "2".to_owned())]);
        let m = r.route("/base/path/end/rest").unwrap();
        assert_eq!(
            m.named,
            [
                ("path_segment".to_owned(), "path".to_owned()),
                ("path_end".to_owned(), "end".to_owned())
            ]
        );
        assert_eq!(m.path_info, "/rest");
        assert!(r.route("/base/path").is_none());
    }

    fn headers(route: &'static str, path_and_query: &str) -> Vec<(String, String)> {
        let r = router(&[(route, "c")]);
        let path = path_and_query.split('?').next().unwrap();
        r.route(path)
            .unwrap_or_else(|| panic!("{route} does not match {path}"))
            .spin_headers(
                "http",
                "example.com",
                path_and_query,
                "127.0.0.1:8777".parse().unwrap(),
            )
    }

    fn header<'h>(headers: &'h [(String, String)], name: &str) -> &'h str {
        let found: Vec<_> = headers.iter().filter(|(n, _)| n == name).collect();
        assert_eq!(found.len(), 1, "{name} in {headers:?}");
        &found[0].1
    }

    /// The values Spin's conformance test `request-shape` expects, exactly.
    #[test]
    fn spin_headers_for_named_segments_and_a_wildcard() {
        let h = headers(
            "/base/:path_segment/:path_end/...",
            "/base/path/end/rest?key=value",
        );
        assert_eq!(
            header(&h, "spin-raw-component-route"),
            "/base/:path_segment/:path_end/..."
        );
        assert_eq!(
            header(&h, "spin-full-url"),
            "http://example.com/base/path/end/rest?key=value"
        );
        assert_eq!(header(&h, "spin-path-info"), "/rest");
        assert_eq!(header(&h, "spin-base-path"), "/");
        assert_eq!(
            header(&h, "spin-component-route"),
            "/base/:path_segment/:path_end"
        );
        assert_eq!(header(&h, "spin-path-match-path-segment"), "path");
        assert_eq!(header(&h, "spin-path-match-path-end"), "end");
        assert_eq!(
            header(&h, "spin-matched-route"),
            "/base/:path_segment/:path_end/..."
        );
        assert_eq!(header(&h, "spin-client-addr"), "127.0.0.1:8777");
        assert_eq!(h.len(), 9, "{h:?}");
    }

    #[test]
    fn spin_headers_for_the_root_and_trailing_slashes() {
        // `/`: Spin's matched route is the based route, which has lost its slash.
        let h = headers("/", "/");
        assert_eq!(header(&h, "spin-matched-route"), "");
        assert_eq!(header(&h, "spin-raw-component-route"), "/");
        assert_eq!(header(&h, "spin-component-route"), "/");
        assert_eq!(header(&h, "spin-path-info"), "");
        // `/...`: the component route is the empty prefix.
        let h = headers("/...", "/a/b");
        assert_eq!(header(&h, "spin-matched-route"), "/...");
        assert_eq!(header(&h, "spin-component-route"), "");
        assert_eq!(header(&h, "spin-path-info"), "/a/b");
        // A route written with a trailing slash: raw kept, matched route without it.
        let h = headers("/foo/", "/foo");
        assert_eq!(header(&h, "spin-matched-route"), "/foo");
        assert_eq!(header(&h, "spin-raw-component-route"), "/foo/");
        assert_eq!(header(&h, "spin-component-route"), "/foo/");
        // A route written without its leading slash.
        let h = headers("api/...", "/api/x");
        assert_eq!(header(&h, "spin-matched-route"), "/api/...");
        assert_eq!(header(&h, "spin-raw-component-route"), "api/...");
        assert_eq!(header(&h, "spin-component-route"), "api");
        // `/*` is a trailing wildcard too, with nothing stripped from its name.
        let h = headers("/star/*", "/star/x/");
        assert_eq!(header(&h, "spin-path-info"), "/x/");
        assert_eq!(header(&h, "spin-component-route"), "/star/*");
    }

    #[test]
    fn a_route_listed_twice_goes_to_the_last_component() {
        let (r, duplicates) = Router::build([
            ("/", "root", "root"),
            ("/foo", "first", "first"),
            ("/foo", "second", "second"),
        ])
        .unwrap();
        assert_eq!(target(&r, "/foo"), Some("second"));
        assert_eq!(
            duplicates,
            [DuplicateRoute {
                route: "/foo".into(),
                replaced: "first".into(),
                effective: "second".into()
            }]
        );
        assert_eq!(r.routes().count(), 2);
    }

    /// Why those routes are refused: routefinder itself panics on them. If an upgrade
    /// fixes that, this fails, and the refusal should go.
    #[test]
    fn routefinder_panics_matching_the_routes_refused_as_such() {
        for (route, path) in [("/a/*/c", "/a/b/c"), ("/ü/:a/b", "/ü/x/b")] {
            let spec: routefinder::RouteSpec = route.parse().unwrap();
            let matched = std::panic::catch_unwind(|| spec.matches(path).is_some());
            assert!(matched.is_err(), "{route} no longer panics on {path}");
        }
    }

    #[test]
    fn an_unparsable_route_names_its_component() {
        // The last two parse, but routefinder would panic matching them: a `*` mid-route,
        // and a non-ASCII first segment that makes it lose the slash after `:a`.
        for bad in ["/a/*b/c", "/a/:/c", "/a/*/c", "/ü/:a/b"] {
            let err = Router::build([(bad, (), "comp")]).err().unwrap();
            assert!(format!("{err:#}").contains("comp"), "{bad}: {err:#}");
        }
    }
}
