//! `allowed_outbound_hosts`: which outbound connections a component may make, with
//! Spin's rules (`scheme://host[:port]`, `*` for any scheme, host or port, `*.domain`
//! for subdomains; a missing port means the scheme's default). Used by outbound HTTP
//! and outbound Redis, as Spin's `factor-outbound-networking` serves both.

use anyhow::{bail, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    scheme: Option<String>,
    host: HostPattern,
    port: Option<u16>,
    any_port: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`: any subdomain of it.
    Subdomains(String),
}

#[derive(Debug, Clone, Default)]
pub struct AllowedHosts(Vec<AllowedHost>);

pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "redis" => Some(6379),
        "rediss" => Some(6380),
        _ => None,
    }
}

impl AllowedHosts {
    pub fn parse(patterns: &[String]) -> Result<AllowedHosts> {
        patterns
            .iter()
            .map(|p| parse_pattern(p))
            .collect::<Result<_>>()
            .map(AllowedHosts)
    }

    /// Whether a connection to `scheme://host:port` is allowed.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.0.iter().any(|a| {
            a.scheme.as_deref().is_none_or(|s| s == scheme)
                && match &a.host {
                    HostPattern::Any => true,
                    HostPattern::Exact(h) => *h == host,
                    HostPattern::Subdomains(d) => host.ends_with(&format!(".{d}")),
                }
                && (a.any_port || a.port.or_else(|| default_port(scheme)) == Some(port))
        })
    }

    /// Whether `url` (e.g. `redis://127.0.0.1:6379/0`) may be connected to.
    pub fn allows_url(&self, url: &str) -> bool {
        match split_url(url) {
            Some((scheme, host, port)) => port
                .or_else(|| default_port(&scheme))
                .is_some_and(|port| self.allows(&scheme, &host, port)),
            None => false,
        }
    }
}

/// `scheme://[user@]host[:port][/...]` -> (scheme, host, port). IPv6 hosts are bracketed.
fn split_url(url: &str) -> Option<(String, String, Option<u16>)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    (!host.is_empty()).then(|| (scheme.to_ascii_lowercase(), host.to_owned(), port))
}

fn parse_pattern(pattern: &str) -> Result<AllowedHost> {
    let Some((scheme, rest)) = pattern.split_once("://") else {
        bail!("{pattern:?} must be scheme://host[:port] (e.g. https://api.example.com)");
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        bail!("{pattern:?}: paths are not allowed in allowed_outbound_hosts");
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (h, Some(p)),
        _ => (rest, None),
    };
    let (port, any_port) = match port {
        None => (None, false),
        Some("*") => (None, true),
        Some(p) => match p.parse::<u16>() {
            Ok(p) => (Some(p), false),
            Err(_) => bail!("{pattern:?}: port {p:?} is not a number (ranges are not supported)"),
        },
    };
    let scheme = match scheme {
        "*" => None,
        s if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+') => {
            Some(s.to_ascii_lowercase())
        }
        s => bail!("{pattern:?}: {s:?} is not a scheme"),
    };
    if port.is_none() && !any_port && scheme.as_deref().is_some_and(|s| default_port(s).is_none()) {
        bail!("{pattern:?}: give a port; scheme has no default port");
    }
    let host = match host.to_ascii_lowercase() {
        h if h == "*" => HostPattern::Any,
        h if h.starts_with("*.") => HostPattern::Subdomains(h[2..].to_owned()),
        h if h.is_empty() || h.contains('*') => bail!("{pattern:?}: {h:?} is not a host pattern"),
        h => HostPattern::Exact(h.trim_start_matches('[').trim_end_matches(']').to_owned()),
    };
    Ok(AllowedHost {
        scheme,
        host,
        port,
        any_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(p: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn exact_hosts_and_default_ports() {
        let a = hosts(&[
            "https://api.resend.com",
            "redis://127.0.0.1:6379",
            "http://127.0.0.1:8025",
        ]);
        assert!(a.allows("https", "api.resend.com", 443));
        assert!(!a.allows("http", "api.resend.com", 80));
        assert!(!a.allows("https", "evil.com", 443));
        assert!(a.allows_url("redis://127.0.0.1:6379"));
        assert!(a.allows_url("redis://127.0.0.1"));
        assert!(!a.allows_url("redis://127.0.0.1:6380"));
        assert!(a.allows_url("http://127.0.0.1:8025/api/v1/send"));
        assert!(!a.allows_url("http://127.0.0.1:8026/api/v1/send"));
    }

    #[test]
    fn wildcards() {
        let a = hosts(&["*://*.example.com:*", "http://localhost:*"]);
        assert!(a.allows("https", "api.example.com", 8443));
        assert!(!a.allows("https", "example.com", 443));
        assert!(a.allows("http", "localhost", 1234));
        assert!(!a.allows("https", "localhost", 1234));
        assert!(!AllowedHosts::default().allows_url("https://x.com"));
    }

    #[test]
    fn bad_patterns_are_errors() {
        for bad in [
            "api.resend.com",
            "https://x.com/path",
            "https://x.com:abc",
            "https://a*b.com",
            "foo://x",
        ] {
            assert!(AllowedHosts::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}
