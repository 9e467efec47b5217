//! The admin API and the metrics, read back exactly after driving each
//! handshake outcome with real clients; `promtool check metrics` on /metrics.

mod common;
use common::*;
use std::process::{Command, Stdio};

/// The value of the sample `name{labels}` (labels in any order), if present.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let rest = rest.strip_suffix('}')?;
        let pairs: Vec<&str> = if rest.is_empty() { vec![] } else { rest.split(',').collect() };
        if pairs.len() != labels.len() {
            return None;
        }
        let all = labels.iter().all(|(k, v)| pairs.contains(&format!("{k}=\"{v}\"").as_str()));
        if all {
            value.parse().ok()
        } else {
            None
        }
    })
}

#[test]
fn every_handshake_outcome_is_counted_once_and_exactly() {
    let dir = tempdir();
    let mut pki = Pki::new(dir.path(), &["require.localhost", "open.localhost"]);
    // A certificate for servers presented as a client: a bad certificate.
    let (c, k) = pki.ca.server(&["not-a-client.localhost"]);
    write(dir.path(), "server-as-client.crt", c);
    write(dir.path(), "server-as-client.key", k);
    pki.add_client("bob", &ClientOpts::default());
    let edge = Edge::start(
        dir.path(),
        r#"admin "127.0.0.1:0"
site "require.localhost" {
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    client-auth require {
        trust file="ca.pem"
        crl file="crl.pem"
        allow ou="editors"
    }
    respond "hello {client.cn}"
}
site "open.localhost" {
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    respond "open"
}
"#,
    );
    let port = edge.port_of("127.0.0.1:0");
    let ca = pki.path("ca.pem");
    let with = |who: &str, extra: &[&str]| {
        let (c, k) = (pki.path(&format!("{who}.crt")), pki.path(&format!("{who}.key")));
        curl("require.localhost", port, "/", &ca, &[&["--cert", &c, "--key", &k][..], extra].concat())
    };
    assert_eq!(with("alice", &[]).status, 200);
    assert_eq!(with("alice", &["--http1.1"]).status, 200);
    assert!(curl("require.localhost", port, "/", &ca, &[]).refused());
    assert!(with("stranger", &[]).refused());
    assert!(with("expired", &[]).refused());
    assert!(with("revoked", &[]).refused());
    assert!(with("bob", &[]).refused());
    assert!(with("server-as-client", &[]).refused());
    // No cipher suite in common (TLS 1.2, RSA key exchange only): an error once the site is known.
    assert!(curl("require.localhost", port, "/", &ca, &["--tlsv1.2", "--tls-max", "1.2", "--ciphers", "AES128-SHA"])
        .refused());
    // A ClientHello edge cannot even read (TLS 1.0 only): an error before any site.
    assert!(curl("require.localhost", port, "/", &ca, &["--tlsv1.0", "--tls-max", "1.1"]).refused());
    assert!(curl("nobody.localhost", port, "/", &ca, &[]).refused());
    assert!(curl("elsewhere.example", port, "/", &ca, &[]).refused());
    assert_eq!(curl("open.localhost", port, "/", &ca, &[]).status, 200);
    // All refusals are logged once each; wait for the last ones to be counted.
    edge.wait_log_count("handshake refused", 9, std::time::Duration::from_secs(5));

    let (status, m) = edge.admin_request("GET", "/metrics");
    assert_eq!(status, 200);
    let hs = |site: &str, result: &str| {
        sample(&m, "edge_tls_handshakes_total", &[("site", site), ("transport", "tcp"), ("result", result)])
    };
    let site = "require.localhost";
    assert_eq!(hs(site, "ok"), Some(2.0), "{m}");
    for result in ["no_cert", "unknown_ca", "expired", "revoked", "not_allowed", "bad_cert", "error"] {
        assert_eq!(hs(site, result), Some(1.0), "{result}\n{m}");
    }
    assert_eq!(hs("", "no_site"), Some(2.0), "{m}");
    assert_eq!(hs("", "error"), Some(1.0), "{m}");
    assert_eq!(hs("open.localhost", "ok"), Some(1.0), "{m}");
    // Client-chosen names never become label values.
    assert!(!m.contains("nobody.localhost") && !m.contains("elsewhere.example"), "{m}");
    let req =
        |proto: &str| sample(&m, "edge_http_requests_total", &[("site", site), ("proto", proto), ("code", "200")]);
    assert_eq!(req("h2"), Some(1.0), "{m}");
    assert_eq!(req("h1"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "edge_tls_handshake_duration_seconds_count", &[("transport", "tcp")]), Some(3.0), "{m}");
    assert_eq!(sample(&m, "edge_config_generation", &[]), Some(1.0));
    assert_eq!(sample(&m, "edge_config_reloads_total", &[("result", "failure")]), Some(0.0));
    let expiry = sample(&m, "edge_tls_server_cert_expiry_timestamp_seconds", &[("site", site)]).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64;
    assert!(expiry > now + 20.0 * 86400.0 && expiry < now + 40.0 * 86400.0, "{expiry}");
    assert!(m.contains("edge_connections_active{proto=\"h1\"}"), "{m}");

    // promtool accepts the exposition.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test installs it)");
    use std::io::Write;
    promtool.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn admin_api_endpoints() {
    let dir = tempdir();
    let pki = Pki::new(dir.path(), &["app.localhost"]);
    let key_pem = std::fs::read_to_string(dir.path().join("server.key")).unwrap();
    let edge = Edge::start(
        dir.path(),
        r#"admin "127.0.0.1:0"
site "app.localhost" {
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    client-auth optional { trust file="ca.pem"; allow ou="ops"; }
    route "/*" {
        header "Authorization" "Bearer s3cr3t-t0ken"
        respond "hi"
    }
}
"#,
    );
    let _ = pki;
    assert_eq!(edge.admin_request("GET", "/healthz"), (200, "ok\n".to_string()));
    let (status, config) = edge.admin_request("GET", "/config");
    assert_eq!(status, 200);
    assert!(config.starts_with("{\"generation\":1,"), "{config}");
    assert!(config.contains("\"names\":[\"app.localhost\"]"), "{config}");
    assert!(config.contains("\"mode\":\"optional\""), "{config}");
    assert!(config.contains("\"allow\":[{\"ou\":\"ops\"}]"), "{config}");
    assert!(config.contains("\"handlers\":[\"header\",\"respond\"]"), "{config}");
    assert!(config.contains(&format!("\"bound\":\"127.0.0.1:{}\"", edge.port())), "{config}");
    // Nothing secret: no key, no key path, no handler arguments.
    assert!(!config.contains("server.key"), "{config}");
    assert!(!config.contains("PRIVATE KEY") && !config.contains(key_pem.lines().nth(1).unwrap()), "{config}");
    assert!(!config.contains("s3cr3t"), "{config}");
    assert_eq!(edge.admin_request("GET", "/reload").0, 405);
    assert_eq!(edge.admin_request("GET", "/nope").0, 404);
    assert_eq!(edge.admin_request("POST", "/reload"), (200, "{\"generation\":2}\n".to_string()));
}

#[test]
fn the_shipped_alert_rules_are_valid() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus/edge-alerts.yml");
    let out = Command::new("promtool").args(["check", "rules"]).arg(&rules).output().expect("promtool");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&rules).unwrap();
    // Every metric the rules name is one edge exports.
    for name in [
        "edge_tls_handshakes_total",
        "edge_pki_identity_cert_expiry_timestamp_seconds",
        "edge_config_reloads_total",
        "edge_tls_server_cert_expiry_timestamp_seconds",
    ] {
        assert!(text.contains(name));
    }
}
