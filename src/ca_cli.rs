//! `edge ca list|issue|token|revoke|root`: the built-in CAs from the command
//! line. The ledger is SQLite in WAL mode, so these are safe while edge runs;
//! a revocation reaches the running server's handshakes within 2 seconds.

use crate::authority;
use crate::cli::{CaCommand, NewIdentity, OneCa};
use crate::config::{self, CaModel, Model, Source};
use crate::pki::{self, Ca, Identity, Reason};
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

/// A failed `edge ca` command: one line for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CaCliError(String);

fn err(e: impl std::fmt::Display) -> CaCliError {
    CaCliError(e.to_string())
}

/// The Edgefile's model (it must parse) and the CA `name` it declares.
fn declared(config: &Path, name: Option<&str>) -> Result<(Model, Option<CaModel>), CaCliError> {
    let source = Source::read(config).map_err(err)?;
    let registry = crate::plugins::registry();
    let handlers: Vec<&str> = registry.names().collect();
    let model = config::parse(&source, &handlers).map_err(|d| CaCliError(config::render(&d).trim_end().to_string()))?;
    let ca = match name {
        None => None,
        Some(n) => match model.cas.iter().find(|c| c.name.value == n) {
            Some(c) => Some(c.clone()),
            None => {
                let known: Vec<&str> = model.cas.iter().map(|c| c.name.value.as_str()).collect();
                return Err(CaCliError(format!(
                    "{} declares no ca {n:?} (it declares: {})",
                    config.display(),
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )));
            }
        },
    };
    Ok((model, ca))
}

