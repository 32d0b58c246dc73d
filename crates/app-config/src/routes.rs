//! Spin's HTTP route syntax and which route wins for a path.

/// A route from `spin.toml`: `/exact` or `/prefix/...` (`/...` matches everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePattern {
    Exact(String),
    Wildcard(String),
}

impl RoutePattern {
    pub fn parse(route: &str) -> RoutePattern {
        match route.strip_suffix("/...") {
            Some(prefix) => RoutePattern::Wildcard(prefix.trim_end_matches('/').to_owned()),
            None if route == "..." => RoutePattern::Wildcard(String::new()),
            None => RoutePattern::Exact(route.trim_end_matches('/').to_owned()),
        }
    }

    /// The path info (the part after the route's prefix) if `path` matches.
    pub fn matches(&self, path: &str) -> Option<String> {
        let path = if path.len() > 1 {
            path.trim_end_matches('/')
        } else {
            path
        };
        match self {
            RoutePattern::Exact(p) => {
                (path == p || (p.is_empty() && path == "/")).then(String::new)
            }
            RoutePattern::Wildcard(prefix) => {
                if path == prefix {
                    Some(String::new())
                } else if prefix.is_empty() || path.starts_with(&format!("{prefix}/")) {
                    Some(path[prefix.len()..].to_owned())
                } else {
                    None
                }
            }
        }
    }

    /// Higher wins: exact routes beat wildcards, longer prefixes beat shorter ones.
    pub fn specificity(&self) -> (usize, bool) {
        match self {
            RoutePattern::Exact(p) => (p.len(), true),
            RoutePattern::Wildcard(p) => (p.len(), false),
        }
    }

    /// The route without the wildcard, as in `spin-component-route`.
    pub fn base(&self) -> &str {
        match self {
            RoutePattern::Exact(p) | RoutePattern::Wildcard(p) => p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_routes() {
        let api = RoutePattern::parse("/api/...");
        assert_eq!(api, RoutePattern::Wildcard("/api".into()));
        assert_eq!(api.matches("/api"), Some(String::new()));
        assert_eq!(api.matches("/api/orders/1"), Some("/orders/1".into()));
        assert_eq!(api.matches("/apix"), None);
        let all = RoutePattern::parse("/...");
        assert_eq!(
            all.matches("/anything/at/all"),
            Some("/anything/at/all".into())
        );
        let exact = RoutePattern::parse("/health");
        assert_eq!(exact.matches("/health"), Some(String::new()));
        assert_eq!(exact.matches("/health/x"), None);
    }

    #[test]
    fn the_most_specific_route_wins() {
        let patterns = [
            RoutePattern::parse("/..."),
            RoutePattern::parse("/api/..."),
            RoutePattern::parse("/api/orders/..."),
            RoutePattern::parse("/api/orders"),
        ];
        let best = |path: &str| {
            patterns
                .iter()
                .filter(|p| p.matches(path).is_some())
                .max_by_key(|p| p.specificity())
                .cloned()
        };
        assert_eq!(
            best("/api/orders"),
            Some(RoutePattern::Exact("/api/orders".into()))
        );
        assert_eq!(
            best("/api/orders/7"),
            Some(RoutePattern::Wildcard("/api/orders".into()))
        );
        assert_eq!(
            best("/api/products"),
            Some(RoutePattern::Wildcard("/api".into()))
        );
        assert_eq!(best("/"), Some(RoutePattern::Wildcard(String::new())));
    }
}
