//! The README's walkthrough on Edgefile.example, with the README's commands:
//! token -> enroll with openssl + curl -> call an mTLS site -> renew with curl
//! -> run the agent -> revoke -> refused (on free ports instead of 8443).

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn sh(dir: &Path, script: &str) -> (i32, String, String) {
    let out = Command::new("bash").arg("-c").arg(script).current_dir(dir).env("EDGE", edge_bin()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn readme_walkthrough_on_edgefile_example() {
    let dir = tempdir();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let public = dir.path().join("public");
    std::fs::create_dir_all(&public).unwrap();
    std::fs::copy(root.join("public/index.html"), public.join("index.html")).unwrap();
    let example = std::fs::read_to_string(root.join("Edgefile.example")).unwrap();
    assert!(example.contains("listen \"127.0.0.1:8443\"") && example.contains("admin \"127.0.0.1:2019\""));
    let example = example.replace("127.0.0.1:8443", "127.0.0.1:0").replace("127.0.0.1:2019", "127.0.0.1:0");
    let edge = Edge::start(dir.path(), &example);
    let port = edge.port_of("127.0.0.1:0");
    let d = dir.path();
    let url = format!("https://pki.localhost:{port}");

    // The CA's certificate, and a one-time token for alice.
    let (code, _, err) = sh(d, "$EDGE ca root --config Edgefile --ca newsroom > ca.crt");
    assert_eq!(code, 0, "{err}");
    let (code, token, recipe) = sh(d, "$EDGE ca token --config Edgefile --ca newsroom --cn alice --ou editors");
    assert_eq!(code, 0, "{recipe}");
    let token = token.trim().to_string();
    assert!(token.len() >= 40, "{token}");
    assert!(recipe.contains("simpleenroll"), "{recipe}");

    // Enroll with openssl + curl; the CSR's subject is ignored.
    let enroll = format!(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout alice.key -subj /CN=someone-else -out alice.csr 2>/dev/null && \
         curl -sS -f --cacert ca.crt -H 'Authorization: Bearer {token}' -H 'Content-Type: application/pkcs10' \
         -H 'Accept: application/pem-certificate-chain' --data-binary @alice.csr {url}/.well-known/est/simpleenroll > alice.crt && \
         openssl x509 -in alice.crt -noout -subject"
    );
    let (code, subject, err) = sh(d, &enroll);
    assert_eq!(code, 0, "{err}");
    assert!(subject.contains("CN = alice") && subject.contains("OU = editors"), "{subject}");

    // Call the mTLS site with it; without it the handshake is refused.
    let app = |extra: &str| sh(d, &format!("curl -sS --cacert ca.crt {extra} https://app.localhost:{port}/"));
    let (code, body, err) = app("--cert alice.crt --key alice.key");
    assert_eq!((code, body.as_str()), (0, "hello alice (editors) over HTTP/2\n"), "{err}");
    let (code, _, _) = app("");
    assert_ne!(code, 0);

    // Renew with curl: a new key, the current certificate as the credential.
    let renew = format!(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout next.key -subj /CN=x -out next.csr 2>/dev/null && \
         curl -sS -f --cacert ca.crt --cert alice.crt --key alice.key -H 'Accept: application/pem-certificate-chain' \
         --data-binary @next.csr -H 'Content-Type: application/pkcs10' {url}/.well-known/est/simplereenroll > next.crt && \
         mv next.crt alice.crt && mv next.key alice.key"
    );
    let (code, _, err) = sh(d, &renew);
    assert_eq!(code, 0, "{err}");
    let (_, body, _) = app("--cert alice.crt --key alice.key");
    assert_eq!(body, "hello alice (editors) over HTTP/2\n");

    // The agent renews (once, as cron would) and keeps the key private.
    let before = std::fs::read_to_string(d.join("alice.crt")).unwrap();
    let (code, _, err) = sh(
        d,
        &format!(
            "$EDGE agent --url {url} --cert alice.crt --key alice.key --ca-file ca.crt --once --exec 'touch renewed'"
        ),
    );
    assert_eq!(code, 0, "{err}");
    assert_ne!(std::fs::read_to_string(d.join("alice.crt")).unwrap(), before);
    assert!(d.join("renewed").exists(), "--exec ran");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(d.join("alice.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let (_, body, _) = app("--cert alice.crt --key alice.key");
    assert_eq!(body, "hello alice (editors) over HTTP/2\n");

    // The ledger lists her certificates.
    let (code, list, _) = sh(d, "$EDGE ca list --config Edgefile --ca newsroom");
    assert_eq!(code, 0);
    assert!(list.starts_with("serial\tcn\tou\tnot-after\tstatus\n"), "{list}");
    assert_eq!(list.lines().filter(|l| l.contains("\talice\teditors\t")).count(), 3, "{list}");
    assert_eq!(list.lines().filter(|l| l.contains("\talice\t") && l.ends_with("\tvalid")).count(), 1, "{list}");

    // Revoke: refused within 2 seconds, no reload; the agent stops with a clear message.
    let (code, _, err) = sh(d, "$EDGE ca revoke --config Edgefile --ca newsroom --cn alice");
    assert_eq!(code, 0, "{err}");
    let revoked_at = Instant::now();
    while app("--cert alice.crt --key alice.key").0 == 0 {
        assert!(revoked_at.elapsed() < Duration::from_secs(2), "still served 2 s after the revocation");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _, err) =
        sh(d, &format!("$EDGE agent --url {url} --cert alice.crt --key alice.key --ca-file ca.crt --once"));
    assert_eq!(code, 1);
    assert!(err.contains("revoked"), "{err}");
    assert!(!edge.log().contains("config reloaded"), "a revocation needs no reload");

    // The public face and the other requests of the README.
    let (_, body, _) = sh(d, &format!("curl -sS --cacert ca.crt https://localhost:{port}/"));
    assert_eq!(body, "public site; your certificate: \n");
    let (_, body, _) = sh(d, &format!("curl -sS --cacert ca.crt https://localhost:{port}/files/"));
    assert!(body.contains("Served by edge"), "{body}");
    let (_, body, _) = sh(d, &format!("curl -sS --cacert ca.crt -H 'Host: app.localhost' https://localhost:{port}/"));
    assert_eq!(body, "misdirected request: app.localhost is not served on this connection\n");
}
