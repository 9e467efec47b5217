//! Pure decisions, free of sockets: who a certificate names, whether it is
//! allowed, which site a name reaches on a listener, which route a path reaches.

mod identity;
mod path;
mod routes;
mod sni;

pub use identity::{identity_from_der, IdentityError};
pub use path::{normalise_path, PathError};
pub use routes::RouteTable;
pub use sni::{host_of, SiteIndex};

use crate::config::{AllowRule, Matcher};
use edge_plugin_api::ClientIdentity;

/// Whether `id` satisfies `rules`: no rules allow everyone; otherwise every
/// matcher of at least one rule must match.
pub fn allowed(rules: &[AllowRule], id: &ClientIdentity) -> bool {
    rules.is_empty() || rules.iter().any(|r| r.all.iter().all(|m| matches(m, id)))
}

fn matches(m: &Matcher, id: &ClientIdentity) -> bool {
    match m {
        Matcher::Cn(cn) => id.cn.as_deref() == Some(cn.as_str()),
        Matcher::Ou(ou) => id.ous.iter().any(|o| o == ou),
        Matcher::SanDns(d) => id.san_dns.iter().any(|s| s.eq_ignore_ascii_case(d)),
        Matcher::SanUri(u) => id.san_uri.iter().any(|s| s == u),
        Matcher::Fingerprint(f) => id.fingerprint == *f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ClientIdentity {
        ClientIdentity {
            cn: Some("alice".into()),
            ous: vec!["editors".into(), "ops".into()],
            san_dns: vec!["Ingest.Newsroom.Internal".into()],
            san_uri: vec!["spiffe://newsroom/ingest".into()],
            fingerprint: "sha256:ab".into(),
            ..Default::default()
        }
    }

    fn rule(all: Vec<Matcher>) -> AllowRule {
        AllowRule { all }
    }

    #[test]
    fn no_rules_allow_everyone() {
        assert!(allowed(&[], &id()));
    }

    #[test]
    fn any_rule_all_matchers() {
        let rules = vec![rule(vec![Matcher::Cn("bob".into())]), rule(vec![Matcher::Ou("ops".into())])];
        assert!(allowed(&rules, &id()));
        let both = vec![rule(vec![Matcher::Cn("alice".into()), Matcher::Ou("sales".into())])];
        assert!(!allowed(&both, &id()));
        for m in [
            Matcher::SanDns("ingest.newsroom.internal".into()),
            Matcher::SanUri("spiffe://newsroom/ingest".into()),
            Matcher::Fingerprint("sha256:ab".into()),
            Matcher::Ou("editors".into()),
        ] {
            assert!(allowed(&[rule(vec![m.clone()])], &id()), "{m:?}");
        }
        assert!(!allowed(&[rule(vec![Matcher::SanUri("spiffe://other".into())])], &id()));
        assert!(!allowed(&[rule(vec![Matcher::Cn("ALICE".into())])], &id()));
    }
}
