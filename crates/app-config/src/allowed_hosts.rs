//! `allowed_outbound_hosts`: which outbound connections a component may make, with
//! the rules of Spin's `factor-outbound-networking` (which serves outbound HTTP and
//! outbound Redis alike): `scheme://host[:port]`, where
//! - the scheme is a name or `*` (any);
//! - the host is a name, an IP address, `*` (any), `*.domain` (its subdomains), or a
//!   CIDR range (`127.0.0.0/24`, `fd00::/8`): any address in it, never a host name
//!   (`localhost` is not in `127.0.0.0/8`: Spin matches the request's host as written,
//!   before any name lookup);
//! - the port is a number, `*` (any), or a range `start..end` (end excluded); missing, it
//!   is the scheme's well-known port, and a scheme without one needs a port.

use std::net::IpAddr;
use std::ops::Range;

use anyhow::{bail, Context, Result};
use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Name(String),
    Address(IpAddr),
    /// `*.example.com`: any subdomain of it.
    Subdomains(String),
    Cidr(IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortPattern {
    Any,
    One(u16),
    Range(Range<u16>),
}

#[derive(Debug, Clone, Default)]
pub struct AllowedHosts(Vec<AllowedHost>);

/// The well-known ports Spin assumes when a URL or a pattern gives none.
pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "redis" => Some(6379),
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        "mqtt" => Some(1883),
        _ => None,
    }
}

impl AllowedHosts {
    pub fn parse(patterns: &[String]) -> Result<AllowedHosts> {
        if patterns.len() == 1 && patterns[0] == "insecure:allow-all" {
            bail!("'insecure:allow-all' is not allowed: use '*://*:*' if you really want to allow all outbound traffic");
        }
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
        let address: Option<IpAddr> = host.parse().ok();
        self.0.iter().any(|a| {
            a.scheme.as_deref().is_none_or(|s| s == scheme)
                && match (&a.host, address) {
                    (HostPattern::Any, _) => true,
                    (HostPattern::Address(allowed), Some(address)) => *allowed == address,
                    (HostPattern::Cidr(range), Some(address)) => range.contains(&address),
                    (HostPattern::Name(name), None) => *name == host,
                    (HostPattern::Subdomains(domain), None) => {
                        host.ends_with(&format!(".{domain}"))
                    }
                    // Names never match addresses or ranges, nor addresses names.
                    _ => false,
                }
                && match &a.port {
                    PortPattern::Any => true,
                    PortPattern::One(allowed) => *allowed == port,
                    PortPattern::Range(range) => range.contains(&port),
                }
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

/// One pattern, split as Spin splits it: the scheme before `://`, the port after the
/// last `:` (so an IPv6 range is written unbracketed, `*://fd00::/8:80`).
fn parse_pattern(pattern: &str) -> Result<AllowedHost> {
    let trimmed = pattern.trim();
    let Some((scheme, rest)) = trimmed.split_once("://") else {
        bail!("{pattern:?} is not scheme://host[:port] (e.g. https://api.example.com, or '*://*:*' for everything)");
    };
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, ""));
    let port = match port.split_once('/') {
        Some((_, path)) if !path.is_empty() => {
            bail!("{pattern:?} has a path; allowed_outbound_hosts takes none")
        }
        Some((port, _)) => port,
        None => port,
    };
    let port =
        parse_port(port, scheme).with_context(|| format!("{pattern:?}: invalid port {port:?}"))?;
    let scheme = match scheme {
        "*" => None,
        s if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphabetic()) => {
            Some(s.to_ascii_lowercase())
        }
        s => bail!("{pattern:?}: {s:?} is not a scheme (letters only, or *)"),
    };
    let host = parse_host(host).with_context(|| format!("{pattern:?}: invalid host {host:?}"))?;
    Ok(AllowedHost { scheme, host, port })
}

fn parse_port(port: &str, scheme: &str) -> Result<PortPattern> {
    if port.is_empty() {
        return default_port(scheme).map(PortPattern::One).with_context(|| {
            format!("no port given, and scheme {scheme:?} has no well-known port")
        });
    }
    if port == "*" {
        return Ok(PortPattern::Any);
    }
    if port.starts_with('{') {
        bail!("port lists are not supported");
    }
    if let Some((start, end)) = port.split_once("..") {
        let start = start
            .parse()
            .context("the range's start is not a port number")?;
        let end = end
            .parse()
            .context("the range's end is not a port number")?;
        return Ok(PortPattern::Range(start..end));
    }
    Ok(PortPattern::One(port.parse().context("not a port number")?))
}

fn parse_host(host: &str) -> Result<HostPattern> {
    let host = host.trim();
    if host == "*" {
        return Ok(HostPattern::Any);
    }
    if host == "self" || host == "self.alt" {
        bail!("\"{host}\" (requests to the app itself) is not supported by this runner");
    }
    if host.starts_with('{') {
        bail!("host lists are not supported");
    }
    let lowered = host.to_ascii_lowercase();
    if lowered == "spin.internal" || lowered.ends_with(".spin.internal") {
        bail!("service chaining (*.spin.internal) is not supported by this runner");
    }
    if let Ok(range) = host.parse::<IpNet>() {
        return Ok(HostPattern::Cidr(range.trunc()));
    }
    let host = host.trim_end_matches('/').to_ascii_lowercase();
    if host.contains('/') {
        bail!("a host has no path");
    }
    if let Some(domain) = host.strip_prefix("*.") {
        if domain.is_empty() || domain.contains('*') {
            bail!("wildcards are allowed only as a leading `*.`");
        }
        return Ok(HostPattern::Subdomains(domain.to_owned()));
    }
    if host.is_empty() || host.contains('*') {
        bail!("wildcards are allowed only as a leading `*.`");
    }
    let unbracketed = host.trim_start_matches('[').trim_end_matches(']');
    match unbracketed.parse::<IpAddr>() {
        Ok(address) => Ok(HostPattern::Address(address)),
        Err(_) if host.starts_with('[') => bail!("{host} is not an IPv6 address"),
        Err(_) => Ok(HostPattern::Name(host)),
    }
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
        let any = hosts(&["*://*:*"]);
        assert!(any.allows("redis", "10.1.2.3", 1));
        assert!(any.allows_url("https://anything.example"));
    }

