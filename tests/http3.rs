//! HTTP/3 with the same per-site client-certificate policy as TCP, driven by
//! two independent clients (Rust quinn + h3, Python aioquic) through the same
//! matrix as the TCP tests.

mod common;
use common::h3c::{aioquic, pattern, rust_h3, H3Out, H3Req};
use common::*;

fn edge_for(dir: &std::path::Path, extra: &str) -> (Pki, Edge, SinkUpstream) {
    let pki = Pki::new(dir, &["open.localhost", "optional.localhost", "require.localhost", "tcp-only.localhost"]);
    let sink = SinkUpstream::start();
    let big = pattern(6 << 20);
    write(&dir.join("public"), "big.bin", &big);
    let edgefile = format!(
        r#"admin "127.0.0.1:0"
site "open.localhost" {{
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    respond "open {{proto}}"
}}
site "optional.localhost" {{
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    client-auth optional {{
        trust file="ca.pem"
        crl file="crl.pem"
        allow cn="alice"
        allow ou="ops"
    }}
    route "/admin/*" {{
        client-auth require {{ allow ou="ops"; }}
        respond "admin {{client.cn}}"
    }}
    route "/*" {{ respond "optional cn={{client.cn}} {{proto}}"; }}
}}
site "require.localhost" {{
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    client-auth require {{
        trust file="ca.pem"
        crl file="crl.pem"
        allow cn="alice"
        allow ou="ops"
    }}
    route "/big.bin" {{ file-server "public"; }}
    route "/upload" {{ max-body "64MiB"; reverse-proxy "http://{}"; }}
    route "/*" {{ respond "require cn={{client.cn}} ou={{client.ou}} {{proto}} {{tls.version}}"; }}
}}
{extra}"#,
        sink.addr
    );
    let edge = Edge::start(dir, &edgefile);
    (pki, edge, sink)
}

type Client = fn(&H3Req) -> H3Out;
const CLIENTS: [(&str, Client); 2] = [("rust", rust_h3), ("aioquic", aioquic)];

#[test]
fn the_matrix_over_http3_with_two_clients() {
    let dir = tempdir();
    let (pki, edge, _sink) = edge_for(dir.path(), "");
    let port = edge.port_of("127.0.0.1:0");
    let ca = pki.path("ca.pem");
    let certs: Vec<(String, String)> = ["alice", "carol", "stranger", "expired", "revoked", "mallory"]
        .iter()
        .map(|c| (pki.path(&format!("{c}.crt")), pki.path(&format!("{c}.key"))))
        .collect();
    let cert = |who: &str| {
        let i = ["alice", "carol", "stranger", "expired", "revoked", "mallory"].iter().position(|c| *c == who).unwrap();
        Some((certs[i].0.as_str(), certs[i].1.as_str()))
    };
    // mallory is in the trusted CA but has no allowed OU.
    for (name, client) in CLIENTS {
        let req = |host: &'static str, who: Option<&str>| H3Req {
            host,
            port,
            ca: &ca,
            cert: who.and_then(cert),
            ..Default::default()
        };
        // The open site, no certificate.
        let out = client(&req("open.localhost", None));
        assert_eq!((out.status, out.text()), (Some(200), "open HTTP/3".into()), "{name} {out:?}");
        // Valid certificates: 200 with the identity.
        let out = client(&req("require.localhost", Some("alice")));
        assert_eq!(out.status, Some(200), "{name} {out:?}");
        assert_eq!(out.text(), "require cn=alice ou=editors HTTP/3 TLSv1.3", "{name}");
        let out = client(&req("optional.localhost", None));
        assert_eq!(out.text(), "optional cn= HTTP/3", "{name} {out:?}");
        let out = client(&req("optional.localhost", Some("carol")));
        assert_eq!(out.text(), "optional cn=carol HTTP/3", "{name} {out:?}");
        // Refusals inside the handshake.
        for host in ["require.localhost", "optional.localhost"] {
            for who in ["stranger", "expired", "revoked", "mallory"] {
                let out = client(&req(host, Some(who)));
                assert!(out.refused(), "{name} {host} {who}: {out:?}");
            }
        }
        let out = client(&req("require.localhost", None));
        assert!(out.refused(), "{name} no cert: {out:?}");
        let out = client(&req("nobody.localhost", None));
        assert!(out.refused(), "{name} unknown SNI: {out:?}");

        // 421: an :authority of another site never reaches it.
        let out = client(&H3Req { authority: Some("require.localhost"), ..req("open.localhost", None) });
        assert_eq!(out.status, Some(421), "{name} {out:?}");
        // 403 on a stricter route, and no bypass by path spelling.
        let out = client(&H3Req { path: "/admin/x", ..req("optional.localhost", Some("alice")) });
        assert_eq!(out.status, Some(403), "{name} {out:?}");
        let out = client(&H3Req { path: "//admin/../admin/x", ..req("optional.localhost", Some("alice")) });
        assert_eq!(out.status, Some(403), "{name} {out:?}");
        let out = client(&H3Req { path: "/admin/x", ..req("optional.localhost", Some("carol")) });
        assert_eq!((out.status, out.text()), (Some(200), "admin carol".into()), "{name} {out:?}");
    }
    // A server certificate presented as a client one: bad_cert.
    let (c, k) = pki.ca.server(&["not-a-client.localhost"]);
    let (c, k) = (write(dir.path(), "sac.crt", c), write(dir.path(), "sac.key", k));
    let out = rust_h3(&H3Req {
        host: "require.localhost",
        port,
        ca: &ca,
        cert: Some((c.to_str().unwrap(), k.to_str().unwrap())),
        ..Default::default()
    });
    assert!(out.refused(), "{out:?}");
    // Every refusal was counted, per site, as over TCP.
    let (_, m) = edge.admin_request("GET", "/metrics");
    for (site, result, n) in [
        ("require.localhost", "ok", 2),
        ("optional.localhost", "ok", 10),
        ("open.localhost", "ok", 4),
        ("require.localhost", "unknown_ca", 2),
        ("require.localhost", "expired", 2),
        ("require.localhost", "revoked", 2),
        ("require.localhost", "not_allowed", 2),
        ("require.localhost", "no_cert", 2),
        ("optional.localhost", "unknown_ca", 2),
        ("", "no_site", 2),
        ("require.localhost", "bad_cert", 1),
    ] {
        let line = format!("edge_tls_handshakes_total{{result=\"{result}\",site=\"{site}\",transport=\"quic\"}} {n}");
        assert!(m.lines().any(|l| l == line), "missing {line}\n{m}");
    }
}

