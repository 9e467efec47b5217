//! Which site a name reaches on one listener.

use crate::config::SiteName;
use std::collections::HashMap;
use std::net::IpAddr;

/// The sites of one listener, by name.
#[derive(Debug, Clone, Default)]
pub struct SiteIndex {
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
    ip: HashMap<IpAddr, usize>,
}

impl SiteIndex {
    /// Adds `name` for site number `site`. Duplicates were refused when the
    /// Edgefile was parsed; a later one would replace an earlier one.
    pub fn insert(&mut self, name: &SiteName, site: usize) {
        match name {
            SiteName::Exact(n) => self.exact.insert(n.clone(), site),
            SiteName::Wildcard(n) => self.wildcard.insert(n.clone(), site),
            SiteName::Ip(ip) => self.ip.insert(*ip, site),
        };
    }

    /// The site for a name as sent in SNI or Host (already without port).
    /// Exact names win over wildcards; a wildcard covers one label.
    pub fn lookup(&self, name: &str) -> Option<usize> {
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            &lower
        } else {
            name
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(i) = self.exact.get(name) {
            return Some(*i);
        }
        if let Ok(ip) = name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return self.ip.get(&ip).copied();
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).copied()
    }

    /// The site for a connection without SNI, by the local address it arrived on.
    pub fn lookup_ip(&self, local: IpAddr) -> Option<usize> {
        self.ip.get(&local).or_else(|| self.ip.get(&canonical(local))).copied()
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The host of a Host header or :authority: lowercase, without port or the
/// brackets of an IPv6 literal.
pub fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_rules() {
        let mut idx = SiteIndex::default();
        idx.insert(&SiteName::Exact("app.localhost".into()), 0);
        idx.insert(&SiteName::Wildcard("app.localhost".into()), 1);
        idx.insert(&SiteName::Exact("x.app.localhost".into()), 2);
        idx.insert(&SiteName::Ip("127.0.0.1".parse().unwrap()), 3);
        assert_eq!(idx.lookup("app.localhost"), Some(0));
        assert_eq!(idx.lookup("APP.localhost."), Some(0));
        assert_eq!(idx.lookup("a.app.localhost"), Some(1));
        assert_eq!(idx.lookup("x.app.localhost"), Some(2));
        assert_eq!(idx.lookup("a.b.app.localhost"), None);
        assert_eq!(idx.lookup("other.localhost"), None);
        assert_eq!(idx.lookup("127.0.0.1"), Some(3));
        assert_eq!(idx.lookup_ip("127.0.0.1".parse().unwrap()), Some(3));
        assert_eq!(idx.lookup_ip("::ffff:127.0.0.1".parse().unwrap()), Some(3));
        assert_eq!(idx.lookup_ip("127.0.0.2".parse().unwrap()), None);
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("app.localhost:8443"), "app.localhost");
        assert_eq!(host_of("app.localhost"), "app.localhost");
        assert_eq!(host_of("[::1]:8443"), "::1");
        assert_eq!(host_of("[::1]"), "::1");
    }
}
