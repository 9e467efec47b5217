//! The built-in CA over EST through the real binary, with openssl and curl:
//! answer formats, the X.509 of issued certificates, and every bad input.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const EDGEFILE: &str = r#"admin "127.0.0.1:0"
storage "data"
ca "newsroom" { cert-lifetime "2h"; }
site "pki.localhost" {
    listen "127.0.0.1:0"
    tls internal ca="newsroom"
    client-auth optional { trust ca="newsroom"; }
    enrollment ca="newsroom"
}
site "app.localhost" {
    listen "127.0.0.1:0"
    tls internal ca="newsroom"
    client-auth require { trust ca="newsroom"; }
    respond "hello {client.cn} ({client.ou}) {client.serial}"
}
"#;

struct Pki {
    dir: tempfile::TempDir,
    edge: Edge,
    port: u16,
}

impl Pki {
    fn start() -> Pki {
        let dir = tempdir();
        let edge = Edge::start(dir.path(), EDGEFILE);
        let port = edge.port_of("127.0.0.1:0");
        let p = Pki { dir, edge, port };
        let (code, _, err) = p.sh("$EDGE ca root --config Edgefile --ca newsroom > ca.crt");
        assert_eq!(code, 0, "{err}");
        p
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    fn sh(&self, script: &str) -> (i32, String, String) {
        let out = Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(self.d())
            .env("EDGE", edge_bin())
            .env("PORT", self.port.to_string())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn token(&self, cn: &str, extra: &str) -> String {
        let (code, out, err) = self.sh(&format!("$EDGE ca token --config Edgefile --ca newsroom --cn {cn} {extra}"));
        assert_eq!(code, 0, "{err}");
        out.trim().to_string()
    }

    /// A new P-256 key NAME.key and CSR NAME.csr (PEM) with `subj` and extra openssl args.
    fn csr(&self, name: &str, extra: &str) {
        let (code, _, err) = self.sh(&format!(
            "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}.key -subj /CN={name} {extra} -out {name}.csr"
        ));
        assert_eq!(code, 0, "{err}");
    }

    /// POSTs a file to an EST operation; returns (status, body, headers).
    fn post(&self, op: &str, file: &str, args: &str) -> (u16, String, String) {
        let (_, out, err) = self.sh(&format!(
            "curl -sS -D headers.txt -o body.txt -w '%{{http_code}}' --cacert ca.crt -H 'Content-Type: application/pkcs10' \
             --data-binary @{file} {args} https://pki.localhost:$PORT/.well-known/est/{op}; cat headers.txt >&2"
        ));
        let body = std::fs::read_to_string(self.d().join("body.txt")).unwrap_or_default();
        (out.trim().parse().unwrap_or(0), body, err)
    }

    fn enroll(&self, token: &str, csr: &str, args: &str) -> (u16, String, String) {
        self.post("simpleenroll", csr, &format!("-H 'Authorization: Bearer {token}' {args}"))
    }

    fn get(&self, op: &str, args: &str) -> (u16, Vec<u8>) {
        let out = Command::new("curl")
            .args(["-sS", "--cacert", "ca.crt", "-w", "\n%{http_code}"])
            .args(args.split_whitespace())
            .arg(format!("https://pki.localhost:{}/.well-known/est/{op}", self.port))
            .current_dir(self.d())
            .output()
            .unwrap();
        let mut body = out.stdout;
        let pos = body.iter().rposition(|b| *b == b'\n').unwrap_or(0);
        let status = String::from_utf8_lossy(&body[pos + 1..]).parse().unwrap_or(0);
        body.truncate(pos);
        (status, body)
    }
}

const PEM: &str = "-H Accept:application/pem-certificate-chain";

#[test]
fn enrollment_answers_and_the_x509_of_issued_certificates() {
    let p = Pki::start();
    // A CSR asking for another name and extra SANs: none of it is used.
    p.csr("dev1", "-addext subjectAltName=DNS:evil.example,DNS:admin.example");
    let token = p.token("dev1", "--ou editors --ou night-desk");
    let (status, body, headers) = p.enroll(&token, "dev1.csr", "");
    assert_eq!(status, 200, "{body}");
    assert!(
        headers.to_ascii_lowercase().contains("content-type: application/pkcs7-mime; smime-type=certs-only"),
        "{headers}"
    );
    // EST's answer is base64 PKCS#7 that openssl reads.
    std::fs::write(p.d().join("answer.b64"), &body).unwrap();
    let (code, certs, err) =
        p.sh("base64 -d answer.b64 > answer.p7 && openssl pkcs7 -inform DER -in answer.p7 -print_certs -out chain.pem && grep -c 'BEGIN CERTIFICATE' chain.pem");
    assert_eq!((code, certs.trim()), (0, "2"), "{err}");
    let (code, _, err) = p.sh("openssl verify -CAfile ca.crt -purpose sslclient chain.pem");
    assert_eq!(code, 0, "{err}");

    let pem = std::fs::read(p.d().join("chain.pem")).unwrap();
    use rustls::pki_types::pem::PemObject;
    let leaf = rustls::pki_types::CertificateDer::pem_slice_iter(&pem).next().unwrap().unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let cn: Vec<_> = cert.subject().iter_common_name().map(|a| a.as_str().unwrap().to_string()).collect();
    let ous: Vec<_> = cert.subject().iter_organizational_unit().map(|a| a.as_str().unwrap().to_string()).collect();
    assert_eq!(cn, ["dev1"]);
    assert_eq!(ous, ["editors", "night-desk"]);
    assert!(cert.subject_alternative_name().unwrap().is_none(), "no SAN from the CSR");
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(!cert.is_ca());
    let ski = cert.extensions().iter().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
        _ => None,
    });
    let aki = cert.extensions().iter().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
            a.key_identifier.as_ref().map(|k| k.0.to_vec())
        }
        _ => None,
    });
    assert!(ski.is_some_and(|k| !k.is_empty()), "SKI");
    let ca_pem = std::fs::read(p.d().join("ca.crt")).unwrap();
    let ca_der = rustls::pki_types::CertificateDer::pem_slice_iter(&ca_pem).next().unwrap().unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    let ca_ski = ca.extensions().iter().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
        _ => None,
    });
    assert_eq!(aki, ca_ski, "AKI names the CA's key");
    let serial = cert.raw_serial();
    let significant = serial.iter().skip_while(|b| **b == 0).count();
    assert!(significant >= 8, "serial of at least 64 bits: {serial:?}");
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!((2 * 3600..=2 * 3600 + 600).contains(&life), "cert-lifetime 2h (+ skew): {life}");

    // The certificate works on the mTLS site, with the identity of the token.
    let (_, body, _) = p.sh("curl -sS --cacert ca.crt --cert chain.pem --key dev1.key https://app.localhost:$PORT/");
    assert!(body.starts_with("hello dev1 (editors,night-desk) "), "{body}");

    // The other endpoints.
    let (status, body) = p.get("cacerts", PEM);
    assert_eq!(status, 200);
    assert_eq!(body, std::fs::read(p.d().join("ca.crt")).unwrap());
    let (status, der) = p.get("crl", "");
    assert_eq!(status, 200);
    assert!(x509_parser::parse_x509_crl(&der).is_ok());
    let (status, pem_crl) = p.get("crl", "-H Accept:application/x-pem-file");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&pem_crl).starts_with("-----BEGIN X509 CRL-----"));
    let (status, info) = p.get("renewal-info", "--cert chain.pem --key dev1.key");
    let info = String::from_utf8_lossy(&info);
    assert_eq!(status, 200, "{info}");
    for k in ["\"not_after\":\"", "\"renew_after\":\"", "\"renew_before\":\""] {
        assert!(info.contains(k), "{info}");
    }
    let (status, _) = p.get("renewal-info", "");
    assert_eq!(status, 401);

    // Metrics of the PKI.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = p.edge.admin_request("GET", "/metrics");
        if m.contains("edge_pki_identity_cert_expiry_timestamp_seconds{ca=\"newsroom\",identity=\"dev1\"}") {
            assert!(m.contains("edge_pki_issued_total{ca=\"newsroom\",kind=\"enroll\"} 1"), "{m}");
            assert!(m.contains("edge_pki_issued_total{ca=\"newsroom\",kind=\"server\"} 2"), "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "identity expiry gauge never appeared:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bad_inputs_are_refused_with_a_reason_and_change_nothing() {
    let p = Pki::start();
    let token = p.token("dev2", "--ou ops");
    p.csr("dev2", "");

    // No token, an unknown token: 401.
    let (status, body, _) = p.post("simpleenroll", "dev2.csr", "");
    assert_eq!(status, 401, "{body}");
    assert_eq!(body.lines().count(), 1);
    let (status, _, _) = p.enroll("not-a-real-token", "dev2.csr", "");
    assert_eq!(status, 401);

    // Garbage, truncated, and badly signed CSRs: 400, and the token stays usable.
    std::fs::write(p.d().join("garbage.csr"), b"this is not a CSR at all").unwrap();
    let (status, body, _) = p.enroll(&token, "garbage.csr", "");
    assert_eq!(status, 400, "{body}");
    let (code, _, err) = p.sh(
        "openssl req -in dev2.csr -outform DER -out dev2.der && head -c 60 dev2.der > truncated.der && \
         cp dev2.der flipped.der && printf '\\x01' | dd of=flipped.der bs=1 seek=$(( $(stat -c %s dev2.der) - 5 )) conv=notrunc 2>/dev/null",
    );
    assert_eq!(code, 0, "{err}");
    let (status, body, _) = p.enroll(&token, "truncated.der", "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("truncated"), "{body}");
    let (status, body, _) = p.enroll(&token, "flipped.der", "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("signature"), "{body}");
    // Oversized body: 413.
    std::fs::write(p.d().join("big.csr"), vec![b'A'; 70 * 1024]).unwrap();
    let (status, _, _) = p.enroll(&token, "big.csr", "");
    assert_eq!(status, 413);

    // Basic auth with the token as the password works, once.
    let (status, body, _) = p.post("simpleenroll", "dev2.csr", &format!("-u anyone:{token} {PEM}"));
    assert_eq!(status, 200, "{body}");
    std::fs::write(p.d().join("dev2.crt"), &body).unwrap();
    let (status, body, _) = p.enroll(&token, "dev2.csr", "");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("already used"), "{body}");

    // The same key again, with a fresh token: 400.
    let token2 = p.token("dev3", "");
    let (status, body, _) = p.enroll(&token2, "dev2.csr", "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("already certified"), "{body}");

    // An expired token: 403.
    let short = p.token("dev4", "--ttl 1s");
    p.csr("dev4", "");
    std::thread::sleep(Duration::from_millis(1500)); // the token's lifetime must pass
    let (status, body, _) = p.enroll(&short, "dev4.csr", "");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("expired"), "{body}");

    // Renewal: needs a certificate, a new key; identity from the certificate.
    p.csr("next", "-addext subjectAltName=DNS:evil.example");
    let (status, _, _) = p.post("simplereenroll", "next.csr", "");
    assert_eq!(status, 401);
    let (status, body, _) = p.post("simplereenroll", "dev2.csr", "--cert dev2.crt --key dev2.key");
    assert_eq!(status, 400, "reused key: {body}");
    let (status, body, _) = p.post("simplereenroll", "next.csr", &format!("--cert dev2.crt --key dev2.key {PEM}"));
    assert_eq!(status, 200, "{body}");
    std::fs::write(p.d().join("next.crt"), &body).unwrap();
    let (_, subject, _) = p.sh("openssl x509 -in next.crt -noout -subject -ext subjectAltName");
    assert!(subject.contains("CN = dev2") && subject.contains("OU = ops") && !subject.contains("evil"), "{subject}");

    // Another CA's certificate never gets through the handshake.
    let dir = tempdir();
    let other = common::Pki::new(dir.path(), &["x.localhost"]);
    let (code, _, _) = p.sh(&format!(
        "curl -sS --cacert ca.crt --cert {} --key {} -H 'Content-Type: application/pkcs10' --data-binary @next.csr https://pki.localhost:$PORT/.well-known/est/simplereenroll",
        other.path("alice.crt"),
        other.path("alice.key")
    ));
    assert_ne!(code, 0, "another CA's certificate must be refused");

    // A revoked certificate cannot renew (refused in the handshake, within 2 s).
    let (code, _, err) = p.sh("$EDGE ca revoke --config Edgefile --ca newsroom --cn dev2 --reason key-compromise");
    assert_eq!(code, 0, "{err}");
    p.csr("after", "");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, _, _) = p.post("simplereenroll", "after.csr", "--cert next.crt --key next.key");
        if status == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "a revoked certificate still renews");
        std::thread::sleep(Duration::from_millis(50));
    }
    // And the identity is disabled: a new token for it cannot enroll.
    let (code, _, err) = p.sh("$EDGE ca token --config Edgefile --ca newsroom --cn dev2");
    assert_eq!(code, 1, "a disabled identity gets no token");
    assert!(err.contains("disabled"), "{err}");

    // CLI errors are one line, exit 1.
    let (code, _, err) = p.sh("$EDGE ca revoke --config Edgefile --ca newsroom --serial zz");
    assert_eq!((code, err.lines().count()), (1, 1), "{err}");
    let (code, _, err) = p.sh("$EDGE ca token --config Edgefile --ca nope --cn x");
    assert_eq!(code, 1);
    assert!(err.contains("declares no ca \"nope\""), "{err}");
    let (code, _, _) = p.sh("$EDGE ca revoke --config Edgefile --ca newsroom");
    assert_eq!(code, 2, "usage error");

    let (_, m) = p.edge.admin_request("GET", "/metrics");
    for reason in ["bad_csr", "no_token", "bad_token", "token_used", "token_expired", "key_reused"] {
        assert!(
            m.contains(&format!("edge_pki_rejected_total{{ca=\"newsroom\",reason=\"{reason}\"}}")),
            "{reason}\n{m}"
        );
    }
}