fn duration(s: Option<&str>, default: Duration, what: &str) -> Result<Duration, CaCliError> {
    match s {
        None => Ok(default),
        Some(s) => edge_plugin_api::parse_duration(s)
            .map_err(|e| CaCliError(format!("--{what}: {e} (write 90s, 15m, 24h, 30d)"))),
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Runs an `edge ca` command; what it prints goes to stdout (and a recipe to stderr).
pub fn run(cmd: CaCommand) -> Result<(), CaCliError> {
    let now = OffsetDateTime::now_utc();
    match cmd {
        CaCommand::List { config, ca } => {
            let (model, _) = declared(&config, ca.as_deref())?;
            let ledger = authority::open_ledger(&model.storage).map_err(err)?;
            let rows = pki::list(ledger.as_ref(), ca.as_deref(), now).map_err(err)?;
            println!("serial\tcn\tou\tnot-after\tstatus");
            for r in rows {
                println!("{}\t{}\t{}\t{}\t{}", r.serial, r.cn, r.ou(), rfc3339(r.not_after), r.status.as_str());
            }
            Ok(())
        }
        CaCommand::Issue {
            ca: OneCa { config, ca },
            identity: NewIdentity { cn, ou },
            san_dns,
            san_uri,
            lifetime,
            out,
        } => {
            let (model, decl) = declared(&config, Some(&ca))?;
            let decl = decl.ok_or_else(|| err("no such CA"))?;
            let lifetime = duration(lifetime.as_deref(), decl.cert_lifetime, "lifetime")?;
            let (authority, ledger) = open(&model.storage, &ca)?;
            let identity = Identity { cn: cn.clone(), ous: ou, san_dns, san_uri };
            let (issued, key) = authority.issue_manual(ledger.as_ref(), &identity, lifetime, now).map_err(err)?;
            std::fs::create_dir_all(&out)
                .map_err(|e| CaCliError(format!("cannot create {}: {}", out.display(), crate::util::io_reason(&e))))?;
            let file = |name: String| -> PathBuf { out.join(name) };
            let write = |path: &Path, text: &str, mode: u32| {
                crate::util::write_atomic(path, text.as_bytes(), Some(mode))
                    .map_err(|e| CaCliError(format!("cannot write {}: {}", path.display(), crate::util::io_reason(&e))))
            };
            let safe = cn.replace(['/', '\\'], "_");
            write(&file(format!("{safe}.key")), key.expose(), 0o600)?;
            write(&file(format!("{safe}.crt")), &issued.chain_pem, 0o644)?;
            write(&file("ca.crt".into()), authority.cert_pem(), 0o644)?;
            eprintln!(
                "issued {} for {cn:?} (serial {}, valid until {}) into {}",
                issued.kind.as_str(),
                issued.serial,
                rfc3339(issued.not_after),
                out.display()
            );
            Ok(())
        }
        CaCommand::Token { ca: OneCa { config, ca }, identity: NewIdentity { cn, ou }, ttl } => {
            let (model, decl) = declared(&config, Some(&ca))?;
            let decl = decl.ok_or_else(|| err("no such CA"))?;
            let ttl = duration(ttl.as_deref(), decl.token_lifetime, "ttl")?;
            let (_, ledger) = open(&model.storage, &ca)?;
            let identity = Identity { cn: cn.clone(), ous: ou, san_dns: vec![], san_uri: vec![] };
            let token = pki::create_token(ledger.as_ref(), &ca, &identity, ttl, now).map_err(err)?;
            println!("{token}");
            let site = enrollment_url(&model, &ca);
            eprintln!(
                "one-time token for {cn:?}, valid until {}. Enroll with:\n  \
                 openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {cn}.key -subj /CN={cn} -out {cn}.csr\n  \
                 curl --cacert ca.crt -H 'Authorization: Bearer {token}' -H 'Content-Type: application/pkcs10' \\\n    \
                 -H 'Accept: application/pem-certificate-chain' --data-binary @{cn}.csr {site}/.well-known/est/simpleenroll > {cn}.crt\n\
                 (ca.crt: `edge ca root --ca {ca}`)",
                rfc3339(now + ttl)
            );
            Ok(())
        }
        CaCommand::Revoke { ca: OneCa { config, ca }, serial, cn, reason } => {
            let (model, _) = declared(&config, Some(&ca))?;
            let reason: Reason = reason.parse().map_err(err)?;
            let (_, ledger) = open(&model.storage, &ca)?;
            match (serial, cn) {
                (Some(serial), _) => {
                    let newly = pki::revoke_serial(ledger.as_ref(), &ca, &serial, reason, now).map_err(err)?;
                    if newly {
                        eprintln!("revoked {serial}; running servers refuse it within 2 seconds");
                    } else {
                        eprintln!("{serial} was already revoked");
                    }
                }
                (None, Some(cn)) => {
                    let n = pki::revoke_cn(ledger.as_ref(), &ca, &cn, reason, now).map_err(err)?;
                    eprintln!("revoked {n} certificate(s) of {cn:?} and disabled it (it cannot enroll or renew)");
                }
                (None, None) => return Err(err("give --serial HEX or --cn CN")),
            }
            Ok(())
        }
        CaCommand::Root { ca: OneCa { config, ca } } => {
            let (model, _) = declared(&config, Some(&ca))?;
            let (authority, _) = open(&model.storage, &ca)?;
            print!("{}", authority.cert_pem());
            Ok(())
        }
    }
}

fn open(storage: &Path, name: &str) -> Result<(Ca, std::sync::Arc<pki::SqliteLedger>), CaCliError> {
    let ledger = authority::open_ledger(storage).map_err(err)?;
    let ca = Ca::open_or_create(storage, name, OffsetDateTime::now_utc()).map_err(err)?;
    Ok((ca, ledger))
}

/// The base URL of a site serving enrollment for `ca`, for the recipe.
fn enrollment_url(model: &Model, ca: &str) -> String {
    model
        .sites
        .iter()
        .find(|s| s.enrollment.as_ref().is_some_and(|e| e.value == ca))
        .and_then(|s| {
            let name = s.names.first()?.value.to_string().replace("*.", "x.");
            let port = s.listens.first()?.addr.value.port();
            Some(if port == 443 { format!("https://{name}") } else { format!("https://{name}:{port}") })
        })
        .unwrap_or_else(|| "https://ENROLLMENT-SITE".into())
}
