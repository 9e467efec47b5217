//! Hot reload through the real binary: file watch, SIGHUP, `edge reload`,
//! `POST /reload`; broken saves never applied; no request lost under load.

mod common;
use common::*;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn edgefile(body: &str, extra_sites: &str) -> String {
    format!(
        r#"admin "127.0.0.1:0"
storage "data"
site "app.localhost" {{
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    client-auth optional {{
        trust file="ca.pem"
        crl file="crl.pem"
    }}
    respond "{body} {{client.cn}}"
}}
{extra_sites}"#
    )
}

/// Waits (bounded) until curl sees `want` in the body.
fn wait_for_body(host: &str, port: u16, ca: &str, args: &[&str], want: &str) -> CurlOut {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = curl(host, port, "/", ca, args);
        if out.body.contains(want) || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_broken_save_is_reported_and_the_fixed_save_applied() {
    let dir = tempdir();
    let pki = Pki::new(dir.path(), &["app.localhost", "new.localhost"]);
    let ca = pki.path("ca.pem");
    let edge = Edge::start_watching(dir.path(), &edgefile("one", ""));
    let port = edge.port_of("127.0.0.1:0");
    assert_eq!(curl("app.localhost", port, "/", &ca, &[]).body, "one ");

    // A typo saved in place: logged with line and column, old config serves on.
    let config = dir.path().join("Edgefile");
    std::fs::write(&config, edgefile("two", "").replace("respond", "respnd")).unwrap();
    edge.wait_log("reload failed", Duration::from_secs(10));
    let log = edge.log();
    assert!(log.contains(&format!("{}:10:5: error: unknown node `respnd` in a site", config.display())), "{log}");
    assert_eq!(curl("app.localhost", port, "/", &ca, &[]).body, "one ");

    // The fixed save, written the way vim does it (new file, rename over).
    let tmp = dir.path().join(".Edgefile.swp");
    std::fs::write(&tmp, edgefile("three", "")).unwrap();
    std::fs::rename(&tmp, &config).unwrap();
    let out = wait_for_body("app.localhost", port, &ca, &[], "three");
    assert_eq!(out.body, "three ", "{}", edge.log());

    // Delete and create.
    std::fs::remove_file(&config).unwrap();
    std::fs::write(&config, edgefile("four", "")).unwrap();
    let out = wait_for_body("app.localhost", port, &ca, &[], "four");
    assert_eq!(out.body, "four ", "{}", edge.log());

    // The metrics saw it all.
    let (status, metrics) = edge.admin_request("GET", "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("edge_config_reloads_total{result=\"failure\"}"), "{metrics}");
    let gen: i64 =
        metrics.lines().find_map(|l| l.strip_prefix("edge_config_generation ")).unwrap().trim().parse().unwrap();
    assert!(gen >= 3, "{metrics}");
}

#[test]
fn a_changed_crl_applies_with_the_edgefile_untouched() {
    let dir = tempdir();
    let mut pki = Pki::new(dir.path(), &["app.localhost"]);
    pki.add_client("dave", &ClientOpts { serial: Some(0x0d0e), ..Default::default() });
    let ca = pki.path("ca.pem");
    let edge = Edge::start_watching(dir.path(), &edgefile("hi", ""));
    let port = edge.port();
    let alice = ["--cert", &pki.path("dave.crt"), "--key", &pki.path("dave.key")];
    assert_eq!(curl("app.localhost", port, "/", &ca, &alice).body, "hi dave");
    // Revoke dave by serial in a new CRL.
    write(dir.path(), "crl.pem", pki.ca.crl(&[0x0d0e, REVOKED_SERIAL]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !curl("app.localhost", port, "/", &ca, &alice).refused() {
        assert!(Instant::now() < deadline, "the new CRL never applied:\n{}", edge.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Others still get in.
    let carol = ["--cert", &pki.path("carol.crt"), "--key", &pki.path("carol.key")];
    assert_eq!(curl("app.localhost", port, "/", &ca, &carol).body, "hi carol");
}

#[test]
fn sighup_edge_reload_and_post_reload_share_one_path() {
    let dir = tempdir();
    let pki = Pki::new(dir.path(), &["app.localhost"]);
    let ca = pki.path("ca.pem");
    let mut edge = Edge::start(dir.path(), &edgefile("a", ""));
    let port = edge.port_of("127.0.0.1:0");
    let config = dir.path().join("Edgefile");
    let cfg = config.to_str().unwrap();

    // POST /reload: 200 with the new generation.
    std::fs::write(&config, edgefile("b", "")).unwrap();
    let (status, body) = edge.admin_request("POST", "/reload");
    assert_eq!((status, body.as_str()), (200, "{\"generation\":2}\n"));
    assert_eq!(curl("app.localhost", port, "/", &ca, &[]).body, "b ");

    // A broken file: 422 with the diagnostics, nothing changes.
    std::fs::write(&config, edgefile("c", "").replace("listen \"127.0.0.1:0\"", "listen \"127.0.0.1:99999\"")).unwrap();
    let (status, body) = edge.admin_request("POST", "/reload");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains(":4:12: error: bad address"), "{body}");
    assert_eq!(curl("app.localhost", port, "/", &ca, &[]).body, "b ");

    // `edge reload` finds the admin API from the Edgefile (port 0: from storage).
    let (code, _, err) = edge_cmd(&["reload", "--config", cfg]);
    assert_eq!(code, 1);
    assert!(err.contains(":4:12: error: bad address"), "{err}");
    std::fs::write(&config, edgefile("d", "")).unwrap();
    let (code, out, err) = edge_cmd(&["reload", "--config", cfg]);
    assert_eq!((code, out.as_str()), (0, "reloaded: generation 3\n"), "{err}");
    assert_eq!(curl("app.localhost", port, "/", &ca, &[]).body, "d ");

    // SIGHUP.
    std::fs::write(&config, edgefile("e", "")).unwrap();
    let before = edge.log_count("config reloaded");
    std::process::Command::new("kill").args(["-HUP", &edge.pid().to_string()]).status().unwrap();
    edge.wait_log_count("config reloaded", before, Duration::from_secs(10));
    assert_eq!(curl("app.localhost", port, "/", &ca, &[]).body, "e ");
    edge.refresh_bound();
    assert_eq!(edge.port_of("127.0.0.1:0"), port, "an unchanged listener is not re-bound");
}

#[test]
fn listeners_and_sites_come_and_go_live() {
    let dir = tempdir();
    let pki = Pki::new(dir.path(), &["app.localhost", "new.localhost"]);
    let ca = pki.path("ca.pem");
    let mut edge = Edge::start(dir.path(), &edgefile("a", ""));
    let port = edge.port_of("127.0.0.1:0");
    let new_site = r#"site "new.localhost" {
    listen "127.0.0.2:0"
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    respond "new site"
}"#;
    std::fs::write(dir.path().join("Edgefile"), edgefile("a", new_site)).unwrap();
    assert_eq!(edge.admin_request("POST", "/reload").0, 200);
    edge.refresh_bound();
    let port2 = edge.port_of("127.0.0.2:0");
    assert_eq!(edge.port_of("127.0.0.1:0"), port);
    assert_eq!(curl("new.localhost", port, "/", &ca, &[]).body, "new site");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert", &ca, "--resolve", &format!("new.localhost:{port2}:127.0.0.2")])
        .arg(format!("https://new.localhost:{port2}/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "new site");

    // Remove the site and its listener again.
    std::fs::write(dir.path().join("Edgefile"), edgefile("a", "")).unwrap();
    assert_eq!(edge.admin_request("POST", "/reload").0, 200);
    assert!(curl("new.localhost", port, "/", &ca, &[]).refused());
    assert!(std::net::TcpStream::connect(("127.0.0.2", port2)).is_err(), "removed listener still accepts");
    assert_eq!(curl("app.localhost", port, "/", &ca, &[]).body, "a ");
}

/// A bounded keep-alive load over h1 or h2 with TLS, recording every answer.
struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    count: Arc<AtomicUsize>,
}

impl Load {
    fn start(port: u16, ca_pem: &Path, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(ca_pem).unwrap();
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let roots = Arc::new(roots);
        let mut threads = Vec::new();
        for i in 0..clients {
            let (stop, answers, errors, count, roots) =
                (stop.clone(), answers.clone(), errors.clone(), count.clone(), roots.clone());
            let h2 = i % 2 == 1;
            threads.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(client(port, roots, h2, stop, answers, errors, count));
            }));
        }
        Load { stop, answers, errors, threads, count }
    }

    fn finish(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let a = self.answers.lock().unwrap().clone();
        let e = self.errors.lock().unwrap().clone();
        (a, e)
    }
}

async fn client(
    port: u16,
    roots: Arc<rustls::RootCertStore>,
    h2: bool,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicUsize>,
) {
    use http_body_util::{BodyExt, Empty};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let deadline = Instant::now() + Duration::from_secs(60);
    let fail = |e: String| errors.lock().unwrap().push(e);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            fail("connect".into());
            continue;
        };
        let name = rustls::pki_types::ServerName::try_from("app.localhost").unwrap();
        let tls = match connector.connect(name, tcp).await {
            Ok(t) => hyper_util::rt::TokioIo::new(t),
            Err(e) => {
                fail(format!("handshake: {e}"));
                continue;
            }
        };
        // A few requests per connection, then a fresh connection.
        macro_rules! run {
            ($sender:expr) => {
                for _ in 0..20 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let req = http::Request::get("https://app.localhost/")
                        .header("host", "app.localhost")
                        .body(Empty::<bytes::Bytes>::new())
                        .unwrap();
                    let res = tokio::time::timeout(Duration::from_secs(10), $sender.send_request(req)).await;
                    match res {
                        Ok(Ok(resp)) => {
                            let status = resp.status();
                            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                            match body {
                                Ok(b) if status == 200 => {
                                    answers.lock().unwrap().push(String::from_utf8_lossy(&b).into_owned());
                                    count.fetch_add(1, Ordering::SeqCst);
                                }
                                Ok(b) => fail(format!("status {status}: {}", String::from_utf8_lossy(&b))),
                                Err(e) => fail(format!("body: {e}")),
                            }
                        }
                        Ok(Err(e)) => fail(format!("request: {e}")),
                        Err(_) => fail("timeout".into()),
                    }
                }
            };
        }
        if h2 {
            let Ok((mut sender, conn)) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), tls).await
            else {
                fail("h2 handshake".into());
                continue;
            };
            tokio::spawn(conn);
            run!(sender);
        } else {
            let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(tls).await else {
                fail("h1 handshake".into());
                continue;
            };
            tokio::spawn(conn);
            run!(sender);
        }
    }
}