#[test]
fn manual_issue_writes_a_usable_certificate_and_a_private_key() {
    let p = Pki::start();
    let (code, _, err) = p.sh("$EDGE ca issue --config Edgefile --ca newsroom --cn svc --ou ops --san-dns svc.internal --lifetime 1h --out out/nested");
    assert_eq!(code, 0, "{err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p.d().join("out/nested/svc.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(p.d().join("out/nested/ca.crt").exists());
    let (_, body, err) = p.sh("curl -sS --cacert out/nested/ca.crt --cert out/nested/svc.crt --key out/nested/svc.key https://app.localhost:$PORT/");
    assert!(body.starts_with("hello svc (ops) "), "{body}{err}");
    let serial = body.trim().rsplit(' ').next().unwrap().to_string();
    let (_, list, _) = p.sh("$EDGE ca list --config Edgefile");
    assert!(list.lines().any(|l| l.starts_with(&format!("{serial}\tsvc\tops\t")) && l.ends_with("\tvalid")), "{list}");
    // Revoke by serial: refused within 2 s, no reload.
    let (code, _, err) = p.sh(&format!("$EDGE ca revoke --config Edgefile --ca newsroom --serial {serial}"));
    assert_eq!(code, 0, "{err}");
    let start = Instant::now();
    loop {
        let (code, _, _) = p.sh("curl -sS --cacert out/nested/ca.crt --cert out/nested/svc.crt --key out/nested/svc.key https://app.localhost:$PORT/");
        if code != 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(2), "revocation not applied within 2 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, list, _) = p.sh("$EDGE ca list --config Edgefile --ca newsroom");
    assert!(list.lines().any(|l| l.starts_with(&format!("{serial}\t")) && l.ends_with("\trevoked")), "{list}");
}

#[test]
fn est_requests_are_rate_limited_per_client() {
    let p = Pki::start();
    p.csr("r", "");
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(p.post("simpleenroll", "r.csr", "").0);
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
}

#[test]
fn the_agent_renews_by_itself_before_expiry() {
    let dir = tempdir();
    let edgefile = EDGEFILE.replace("cert-lifetime \"2h\"", "cert-lifetime \"6s\"");
    let edge = Edge::start(dir.path(), &edgefile);
    let port = edge.port_of("127.0.0.1:0");
    let d = dir.path();
    let run = |script: &str| {
        Command::new("bash").arg("-c").arg(script).current_dir(d).env("EDGE", edge_bin()).output().unwrap()
    };
    assert!(run("$EDGE ca root --config Edgefile --ca newsroom > ca.crt").status.success());
    assert!(run("$EDGE ca issue --config Edgefile --ca newsroom --cn dev --out .").status.success());
    let first = std::fs::read_to_string(d.join("dev.crt")).unwrap();
    let mut agent = Command::new(edge_bin())
        .args(["agent", "--url", &format!("https://pki.localhost:{port}")])
        .args(["--cert", "dev.crt", "--key", "dev.key", "--ca-file", "ca.crt", "--exec", "echo renewed >> renewals"])
        .current_dir(d)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // renewal-info says: at 2/3 of 6 s. Wait (bounded) for the --exec mark.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.join("renewals").exists() {
        assert!(Instant::now() < deadline, "the agent never renewed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let second = std::fs::read_to_string(d.join("dev.crt")).unwrap();
    assert_ne!(first, second);
    let out = run(&format!("curl -sS --cacert ca.crt --cert dev.crt --key dev.key https://app.localhost:{port}/"));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hello dev "), "{out:?}");
}
