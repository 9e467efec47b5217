//! `edge validate`, `edge fmt` and `edge run` on bad Edgefiles: every problem
//! named as FILE:LINE:COLUMN in one pass, exit 1, nothing started.

mod common;
use common::*;

fn validate(dir: &std::path::Path, text: &str) -> (i32, String, String) {
    let p = write(dir, "Edgefile", text);
    edge_cmd(&["validate", "--config", p.to_str().unwrap()])
}

#[test]
fn a_valid_file_says_valid() {
    let dir = tempdir();
    Pki::new(dir.path(), &["a.localhost"]);
    let (code, out, err) = validate(
        dir.path(),
        r#"site "a.localhost" { listen "127.0.0.1:0"; tls cert="server.crt" key="server.key"; respond "hi"; }"#,
    );
    assert_eq!((code, out.as_str()), (0, "valid\n"), "{err}");
}

#[test]
fn every_problem_in_one_pass_with_file_line_column() {
    let dir = tempdir();
    let pki = Pki::new(dir.path(), &["a.localhost"]);
    write(dir.path(), "garbage.crl", "-----BEGIN X509 CRL-----\nbm90IGEgY3Js\n-----END X509 CRL-----\n");
    write(dir.path(), "other.key", pki.ca.server(&["x"]).1);
    let text = r#"site "a.localhost" {
    listen "127.0.0.1:0"
    tls cert="server.crt" key="other.key"
    client-auth require {
        trust file="missing-ca.pem"
        crl file="garbage.crl"
    }
    route "/x/*" {
        respond "one"
        respond "two"
    }
    route "/y" {
        reverse-proxy "ftp://127.0.0.1:21"
    }
    route "/z" {
        respond "{client.nmae}"
    }
}
site "b.localhost" "A.localhost" {
    listen "127.0.0.1:0"
    tls cert="nope.crt" key="server.key"
    respond "b" status=999
    timeout "5s"
}
"#;
    let (code, out, err) = validate(dir.path(), text);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty());
    let file = dir.path().join("Edgefile").display().to_string();
    let expect = [
        "19:20: error: two sites claim `a.localhost` on 127.0.0.1:0",
        "23:5: error: unknown node `timeout` in a site",
        "3:27: error: the key",
        "does not match the certificate",
        "5:15: error: cannot read",
        "missing-ca.pem: no such file or directory",
        "6:13: error:",
        "is not a valid CRL",
        "10:9: error: this route already has a terminal handler (line 9, column 9)",
        "13:23: error:",
        "16:17: error: unknown placeholder `{client.nmae}`",
        "21:9: error: cannot read",
        "22:17: error: `status` must be an HTTP status from 100 to 599",
    ];
    for e in expect {
        assert!(err.contains(e), "missing {e:?} in:\n{err}");
    }
    for line in err.lines() {
        assert!(line.starts_with(&format!("{file}:")), "not FILE:LINE:COL: {line}");
    }
}

#[test]
fn syntax_errors_and_bad_values() {
    let dir = tempdir();
    let (code, _, err) = validate(dir.path(), "site \"a.localhost\" {\n    listen \"127.0.0.1:0\n}\n");
    assert_eq!(code, 1);
    assert!(err.contains("Edgefile:") && err.contains("syntax"), "{err}");

    let (code, _, err) = validate(
        dir.path(),
        r#"site "a b" "ok.localhost" {
    listen "localhost:80"
    tls internal ca="nope"
    idle-timeout "soon"
    max-body "lots"
    client-auth maybe
}
"#,
    );
    assert_eq!(code, 1);
    for e in [
        "1:6: error: bad site name \"a b\"",
        "2:12: error: bad address \"localhost:80\"",
        "3:18: error: no `ca` named \"nope\"",
        "4:18: error: bad duration \"soon\"",
        "5:14: error: bad size \"lots\"",
        "6:17: error: unknown client-auth mode \"maybe\"",
    ] {
        assert!(err.contains(e), "missing {e:?} in:\n{err}");
    }
}