#[test]
fn fifty_reloads_under_load_lose_no_request() {
    let dir = tempdir();
    let pki = Pki::new(dir.path(), &["app.localhost"]);
    let edge = Edge::start(dir.path(), &edgefile("config-0", ""));
    let port = edge.port();
    let load = Load::start(port, &dir.path().join("ca.pem"), 4);
    let config = dir.path().join("Edgefile");
    let mut valid = vec!["config-0".to_string()];
    let mut took = Vec::new();
    for i in 1..=50 {
        if i % 2 == 0 {
            // A broken save: refused, old config kept.
            std::fs::write(&config, edgefile(&format!("broken-{i}"), "").replace("tls cert", "tls cerrt")).unwrap();
            let (status, body) = edge.admin_request("POST", "/reload");
            assert_eq!(status, 422, "{body}");
        } else {
            let name = format!("config-{i}");
            std::fs::write(&config, edgefile(&name, "")).unwrap();
            let t = Instant::now();
            let (status, body) = edge.admin_request("POST", "/reload");
            assert_eq!(status, 200, "{body}");
            // From save to the first request served by the new config.
            let out = wait_for_body("app.localhost", port, &pki.path("ca.pem"), &[], &name);
            took.push(t.elapsed());
            assert_eq!(out.body, format!("{name} "));
            valid.push(name);
        }
    }
    // Let the load run on the last config a moment (bounded).
    let seen = load.count.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while load.count.load(Ordering::SeqCst) < seen + 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (answers, errors) = load.finish();
    assert!(errors.is_empty(), "lost requests: {errors:?}");
    assert!(answers.len() > 100, "too little load: {}", answers.len());
    for a in &answers {
        let name = a.trim_end();
        assert!(valid.iter().any(|v| v == name), "answer from a config that was never valid: {a:?}");
    }
    took.sort();
    eprintln!(
        "reload, save to first request served: median {:?}, max {:?}, over {} requests",
        took[took.len() / 2],
        took[took.len() - 1],
        answers.len()
    );
}

