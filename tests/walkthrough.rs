//! The README's walkthrough: Edgefile.example with the PKI that
//! scripts/demo-pki mints, and the README's curl commands (on a free port
//! instead of 8443).

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

#[test]
fn readme_walkthrough_on_edgefile_example() {
    let dir = tempdir();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new(root.join("scripts/demo-pki")).arg(dir.path().join("certs")).status().unwrap();
    assert!(st.success());
    let public = dir.path().join("public");
    std::fs::create_dir_all(&public).unwrap();
    std::fs::copy(root.join("public/index.html"), public.join("index.html")).unwrap();
    let example = std::fs::read_to_string(root.join("Edgefile.example")).unwrap();
    assert!(example.contains("127.0.0.1:8443"));
    assert!(example.contains("admin \"127.0.0.1:2019\""));
    let example = example.replace("127.0.0.1:8443", "127.0.0.1:0").replace("127.0.0.1:2019", "127.0.0.1:0");
    let edge = Edge::start_watching(dir.path(), &example);
    let port = edge.port();
    let certs = dir.path().join("certs");
    let p = |n: &str| certs.join(n).display().to_string();
    let ca = p("ca.pem");

    // No certificate: refused inside the handshake.
    let out = curl("app.localhost", port, "/", &ca, &[]);
    assert!(out.refused(), "{out:?}");

    // alice (editors) gets in, over HTTP/2.
    let alice = ["--cert", &p("alice.crt"), "--key", &p("alice.key")];
    let out = curl("app.localhost", port, "/", &ca, &alice);
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(out.body, "hello alice (editors) over HTTP/2\n");
    assert_eq!(out.header("cache-control").as_deref(), Some("no-store"));

    // The admin route is for ops only: alice gets 403, carol gets in.
    let out = curl("app.localhost", port, "/admin/", &ca, &alice);
    assert_eq!((out.status, out.body.as_str()), (403, "this client certificate is not allowed on this path\n"));
    let carol = ["--cert", &p("carol.crt"), "--key", &p("carol.key")];
    let out = curl("app.localhost", port, "/admin/", &ca, &carol);
    assert_eq!((out.status, out.body.as_str()), (200, "admin area, hello carol\n"));

    // The public face: no certificate needed, files and a redirect.
    let out = curl("localhost", port, "/", &ca, &[]);
    assert_eq!((out.status, out.body.as_str()), (200, "public site; your certificate: \n"));
    let out = curl("localhost", port, "/", &ca, &alice);
    assert_eq!(out.body, "public site; your certificate: alice\n");
    let out = curl("localhost", port, "/files/", &ca, &[]);
    assert_eq!(out.status, 200);
    assert!(out.body.contains("Served by edge"), "{out:?}");
    let out = curl("localhost", port, "/old/x", &ca, &[]);
    assert_eq!(out.status, 308);

    // The public connection cannot reach the mTLS site by Host.
    let out = curl("localhost", port, "/", &ca, &["-H", "Host: app.localhost"]);
    assert_eq!(out.status, 421, "{out:?}");

    // No SNI (an IP address): the public site.
    let out = curl("127.0.0.1", port, "/", &ca, &[]);
    assert_eq!(out.status, 200, "{out:?}");

    // The API route proxies to upstreams that are not running here: 502.
    let out = curl("app.localhost", port, "/api/x", &ca, &alice);
    assert_eq!(out.status, 502, "{out:?}");

    // Revoke alice as the README says: edge reloads the CRL by itself.
    let st = Command::new("sh")
        .arg("-c")
        .arg("openssl ca -config ca.cnf -revoke alice.crt && openssl ca -config ca.cnf -gencrl -out clients.crl")
        .current_dir(&certs)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !curl("app.localhost", port, "/", &ca, &alice).refused() {
        assert!(std::time::Instant::now() < deadline, "the new CRL never applied:\n{}", edge.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    edge.wait_log("result=\"revoked\"", std::time::Duration::from_secs(5));
    let out = curl("app.localhost", port, "/", &ca, &carol);
    assert_eq!(out.status, 200, "{out:?}");
}