#[test]
fn missing_edgefile_is_a_one_line_error() {
    let (code, _, err) = edge_cmd(&["validate", "--config", "/nonexistent/Edgefile"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/nonexistent/Edgefile:1:1: error: cannot read the Edgefile: no such file or directory"),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, _) = edge_cmd(&["frobnicate"]);
    assert_eq!(code, 2);
    let (code, _, _) = edge_cmd(&["validate", "--bogus"]);
    assert_eq!(code, 2);
}

#[test]
fn run_refuses_a_broken_file_and_binds_nothing() {
    let dir = tempdir();
    let (code, err) = Edge::start_failing(dir.path(), r#"site "a.localhost" { listen "127.0.0.1:0"; }"#);
    assert_eq!(code, 1);
    assert!(err.contains("Edgefile:1:6: error: site `a.localhost` has no `tls`"), "{err}");
    assert!(!err.contains("listening"), "{err}");
}

#[test]
fn fmt_rewrites_in_place_and_check_reports() {
    let dir = tempdir();
    let messy =
        "// the newsroom\nsite   \"a.localhost\"   {\nlisten \"127.0.0.1:0\"   // local\n      respond \"hi\"\n}\n";
    let p = write(dir.path(), "Edgefile", messy);
    let path = p.to_str().unwrap();
    let (code, _, err) = edge_cmd(&["fmt", "--check", "--config", path]);
    assert_eq!(code, 1);
    assert!(err.contains("not in canonical form"), "{err}");
    assert_eq!(std::fs::read_to_string(&p).unwrap(), messy, "--check must not write");

    let (code, _, err) = edge_cmd(&["fmt", "--config", path]);
    assert_eq!(code, 0, "{err}");
    let formatted = std::fs::read_to_string(&p).unwrap();
    assert!(formatted.contains("// the newsroom"), "{formatted}");
    assert!(formatted.contains("// local"), "{formatted}");
    assert!(formatted.contains("\n    listen \"127.0.0.1:0\""), "{formatted}");
    let (code, _, err) = edge_cmd(&["fmt", "--check", "--config", path]);
    assert_eq!(code, 0, "canonical after fmt: {err}\n{formatted}");
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // A file that does not parse is reported and left alone.
    let broken = "site \"a\" {\n";
    write(dir.path(), "Edgefile", broken);
    let (code, _, err) = edge_cmd(&["fmt", "--config", path]);
    assert_eq!(code, 1);
    assert!(err.contains("Edgefile:"), "{err}");
    assert_eq!(std::fs::read_to_string(&p).unwrap(), broken);
}

#[test]
fn the_example_edgefile_is_valid_and_canonical_and_validate_creates_nothing() {
    let dir = tempdir();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Edgefile.example");
    let p = write(dir.path(), "Edgefile", std::fs::read_to_string(&example).unwrap());
    std::fs::create_dir_all(dir.path().join("public")).unwrap();
    let (code, out, err) = edge_cmd(&["validate", "--config", p.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (0, "valid\n"), "{err}");
    let (code, _, err) = edge_cmd(&["fmt", "--check", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // The example's built-in CA is created by `edge run`, never by `validate`.
    assert!(!dir.path().join("edge-data").exists());
}

#[test]
fn a_crl_not_signed_by_its_issuer_is_refused() {
    let dir = tempdir();
    let pki = Pki::new(dir.path(), &["a.localhost"]);
    // Same issuer name as the trusted CA, another key: a forged CRL.
    let forger = TestCa::new("Test Root CA");
    write(dir.path(), "forged.crl", forger.crl(&[REVOKED_SERIAL]));
    let _ = pki;
    let (code, _, err) = validate(
        dir.path(),
        r#"site "a.localhost" {
    listen "127.0.0.1:0"
    tls cert="server.crt" key="server.key"
    client-auth require {
        trust file="ca.pem"
        crl file="forged.crl"
    }
    respond "x"
}"#,
    );
    assert_eq!(code, 1);
    assert!(err.contains(":6:13: error:") && err.contains("signature does not verify"), "{err}");
}
