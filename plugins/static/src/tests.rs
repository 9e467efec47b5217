//! Tests of `file-server` against a scratch folder.

use super::*;
use edge_plugin_api::{Arg, Prop, Proto, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A scratch folder, removed on drop:
///
/// ```text
/// DIR/outside/secret.txt
/// DIR/root/index.html, hello.txt, a b.txt, big.bin, empty.txt, sub/index.html, bare/
/// DIR/root/link -> ../outside/secret.txt, DIR/root/inner-link -> hello.txt (unix)
/// ```
struct Scratch {
    dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const BIG: usize = 200_000;

fn big_content() -> Vec<u8> {
    (0..BIG).map(|i| (i % 251) as u8).collect()
}

fn scratch() -> Scratch {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "edge-static-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(root.join("bare")).unwrap();
    std::fs::create_dir_all(dir.join("outside")).unwrap();
    std::fs::write(dir.join("outside/secret.txt"), "secret").unwrap();
    std::fs::write(root.join("index.html"), "<h1>root</h1>").unwrap();
    std::fs::write(root.join("hello.txt"), "hello world\n").unwrap();
    std::fs::write(root.join("a b.txt"), "spaced").unwrap();
    std::fs::write(root.join("empty.txt"), "").unwrap();
    std::fs::write(root.join("big.bin"), big_content()).unwrap();
    std::fs::write(root.join("sub/index.html"), "<h1>sub</h1>").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("../outside/secret.txt", root.join("link")).unwrap();
        std::os::unix::fs::symlink("../outside", root.join("dirlink")).unwrap();
        std::os::unix::fs::symlink("hello.txt", root.join("inner-link")).unwrap();
    }
    Scratch { dir }
}

fn span(offset: usize) -> Span {
    Span { offset, len: 1 }
}

fn directive(args: Vec<Value>, props: Vec<(&str, Value)>) -> Directive {
    Directive {
        name: "file-server".into(),
        args: args.into_iter().enumerate().map(|(i, value)| Arg { value, span: span(10 + i) }).collect(),
        props: props
            .into_iter()
            .enumerate()
            .map(|(i, (n, value))| Prop { name: n.into(), value, span: span(20 + i) })
            .collect(),
        span: span(0),
        has_children: false,
    }
}

/// Builds `file-server "root"` (relative to the scratch folder) with `props`.
fn server(s: &Scratch, props: Vec<(&str, Value)>) -> Box<dyn Handler> {
    let cx = BuildContext { base_dir: s.dir.clone() };
    FileServerPlugin.build(&directive(vec![Value::String("root".into())], props), &cx).unwrap()
}

fn rcx(method: &Method, path: &str, query: Option<&str>) -> RequestContext {
    RequestContext {
        site: Arc::from("app.localhost"),
        host: "app.localhost".into(),
        path: path.into(),
        query: query.map(String::from),
        method: method.clone(),
        proto: Proto::Http11,
        tls_version: "TLSv1.3",
        remote: "127.0.0.1:5555".parse().unwrap(),
        local: "127.0.0.1:8443".parse().unwrap(),
        client: None,
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
    }
}

async fn request(h: &dyn Handler, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut req = http::Request::builder().method(method.clone()).uri("/ignored-by-file-server");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let cx = rcx(&method, path, query);
    let resp = h.handle(req.body(empty()).unwrap(), &cx, Next::new(&[])).await;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    Answer { status: parts.status, headers: parts.headers, body }
}

async fn get(h: &dyn Handler, path: &str) -> Answer {
    request(h, Method::GET, path, &[]).await
}

#[test]
fn registers_as_terminal() {
    let mut r = Registry::new();
    register(&mut r);
    assert_eq!(r.get("file-server").map(|p| p.kind()), Some(Kind::Terminal));
}

#[tokio::test]
async fn serves_a_file_with_its_headers() {
    let s = scratch();
    let h = server(&s, vec![]);
    let a = get(h.as_ref(), "/hello.txt").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, b"hello world\n");
    assert_eq!(a.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(a.header("content-length"), "12");
    assert_eq!(a.header("accept-ranges"), "bytes");
    assert!(a.header("etag").starts_with("\"c-"), "{}", a.header("etag"));
    assert!(a.header("last-modified").ends_with(" GMT"));

    let a = get(h.as_ref(), "/a%20b.txt").await;
    assert_eq!((a.status, a.body.as_slice()), (StatusCode::OK, &b"spaced"[..]));
    let a = get(h.as_ref(), "/big.bin").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), "application/octet-stream");
    assert_eq!(a.header("content-length"), BIG.to_string());
    assert!(a.body == big_content());
    let a = get(h.as_ref(), "/empty.txt").await;
    assert_eq!((a.status, a.header("content-length"), a.body.len()), (StatusCode::OK, "0", 0));
}