#[test]
fn a_long_download_survives_a_reload() {
    let dir = tempdir();
    let pki = Pki::new(dir.path(), &["app.localhost"]);
    let big = vec![b'x'; 32 << 20];
    write(&dir.path().join("public"), "big.bin", &big);
    let text = |marker: &str| {
        edgefile(marker, "").replace(
            &format!("respond \"{marker} {{client.cn}}\""),
            &format!("route \"/big.bin\" {{ file-server \"public\"; }}\n    route \"/*\" {{ respond \"{marker}\"; }}"),
        )
    };
    let edge = Edge::start(dir.path(), &text("a"));
    let port = edge.port();
    // A slow reader: curl limited to 8 MiB/s takes ~4 s for 32 MiB.
    let child = std::process::Command::new("curl")
        .args(["-sS", "--limit-rate", "8M", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"])
        .args(["--cacert", &pki.path("ca.pem"), "--resolve", &format!("app.localhost:{port}:127.0.0.1")])
        .arg(format!("https://app.localhost:{port}/big.bin"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the download is under way (edge counts it as open).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = edge.admin_request("GET", "/metrics");
        let open: i64 = m
            .lines()
            .filter(|l| l.starts_with("edge_connections_active{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .sum();
        if open > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the download never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    for marker in ["b", "c"] {
        std::fs::write(dir.path().join("Edgefile"), text(marker)).unwrap();
        assert_eq!(edge.admin_request("POST", "/reload").0, 200);
    }
    assert_eq!(curl("app.localhost", port, "/", &pki.path("ca.pem"), &[]).body, "c");
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("200 {}", 32 << 20));
}
