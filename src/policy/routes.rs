//! The most specific matching route: exact over glob, longer prefix first.

use crate::config::Pattern;

/// Patterns of one site, ordered for lookup.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    exact: Vec<(String, usize)>,
    /// Sorted by prefix length, longest first.
    prefix: Vec<(String, usize)>,
}

impl RouteTable {
    /// A table over `patterns`; a lookup answers the index into `patterns`.
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a Pattern>) -> Self {
        let mut t = RouteTable::default();
        for (i, p) in patterns.into_iter().enumerate() {
            match p {
                Pattern::Exact(s) => t.exact.push((s.clone(), i)),
                Pattern::Prefix(s) => t.prefix.push((s.clone(), i)),
            }
        }
        t.prefix.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        t
    }

    /// The route for a normalised path. `/admin/*` matches `/admin`,
    /// `/admin/` and everything below, but not `/administrator`.
    pub fn lookup(&self, path: &str) -> Option<usize> {
        if let Some((_, i)) = self.exact.iter().find(|(p, _)| p == path) {
            return Some(*i);
        }
        self.prefix
            .iter()
            .find(|(p, _)| {
                p.is_empty()
                    || (path.starts_with(p.as_str()) && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            })
            .map(|(_, i)| *i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_wins() {
        let pats = [
            Pattern::Prefix(String::new()),
            Pattern::Prefix("/admin".into()),
            Pattern::Exact("/admin/open".into()),
            Pattern::Prefix("/admin/deep".into()),
        ];
        let t = RouteTable::new(&pats);
        assert_eq!(t.lookup("/"), Some(0));
        assert_eq!(t.lookup("/administrator"), Some(0));
        assert_eq!(t.lookup("/admin"), Some(1));
        assert_eq!(t.lookup("/admin/"), Some(1));
        assert_eq!(t.lookup("/admin/x"), Some(1));
        assert_eq!(t.lookup("/admin/open"), Some(2));
        assert_eq!(t.lookup("/admin/open/x"), Some(1));
        assert_eq!(t.lookup("/admin/deep/er"), Some(3));
        let none = RouteTable::new(&[Pattern::Exact("/only".into())]);
        assert_eq!(none.lookup("/other"), None);
    }
}