#[test]
fn alt_svc_on_h1_and_h2_names_the_udp_port() {
    let dir = tempdir();
    let (pki, edge, _sink) = edge_for(
        dir.path(),
        r#"site "tcp-only.localhost" {
    listen "127.0.0.2:0" http3=#false
    tls cert="server.crt" key="server.key"
    respond "tcp only"
}"#,
    );
    let port = edge.port_of("127.0.0.1:0");
    let ca = pki.path("ca.pem");
    for proto in ["--http1.1", "--http2"] {
        let out = curl("open.localhost", port, "/", &ca, &[proto]);
        assert_eq!(out.header("alt-svc").as_deref(), Some(format!("h3=\":{port}\"; ma=86400").as_str()), "{out:?}");
    }
    // http3=#false: no UDP, no Alt-Svc.
    let port2 = edge.port_of("127.0.0.2:0");
    let out = std::process::Command::new("curl")
        .args(["-sS", "-D", "-", "--cacert", &ca, "--resolve", &format!("tcp-only.localhost:{port2}:127.0.0.2")])
        .arg(format!("https://tcp-only.localhost:{port2}/"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.contains("tcp only") && !text.contains("alt-svc"), "{text}");
    assert!(std::net::UdpSocket::bind(("127.0.0.2", port2)).is_ok(), "UDP port must be free with http3=#false");
}

#[test]
fn several_mib_stream_both_ways_over_http3() {
    let dir = tempdir();
    let (pki, edge, _sink) = edge_for(dir.path(), "");
    let port = edge.port_of("127.0.0.1:0");
    let ca = pki.path("ca.pem");
    let (c, k) = (pki.path("alice.crt"), pki.path("alice.key"));
    let big = pattern(6 << 20);
    for (name, client) in CLIENTS {
        let base = H3Req { host: "require.localhost", port, ca: &ca, cert: Some((&c, &k)), ..Default::default() };
        let out = client(&H3Req { path: "/big.bin", ..base.clone() });
        assert_eq!(out.status, Some(200), "{name} {:?}", out.error);
        if name == "rust" {
            assert_eq!(out.body.len(), big.len());
            assert!(out.body == big, "{name}: download differs");
        } else {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &big);
            let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(out.text(), format!("sha256:{hex}"), "{name}: download differs");
        }
        let out = client(&H3Req { path: "/upload", method: "POST", body: big.clone(), ..base.clone() });
        assert_eq!(out.status, Some(200), "{name} {out:?}");
        assert_eq!(out.text(), format!("len={} sum={:x}", big.len(), checksum(&big)), "{name}");
    }
}

/// On one core edge runs everything on one thread; on more, TCP connections
/// go to one worker thread per core. Both serve h1, h2 and h3 with the policy.
#[test]
fn one_core_and_many_cores_serve_every_protocol() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for one_core in [true, false] {
        let dir = tempdir();
        let pki = Pki::new(dir.path(), &["require.localhost"]);
        let edgefile = r#"site "require.localhost" {
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    client-auth require { trust file="ca.pem"; }
    respond "cn={client.cn} {proto}"
}
"#;
        let edge =
            if one_core { Edge::start_on_one_core(dir.path(), edgefile) } else { Edge::start(dir.path(), edgefile) };
        let workers = if one_core || cores == 1 { 0 } else { cores };
        let ready = edge.log().lines().find(|l| l.contains("edge is ready")).unwrap_or_default().to_string();
        assert!(ready.split_whitespace().any(|w| w == format!("workers={workers}")), "{ready}");
        let port = edge.port();
        let ca = pki.path("ca.pem");
        let (crt, key) = (pki.path("alice.crt"), pki.path("alice.key"));
        for (flag, proto) in [("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2")] {
            // Several connections, so that each worker serves some.
            for _ in 0..3 {
                let out = curl("require.localhost", port, "/", &ca, &[flag, "--cert", &crt, "--key", &key]);
                assert_eq!((out.status, out.body.as_str()), (200, format!("cn=alice {proto}").as_str()), "{out:?}");
            }
            let out = curl("require.localhost", port, "/", &ca, &[flag]);
            assert!(out.refused(), "no certificate over {proto}: {out:?}");
        }
        let req = H3Req { host: "require.localhost", port, ca: &ca, cert: Some((&crt, &key)), ..Default::default() };
        let out = rust_h3(&req);
        assert_eq!((out.status, out.text()), (Some(200), "cn=alice HTTP/3".into()), "{out:?}");
        assert!(rust_h3(&H3Req { cert: None, ..req }).refused());
    }
}