#[tokio::test]
async fn head_has_length_but_no_body_and_other_methods_are_refused() {
    let s = scratch();
    let h = server(&s, vec![]);
    let a = request(h.as_ref(), Method::HEAD, "/hello.txt", &[("range", "bytes=0-1")]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-length"), "12");
    assert!(a.body.is_empty());
    let a = request(h.as_ref(), Method::POST, "/hello.txt", &[]).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.header("allow"), "GET, HEAD");
}

#[tokio::test]
async fn folders_serve_their_index_and_are_redirected_to_the_slash_form() {
    let s = scratch();
    let h = server(&s, vec![]);
    let a = get(h.as_ref(), "/").await;
    assert_eq!((a.status, a.body.as_slice()), (StatusCode::OK, &b"<h1>root</h1>"[..]));
    assert_eq!(a.header("content-type"), "text/html; charset=utf-8");
    let a = get(h.as_ref(), "/sub/").await;
    assert_eq!((a.status, a.body.as_slice()), (StatusCode::OK, &b"<h1>sub</h1>"[..]));
    let a = get(h.as_ref(), "/sub?x=1&y").await;
    assert_eq!(a.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(a.header("location"), "/sub/?x=1&y");
    let a = get(h.as_ref(), "/sub").await;
    assert_eq!(a.header("location"), "/sub/");
    // No listing, no file with a trailing slash, nothing missing.
    assert_eq!(get(h.as_ref(), "/bare/").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(h.as_ref(), "/hello.txt/").await.status, StatusCode::NOT_FOUND);
    let a = get(h.as_ref(), "/missing.txt").await;
    assert_eq!((a.status, a.body.as_slice()), (StatusCode::NOT_FOUND, &b"not found\n"[..]));
    assert_eq!(get(h.as_ref(), "/hello.txt/more").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn escapes_are_refused() {
    let s = scratch();
    let h = server(&s, vec![]);
    for path in [
        "/../outside/secret.txt",
        "/sub/../../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/%2E%2E/outside/secret.txt",
        "/sub/%2e%2e/%2e%2e/outside/secret.txt",
        "/..%2foutside%2fsecret.txt",
        "/sub%2f..%2f..%2foutside%2fsecret.txt",
        "/..%5coutside%5csecret.txt",
        "/..%5c..%5coutside%5csecret.txt",
        "/hello.txt%00.html",
        "/./hello.txt",
        "/%2e/hello.txt",
    ] {
        let a = get(h.as_ref(), path).await;
        assert!(a.status == StatusCode::NOT_FOUND || a.status == StatusCode::BAD_REQUEST, "{path}: {}", a.status);
        assert!(!a.body.starts_with(b"secret"), "{path}");
    }
    assert_eq!(get(h.as_ref(), "/%zz").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(get(h.as_ref(), "/%ff").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(get(h.as_ref(), "/%2").await.status, StatusCode::BAD_REQUEST);
}

#[cfg(unix)]
#[tokio::test]
async fn symlinks_may_not_lead_out_of_the_root() {
    let s = scratch();
    let h = server(&s, vec![]);
    for path in ["/link", "/dirlink/secret.txt", "/dirlink/"] {
        let a = get(h.as_ref(), path).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
    }
    let a = get(h.as_ref(), "/inner-link").await;
    assert_eq!((a.status, a.body.as_slice()), (StatusCode::OK, &b"hello world\n"[..]));
}

#[cfg(unix)]
#[tokio::test]
async fn unreadable_files_are_forbidden() {
    use std::os::unix::fs::PermissionsExt;
    let s = scratch();
    let h = server(&s, vec![]);
    let file = s.dir.join("root/locked.txt");
    std::fs::write(&file, "locked").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&file).is_ok() {
        return; // Running as root: permissions do not apply.
    }
    let a = get(h.as_ref(), "/locked.txt").await;
    assert_eq!((a.status, a.body.as_slice()), (StatusCode::FORBIDDEN, &b"forbidden\n"[..]));
}

#[tokio::test]
async fn conditional_requests_get_304() {
    let s = scratch();
    let h = server(&s, vec![]);
    let first = get(h.as_ref(), "/hello.txt").await;
    let etag = first.header("etag").to_string();
    let last_modified = first.header("last-modified").to_string();
    let weak = format!("W/{etag}");
    let list = format!("\"nope\", {etag}");
    for inm in [etag.as_str(), weak.as_str(), list.as_str(), "*"] {
        let a = request(h.as_ref(), Method::GET, "/hello.txt", &[("if-none-match", inm)]).await;
        assert_eq!(a.status, StatusCode::NOT_MODIFIED, "{inm}");
        assert!(a.body.is_empty());
        assert_eq!(a.header("etag"), etag);
    }
    let a = request(h.as_ref(), Method::HEAD, "/hello.txt", &[("if-none-match", &etag)]).await;
    assert_eq!(a.status, StatusCode::NOT_MODIFIED);
    let a = request(h.as_ref(), Method::GET, "/hello.txt", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = request(h.as_ref(), Method::GET, "/hello.txt", &[("if-modified-since", &last_modified)]).await;
    assert_eq!(a.status, StatusCode::NOT_MODIFIED);
    let old = "Thu, 01 Jan 1998 00:00:00 GMT";
    let a = request(h.as_ref(), Method::GET, "/hello.txt", &[("if-modified-since", old)]).await;
    assert_eq!(a.status, StatusCode::OK);
    // If-None-Match wins over If-Modified-Since.
    let both = [("if-none-match", "\"other\""), ("if-modified-since", last_modified.as_str())];
    assert_eq!(request(h.as_ref(), Method::GET, "/hello.txt", &both).await.status, StatusCode::OK);
}

async fn ranged(h: &dyn Handler, path: &str, range: &str) -> Answer {
    request(h, Method::GET, path, &[("range", range)]).await
}

#[tokio::test]
async fn single_ranges_get_206() {
    let s = scratch();
    let h = server(&s, vec![]);
    for (range, body, content_range) in [
        ("bytes=0-4", &b"hello"[..], "bytes 0-4/12"),
        ("bytes=6-", b"world\n", "bytes 6-11/12"),
        ("bytes=-6", b"world\n", "bytes 6-11/12"),
        ("bytes=-100", b"hello world\n", "bytes 0-11/12"),
        ("bytes=10-100", b"d\n", "bytes 10-11/12"),
        ("Bytes = 1-1", b"e", "bytes 1-1/12"),
    ] {
        let a = ranged(h.as_ref(), "/hello.txt", range).await;
        assert_eq!(a.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(a.body, body, "{range}");
        assert_eq!(a.header("content-range"), content_range, "{range}");
        assert_eq!(a.header("content-length"), body.len().to_string(), "{range}");
    }
    // Across chunk boundaries of a big file.
    let a = ranged(h.as_ref(), "/big.bin", "bytes=65530-131080").await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert!(a.body == big_content()[65530..=131080]);
}

#[tokio::test]
async fn unsatisfiable_ranges_get_416_and_odd_ones_are_ignored() {
    let s = scratch();
    let h = server(&s, vec![]);
    for range in ["bytes=12-", "bytes=100-200", "bytes=-0"] {
        let a = ranged(h.as_ref(), "/hello.txt", range).await;
        assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(a.header("content-range"), "bytes */12", "{range}");
    }
    let a = ranged(h.as_ref(), "/empty.txt", "bytes=0-").await;
    assert_eq!((a.status, a.header("content-range")), (StatusCode::RANGE_NOT_SATISFIABLE, "bytes */0"));
    for range in ["bytes=0-1,3-4", "bytes=5-2", "items=0-1", "bytes=a-b", "bytes=-", "bytes 0-1", "bytes=1"] {
        let a = ranged(h.as_ref(), "/hello.txt", range).await;
        assert_eq!(a.status, StatusCode::OK, "{range}");
        assert_eq!(a.body, b"hello world\n", "{range}");
    }
}

#[tokio::test]
async fn if_range_applies_the_range_only_when_current() {
    let s = scratch();
    let h = server(&s, vec![]);
    let first = get(h.as_ref(), "/hello.txt").await;
    let etag = first.header("etag").to_string();
    let last_modified = first.header("last-modified").to_string();
    for (if_range, status) in [
        (etag.as_str(), StatusCode::PARTIAL_CONTENT),
        (last_modified.as_str(), StatusCode::PARTIAL_CONTENT),
        ("\"stale\"", StatusCode::OK),
        ("Thu, 01 Jan 1998 00:00:00 GMT", StatusCode::OK),
    ] {
        let a = request(h.as_ref(), Method::GET, "/hello.txt", &[("range", "bytes=0-4"), ("if-range", if_range)]).await;
        assert_eq!(a.status, status, "{if_range}");
    }
    let weak = format!("W/{etag}");
    let a = request(h.as_ref(), Method::GET, "/hello.txt", &[("range", "bytes=0-4"), ("if-range", &weak)]).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn strip_prefix_maps_the_path_onto_the_root() {
    let s = scratch();
    let h = server(&s, vec![("strip-prefix", Value::String("/docs".into()))]);
    let a = get(h.as_ref(), "/docs/hello.txt").await;
    assert_eq!((a.status, a.body.as_slice()), (StatusCode::OK, &b"hello world\n"[..]));
    assert_eq!(get(h.as_ref(), "/docs/sub/").await.status, StatusCode::OK);
    assert_eq!(get(h.as_ref(), "/docs/").await.body, b"<h1>root</h1>");
    let a = get(h.as_ref(), "/docs?q").await;
    assert_eq!((a.status, a.header("location")), (StatusCode::PERMANENT_REDIRECT, "/docs/?q"));
    for path in ["/hello.txt", "/docsx/hello.txt", "/", "/other/docs/hello.txt"] {
        assert_eq!(get(h.as_ref(), path).await.status, StatusCode::NOT_FOUND, "{path}");
    }
    // A deeper, encoded prefix.
    let h = server(&s, vec![("strip-prefix", Value::String("/a/my%20docs/".into()))]);
    assert_eq!(get(h.as_ref(), "/a/my%20docs/hello.txt").await.status, StatusCode::OK);
    assert_eq!(get(h.as_ref(), "/a/hello.txt").await.status, StatusCode::NOT_FOUND);
}

#[test]
fn content_types_come_from_the_extension() {
    for (name, ct) in [
        ("a.HTML", "text/html; charset=utf-8"),
        ("a.mjs", "text/javascript; charset=utf-8"),
        ("a.json", "application/json"),
        ("a.svg", "image/svg+xml"),
        ("a.JPEG", "image/jpeg"),
        ("a.woff2", "font/woff2"),
        ("a.tar.gz", "application/gzip"),
        ("Makefile", "application/octet-stream"),
    ] {
        assert_eq!(content_type(Path::new(name)), ct, "{name}");
    }
}

fn one_error(d: Directive, base_dir: &Path) -> BuildError {
    let errs = FileServerPlugin.build(&d, &BuildContext { base_dir: base_dir.to_path_buf() }).err().unwrap();
    assert_eq!(errs.len(), 1, "{errs:?}");
    let e = errs.into_iter().next().unwrap();
    assert!(e.hint.is_some(), "no hint: {e:?}");
    e
}

#[test]
fn bad_directives_point_at_the_offending_part() {
    let s = scratch();
    let root = || vec![Value::String("root".into())];
    let e = one_error(directive(vec![Value::String("nowhere".into())], vec![]), &s.dir);
    assert_eq!(e.span, span(10));
    assert!(e.message.contains("is not a directory"), "{}", e.message);
    let e = one_error(directive(vec![Value::String("root/hello.txt".into())], vec![]), &s.dir);
    assert_eq!(e.span, span(10));
    assert!(e.message.contains("is not a directory"), "{}", e.message);
    assert_eq!(one_error(directive(vec![Value::String(String::new())], vec![]), &s.dir).span, span(10));
    assert_eq!(one_error(directive(vec![Value::Integer(1)], vec![]), &s.dir).span, span(10));
    assert_eq!(one_error(directive(vec![], vec![]), &s.dir).span, span(0));
    assert_eq!(one_error(directive(root(), vec![("index", Value::Bool(true))]), &s.dir).span, span(20));
    for prefix in [Value::String("docs".into()), Value::Integer(1), Value::String("/a/../b".into())] {
        assert_eq!(one_error(directive(root(), vec![("strip-prefix", prefix)]), &s.dir).span, span(20));
    }
    for prefix in ["/a?b", "/%zz", "/a%2fb"] {
        let e = one_error(directive(root(), vec![("strip-prefix", Value::String(prefix.into()))]), &s.dir);
        assert_eq!(e.span, span(20), "{prefix}");
    }
    // An absolute root ignores the Edgefile's folder.
    let abs = s.dir.join("root").to_string_lossy().into_owned();
    let built = FileServerPlugin
        .build(&directive(vec![Value::String(abs)], vec![]), &BuildContext { base_dir: PathBuf::from("/nonexistent") });
    assert!(built.is_ok());
}

#[test]
fn io_errors_map_to_statuses() {
    for (kind, status) in [
        (io::ErrorKind::NotFound, StatusCode::NOT_FOUND),
        (io::ErrorKind::NotADirectory, StatusCode::NOT_FOUND),
        (io::ErrorKind::PermissionDenied, StatusCode::FORBIDDEN),
        (io::ErrorKind::Other, StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        assert_eq!(io_error_response(&io::Error::from(kind)).status(), status, "{kind:?}");
    }
}
