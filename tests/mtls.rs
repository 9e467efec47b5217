//! Per-site client-certificate policy over TCP, driven with curl against the
//! real binary: the whole matrix of mode x client, over HTTP/1.1 and HTTP/2.

mod common;
use common::*;
use std::time::Duration;

/// Three sites on one listener, one per mode, each answering with the mode
/// and the client's CN; optional and require allow only alice and carol.
fn matrix_edge(dir: &std::path::Path) -> (Pki, Edge) {
    let pki = Pki::new(dir, &["off.localhost", "optional.localhost", "require.localhost"]);
    let edgefile = r#"
admin "off"
site "off.localhost" {
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    client-auth off
    respond "off cn={client.cn}"
}
site "optional.localhost" {
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    client-auth optional {
        trust file="ca.pem"
        crl file="crl.pem"
        allow cn="alice"
        allow ou="ops"
    }
    respond "optional cn={client.cn}"
}
site "require.localhost" {
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    client-auth require {
        trust file="ca.pem"
        crl file="crl.pem"
        allow cn="alice"
        allow ou="ops"
    }
    respond "require cn={client.cn} ou={client.ou} proto={proto} tls={tls.version}"
}
"#;
    let edge = Edge::start(dir, edgefile);
    (pki, edge)
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// 200 with this CN in the body.
    Ok(&'static str),
    /// Refused in the handshake, with this result in the log.
    Refused(&'static str),
}

#[test]
fn mode_by_client_matrix_over_h1_and_h2() {
    let dir = tempdir();
    let (pki, edge) = matrix_edge(dir.path());
    let port = edge.port();
    let ca = pki.path("ca.pem");
    use Expect::*;
    let clients = [None, Some("alice"), Some("stranger"), Some("expired"), Some("revoked"), Some("mallory")];
    let table: [(&str, [Expect; 6]); 3] = [
        ("off", [Ok(""), Ok(""), Ok(""), Ok(""), Ok(""), Ok("")]),
        (
            "optional",
            [
                Ok(""),
                Ok("alice"),
                Refused("unknown_ca"),
                Refused("expired"),
                Refused("revoked"),
                Refused("not_allowed"),
            ],
        ),
        (
            "require",
            [
                Refused("no_cert"),
                Ok("alice"),
                Refused("unknown_ca"),
                Refused("expired"),
                Refused("revoked"),
                Refused("not_allowed"),
            ],
        ),
    ];
    for proto in ["--http1.1", "--http2"] {
        for (mode, expects) in &table {
            for (client, expect) in clients.iter().zip(expects) {
                let host = format!("{mode}.localhost");
                let mut args = vec![proto];
                let (cert, key);
                if let Some(c) = client {
                    cert = pki.path(&format!("{c}.crt"));
                    key = pki.path(&format!("{c}.key"));
                    args.extend(["--cert", &cert, "--key", &key]);
                }
                let before = edge.log_count("handshake refused");
                let out = curl(&host, port, "/", &ca, &args);
                let what = format!("{mode} site, client {client:?}, {proto}: {out:?}");
                match expect {
                    Ok(cn) => {
                        assert_eq!(out.status, 200, "{what}");
                        assert!(out.body.starts_with(&format!("{mode} cn={cn}")), "{what}");
                        let want_version = if proto == "--http2" { "2" } else { "1.1" };
                        assert_eq!(out.version, want_version, "{what}");
                    }
                    Refused(result) => {
                        assert!(out.refused(), "{what}");
                        edge.wait_log_count("handshake refused", before, Duration::from_secs(5));
                        let log = edge.log();
                        let refusals: Vec<&str> = log.lines().filter(|l| l.contains("handshake refused")).collect();
                        assert!(refusals.len() > before, "{what}");
                        let last = refusals[refusals.len() - 1];
                        assert!(last.contains(&format!("result=\"{result}\"")), "{what}\n{last}");
                        assert!(
                            last.contains(&format!("site=\"{mode}.localhost\""))
                                || last.contains(&format!("site={mode}.localhost")),
                            "{what}\n{last}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn identity_placeholders_and_tls_details() {
    let dir = tempdir();
    let (pki, edge) = matrix_edge(dir.path());
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("carol.crt"), pki.path("carol.key"));
    let out = curl("require.localhost", edge.port(), "/", &ca, &["--http2", "--cert", &cert, "--key", &key]);
    assert_eq!(out.body, "require cn=carol ou=ops proto=HTTP/2 tls=TLSv1.3", "{out:?}");
    let out = curl(
        "require.localhost",
        edge.port(),
        "/",
        &ca,
        &["--http1.1", "--tlsv1.2", "--tls-max", "1.2", "--cert", &cert, "--key", &key],
    );
    assert_eq!(out.body, "require cn=carol ou=ops proto=HTTP/1.1 tls=TLSv1.2", "{out:?}");
    // TLS 1.1 and below are refused.
    let out = curl("off.localhost", edge.port(), "/", &ca, &["--tlsv1.0", "--tls-max", "1.1"]);
    assert!(out.refused(), "{out:?}");
}

#[test]
fn host_of_another_site_is_misdirected() {
    let dir = tempdir();
    let (pki, edge) = matrix_edge(dir.path());
    let ca = pki.path("ca.pem");
    let port = edge.port();
    for proto in ["--http1.1", "--http2"] {
        // A connection to the open site must not reach the mTLS site.
        let out = curl("off.localhost", port, "/", &ca, &[proto, "-H", "Host: require.localhost"]);
        assert_eq!(out.status, 421, "{proto} {out:?}");
        assert!(!out.body.contains("require cn="), "{out:?}");
        // A name no site has is misdirected too.
        let out = curl("off.localhost", port, "/", &ca, &[proto, "-H", "Host: elsewhere.example"]);
        assert_eq!(out.status, 421, "{proto} {out:?}");
        // The same site under its own name, with a port, is fine.
        let out = curl("off.localhost", port, "/", &ca, &[proto, "-H", &format!("Host: OFF.localhost:{port}")]);
        assert_eq!(out.status, 200, "{proto} {out:?}");
    }
}

#[test]
fn sni_chooses_the_site_and_unknown_sni_is_refused() {
    let dir = tempdir();
    let pki = Pki::new(dir.path(), &["a.localhost", "*.wild.localhost", "127.0.0.1"]);
    let edgefile = r#"
admin "off"
site "a.localhost" {
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    respond "site a {host}"
}
site "*.wild.localhost" {
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    respond "site wild {host}"
}
site "127.0.0.1" {
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    respond "site ip {host}"
}
"#;
    let edge = Edge::start(dir.path(), edgefile);
    let ca = pki.path("ca.pem");
    let port = edge.port();
    assert_eq!(curl("a.localhost", port, "/", &ca, &[]).body, "site a a.localhost");
    assert_eq!(curl("x.wild.localhost", port, "/", &ca, &[]).body, "site wild x.wild.localhost");
    // A wildcard covers one label only.
    assert!(curl("x.y.wild.localhost", port, "/", &ca, &[]).refused());
    // No such site: refused in the handshake.
    let out = curl("nobody.localhost", port, "/", &ca, &[]);
    assert!(out.refused(), "{out:?}");
    edge.wait_log("result=\"no_site\"", Duration::from_secs(5));
    // No SNI (an IP literal): the site named by the local address.
    let out = curl("127.0.0.1", port, "/", &ca, &[]);
    assert_eq!(out.body, "site ip 127.0.0.1", "{out:?}");
}

#[test]
fn no_sni_and_no_ip_site_is_refused() {
    let dir = tempdir();
    let pki = Pki::new(dir.path(), &["a.localhost"]);
    let edge = Edge::start(
        dir.path(),
        r#"admin "off"
site "a.localhost" { listen "127.0.0.1:0"; tls cert="server.crt" key="server.key"; respond "a"; }"#,
    );
    let out = curl("127.0.0.1", edge.port(), "/", &pki.path("ca.pem"), &["-k"]);
    assert!(out.refused(), "{out:?}");
}

#[test]
fn a_route_tightens_client_auth_and_normalised_paths_cannot_bypass_it() {
    let dir = tempdir();
    let pki = Pki::new(dir.path(), &["news.localhost"]);
    let edge = Edge::start(
        dir.path(),
        r#"
admin "off"
site "news.localhost" {
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    client-auth optional { trust file="ca.pem"; }
    route "/admin/*" {
        client-auth require { allow ou="ops"; }
        respond "admin area for {client.cn}"
    }
    route "/*" {
        respond "public {path}"
    }
}
"#,
    );
    let ca = pki.path("ca.pem");
    let port = edge.port();
    let (alice_c, alice_k) = (pki.path("alice.crt"), pki.path("alice.key"));
    let (carol_c, carol_k) = (pki.path("carol.crt"), pki.path("carol.key"));
    for proto in ["--http1.1", "--http2"] {
        let out = curl("news.localhost", port, "/admin/x", &ca, &[proto]);
        assert_eq!(out.status, 403, "{out:?}");
        assert_eq!(out.body, "a client certificate is required for this path\n");
        let out = curl("news.localhost", port, "/admin/x", &ca, &[proto, "--cert", &alice_c, "--key", &alice_k]);
        assert_eq!(out.status, 403, "{out:?}");
        let out = curl("news.localhost", port, "/admin/x", &ca, &[proto, "--cert", &carol_c, "--key", &carol_k]);
        assert_eq!((out.status, out.body.as_str()), (200, "admin area for carol"), "{out:?}");
        // Every spelling of /admin reaches the admin route's policy.
        for path in
            ["/admin", "//admin", "/x/../admin", "/%61dmin/", "/admin/./y", "/./admin", "/%2e/admin", "/a/%2E%2E/admin"]
        {
            let out = curl("news.localhost", port, path, &ca, &[proto, "--path-as-is"]);
            assert_eq!(out.status, 403, "{path} {proto} {out:?}");
            let out = curl(
                "news.localhost",
                port,
                path,
                &ca,
                &[proto, "--path-as-is", "--cert", &carol_c, "--key", &carol_k],
            );
            assert_eq!(out.status, 200, "{path} {proto} {out:?}");
        }
        // Climbing above the root is refused outright.
        for path in ["/../admin", "/%2e%2e/admin", "/a/../../admin"] {
            let out = curl("news.localhost", port, path, &ca, &[proto, "--path-as-is"]);
            assert_eq!(out.status, 400, "{path} {proto} {out:?}");
        }
        // Lookalikes are not the admin route.
        let out = curl("news.localhost", port, "/administrator", &ca, &[proto]);
        assert_eq!((out.status, out.body.as_str()), (200, "public /administrator"), "{out:?}");
    }
}

#[test]
fn allow_rules_by_san_and_fingerprint() {
    let dir = tempdir();
    let mut pki = Pki::new(dir.path(), &["svc.localhost"]);
    pki.add_client(
        "ingest",
        &ClientOpts {
            san_dns: vec!["ingest.newsroom.internal".into()],
            san_uri: vec!["spiffe://newsroom/ingest".into()],
            ..Default::default()
        },
    );
    let fp = {
        let der = &pki.ders["carol"];
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in", &pki.path("carol.crt")])
            .output()
            .unwrap();
        let _ = der;
        String::from_utf8(out.stdout).unwrap().trim().split('=').nth(1).unwrap().replace(':', "").to_lowercase()
    };
    let edge = Edge::start(
        dir.path(),
        &format!(
            r#"
admin "off"
site "svc.localhost" {{
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    client-auth require {{
        trust file="ca.pem"
        allow san-dns="ingest.newsroom.internal" san-uri="spiffe://newsroom/ingest"
        allow fingerprint="sha256:{fp}"
    }}
    respond "{{client.cn}} {{client.san}} {{client.fingerprint}}"
}}
"#
        ),
    );
    let ca = pki.path("ca.pem");
    let port = edge.port();
    let with = |who: &str| {
        let (c, k) = (pki.path(&format!("{who}.crt")), pki.path(&format!("{who}.key")));
        curl("svc.localhost", port, "/", &ca, &["--cert", &c, "--key", &k])
    };
    let out = with("ingest");
    assert_eq!(out.status, 200, "{out:?}");
    assert!(out.body.starts_with("ingest ingest.newsroom.internal,spiffe://newsroom/ingest sha256:"), "{out:?}");
    let out = with("carol");
    assert_eq!(out.body, format!("carol  sha256:{fp}"), "{out:?}");
    assert!(with("alice").refused());
}