    #[test]
    fn cidr_ranges_allow_every_address_in_them_and_no_host_name() {
        let a = hosts(&["*://127.0.0.0/24:8080"]);
        assert!(a.allows("http", "127.0.0.1", 8080));
        assert!(a.allows("https", "127.0.0.254", 8080));
        assert!(a.allows_url("redis://127.0.0.9:8080/0"));
        assert!(!a.allows("http", "127.0.1.1", 8080), "outside the /24");
        assert!(!a.allows("http", "127.0.0.1", 8081), "other port");
        assert!(
            !a.allows("http", "localhost", 8080),
            "a name is never in a range"
        );
        // Host bits are dropped, as Spin truncates the network.
        let a = hosts(&["http://10.1.2.3/16"]);
        assert!(a.allows("http", "10.1.200.7", 80));
        assert!(!a.allows("http", "10.2.0.1", 80));
        // IPv6, written unbracketed (the port follows the last colon).
        let a = hosts(&["*://fd00::/8:443"]);
        assert!(a.allows("https", "[fd12::1]", 443));
        assert!(a.allows_url("https://[fd00::abcd]/x"));
        assert!(!a.allows("https", "[fe80::1]", 443));
        assert!(!a.allows("https", "127.0.0.1", 443));
    }

    #[test]
    fn addresses_compare_as_addresses_and_names_as_names() {
        let a = hosts(&["http://[::1]:80", "http://127.0.0.1:81"]);
        assert!(a.allows("http", "[0:0::1]", 80));
        assert!(a.allows_url("http://[::1]/"));
        assert!(!a.allows("http", "localhost", 80));
        assert!(!a.allows("http", "localhost", 81));
        let names = hosts(&["http://localhost:80"]);
        assert!(!names.allows("http", "127.0.0.1", 80), "no name lookup");
    }

    #[test]
    fn port_ranges_exclude_their_end() {
        let a = hosts(&["http://127.0.0.1:8000..8002"]);
        assert!(a.allows("http", "127.0.0.1", 8000));
        assert!(a.allows("http", "127.0.0.1", 8001));
        assert!(!a.allows("http", "127.0.0.1", 8002));
        assert!(!a.allows("http", "127.0.0.1", 7999));
    }

    #[test]
    fn bad_patterns_are_errors() {
        for bad in [
            "api.resend.com",
            "https://x.com/path",
            "https://x.com:abc",
            "https://a*b.com",
            "https://*.a*b.com",
            "foo://x",
            "*://127.0.0.0/24",
            "*://127.0.0.0/33:80",
            "h2c+tls://x:1",
            "http://x:1..y",
            "http://self",
            "http://*.spin.internal",
            "http://{a,b}.com",
        ] {
            assert!(AllowedHosts::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
        assert!(AllowedHosts::parse(&["insecure:allow-all".to_string()]).is_err());
    }
}
