//! The `file-server` handler: serves the files of a folder.
//!
//! ```kdl
//! file-server "./public" strip-prefix="/docs"
//! ```
//!
//! * The argument is the root folder, relative to the Edgefile's folder unless
//!   absolute. It must exist and be a folder when the Edgefile is compiled.
//! * `strip-prefix` (optional) is removed from the start of the request path
//!   before it is looked up: with `strip-prefix="/docs"`, `/docs/a.html` serves
//!   `ROOT/a.html`. A request path that does not start with the prefix (whole
//!   segments: `/docsx` is not under `/docs`) is answered 404.
//!
//! The request path used is the one edge normalised (dot segments resolved,
//! slashes collapsed). Each segment is then percent-decoded; a segment that
//! decodes to something holding `/`, `\` or NUL, or to `.` or `..`, is answered
//! 404, and a malformed `%` escape 400. The file found is resolved through its
//! symbolic links and served only if it still lies inside the root: links
//! within the root work, links leading out of it are answered 404. Hidden files
//! (`.well-known/...`) are served like any other.
//!
//! A folder serves its `index.html`; asked for without its trailing slash, it is
//! answered `308` to the slash form (query kept). There is no folder listing: a
//! folder without `index.html` is 404, and so is a file asked for with a
//! trailing slash.
//!
//! Only `GET` and `HEAD` are answered (others get 405 with `Allow: GET, HEAD`).
//! Responses carry `Content-Type` (from the file's extension; unknown ones are
//! `application/octet-stream`), `Content-Length`, `Accept-Ranges: bytes`, a
//! strong `ETag` made of the file's size and modification time, and
//! `Last-Modified`. `If-None-Match` (a list or `*`), or failing it
//! `If-Modified-Since`, gives 304. A `GET` with a single byte range
//! (`bytes=A-B`, `bytes=A-`, `bytes=-N`) gets 206 with `Content-Range`, or 416
//! with `Content-Range: bytes */SIZE` when it starts past the end; several
//! ranges or a malformed one are ignored (200, whole file). `If-Range` (an ETag
//! or the exact `Last-Modified` date) is honoured. Bodies are streamed in
//! 64 KiB chunks.
//!
//! Errors: a missing file is 404 `not found`, one edge may not read 403
//! `forbidden`, any other failure 500.
//!
//! `file-server` is a terminal handler: it ends its route's chain.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use bytes::BytesMut;
use edge_plugin_api::{
    empty, error_response, Body, BoxError, BoxFuture, BuildContext, BuildError, Directive, Handler, Kind, Next, Plugin,
    Registry, Request, RequestContext, Response, Span,
};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Registers the `file-server` plugin.
pub fn register(registry: &mut Registry) {
    registry.register(Box::new(FileServerPlugin));
}

/// The `file-server` plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileServerPlugin;

/// How the directive is written, the hint for mistakes that have none.
const USAGE: &str = "write it as `file-server \"./public\"`, optionally with strip-prefix=\"/docs\"";

/// How much of a file is read (and sent) at a time.
const CHUNK: usize = 64 * 1024;

/// The longest file name most file systems accept, in bytes.
const MAX_NAME: usize = 255;

/// `e`, with [`USAGE`] as its hint unless it has a better one.
fn with_usage(e: BuildError) -> BuildError {
    if e.hint.is_some() {
        e
    } else {
        e.with_hint(USAGE)
    }
}

/// A built `file-server` handler.
#[derive(Debug)]
struct FileServer {
    /// The root folder, canonical (absolute, symbolic links resolved).
    root: PathBuf,
    /// The decoded segments of `strip-prefix` (empty: no prefix).
    prefix: Vec<String>,
}

impl Plugin for FileServerPlugin {
    fn name(&self) -> &'static str {
        "file-server"
    }

    fn kind(&self) -> Kind {
        Kind::Terminal
    }

    fn build(&self, d: &Directive, cx: &BuildContext) -> Result<Box<dyn Handler>, Vec<BuildError>> {
        d.check(1, 1, &["strip-prefix"]).map_err(|errs| errs.into_iter().map(with_usage).collect::<Vec<_>>())?;
        let mut errs = Vec::new();
        let root = match d.string_arg(0) {
            Err(e) => {
                errs.push(with_usage(e));
                None
            }
            Ok(raw) => build_root(raw, d.args[0].span, cx).map_err(|e| errs.push(e)).ok(),
        };
        let prefix = match d.string_prop("strip-prefix") {
            Err(e) => {
                errs.push(e.with_hint("write it as a path: strip-prefix=\"/docs\""));
                None
            }
            Ok(None) => Some(Vec::new()),
            Ok(Some(raw)) => {
                let span = d.prop("strip-prefix").map_or(d.span, |p| p.span);
                build_prefix(raw, span).map_err(|e| errs.push(e)).ok()
            }
        };
        match (root, prefix) {
            (Some(root), Some(prefix)) if errs.is_empty() => Ok(Box::new(FileServer { root, prefix })),
            _ => Err(errs),
        }
    }
}

/// Resolves and checks the root folder written at `span`.
fn build_root(raw: &str, span: Span, cx: &BuildContext) -> Result<PathBuf, BuildError> {
    if raw.is_empty() {
        return Err(
            BuildError::new(span, "empty file-server root").with_hint("write the folder to serve, e.g. \"./public\"")
        );
    }
    let path = cx.resolve(raw);
    let hint = || {
        format!(
            "create the folder, or fix the path (a relative path is resolved against the Edgefile's folder, {})",
            cx.base_dir.display()
        )
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(BuildError::new(span, format!("file-server root `{}` is not a directory", path.display()))
                .with_hint("name the folder that holds the files, not a file"))
        }
        Err(e) => {
            let why = if e.kind() == io::ErrorKind::NotFound { "it does not exist".to_string() } else { e.to_string() };
            return Err(BuildError::new(
                span,
                format!("file-server root `{}` is not a directory ({why})", path.display()),
            )
            .with_hint(hint()));
        }
    }
    std::fs::canonicalize(&path).map_err(|e| {
        BuildError::new(span, format!("file-server root `{}` cannot be resolved: {e}", path.display()))
            .with_hint(hint())
    })
}

/// Parses and checks `strip-prefix`, written at `span`, into decoded segments.
fn build_prefix(raw: &str, span: Span) -> Result<Vec<String>, BuildError> {
    let bad = |why: &str| {
        BuildError::new(span, format!("bad strip-prefix `{raw}`: {why}"))
            .with_hint("write the path prefix to remove, starting with `/`: strip-prefix=\"/docs\"")
    };
    if !raw.starts_with('/') {
        return Err(bad("it must start with `/`"));
    }
    if raw.contains(['?', '#']) {
        return Err(bad("it is a path, without `?query` or `#fragment`"));
    }
    raw.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            decode_segment(s)
                .map_err(|_| bad("it holds a `.` or `..` segment, an encoded `/` or `\\`, or a malformed `%` escape"))
        })
        .collect()
}

/// Why a request path cannot name a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathError {
    /// A malformed `%` escape, or not UTF-8 once decoded: 400.
    Malformed,
    /// A segment that would leave its folder, or cannot be a file name: 404.
    Refused,
}

/// The value of one hexadecimal digit.
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes one path segment fully and checks it names one file in its
/// folder: not `.` or `..`, no `/`, `\` or NUL.
fn decode_segment(seg: &str) -> Result<String, PathError> {
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex);
            let lo = bytes.get(i + 2).copied().and_then(hex);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(PathError::Malformed),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).map_err(|_| PathError::Malformed)?;
    if s.is_empty() || s == "." || s == ".." || s.contains(['/', '\\', '\0']) || s.len() > MAX_NAME {
        return Err(PathError::Refused);
    }
    // Whatever the platform, the segment must be one plain name (no drive, no root).
    let mut components = Path::new(&s).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(_)), None) => Ok(s),
        _ => Err(PathError::Refused),
    }
}

/// The one-line answer for an I/O error.
fn io_error_response(e: &io::Error) -> Response {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => not_found(),
        io::ErrorKind::PermissionDenied => error_response(StatusCode::FORBIDDEN, "forbidden"),
        _ => error_response(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file"),
    }
}

/// 404 `not found`.
fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not found")
}

/// The `Content-Type` of a file named `path`, from its extension.
fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "text/xml; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "pdf" => "application/pdf",
        "wasm" => "application/wasm",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        _ => "application/octet-stream",
    }
}

/// What a `Range` header asks of a file of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeSpec {
    /// No usable range: send the whole file.
    Whole,
    /// Bytes `start..=end`, both within the file.
    Part {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// A range that starts past the end: 416.
    Unsatisfiable,
}

/// Parses a `Range` value for a file of `size` bytes. Only one byte range is
/// honoured; several, another unit, or anything malformed gives `Whole`.
fn parse_range(value: &str, size: u64) -> RangeSpec {
    let Some((unit, set)) = value.split_once('=') else { return RangeSpec::Whole };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return RangeSpec::Whole;
    }
    let Some((first, last)) = set.split_once('-') else { return RangeSpec::Whole };
    let number = |s: &str| {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse::<u64>().ok()
        }
    };
    if first.trim().is_empty() {
        // bytes=-N: the last N bytes.
        match number(last) {
            None => RangeSpec::Whole,
            Some(0) => RangeSpec::Unsatisfiable,
            Some(_) if size == 0 => RangeSpec::Unsatisfiable,
            Some(n) => RangeSpec::Part { start: size - n.min(size), end: size - 1 },
        }
    } else {
        let Some(start) = number(first) else { return RangeSpec::Whole };
        let end = if last.trim().is_empty() {
            u64::MAX
        } else {
            match number(last) {
                Some(end) if end >= start => end,
                _ => return RangeSpec::Whole,
            }
        };
        if start >= size {
            RangeSpec::Unsatisfiable
        } else {
            RangeSpec::Part { start, end: end.min(size - 1) }
        }
    }
}

/// The entity tags listed in `values` (`If-None-Match` lines), as
/// `(weak, "opaque")`; `None` stands for `*`. Parsing stops at the first
/// malformed element of a line.
fn entity_tags<'h>(values: impl Iterator<Item = &'h HeaderValue>) -> Vec<Option<(bool, &'h str)>> {
    let mut tags = Vec::new();
    for value in values {
        let Ok(mut s) = value.to_str() else { continue };
        loop {
            s = s.trim_start_matches([' ', '\t', ',']);
            if s.is_empty() {
                break;
            }
            if let Some(rest) = s.strip_prefix('*') {
                tags.push(None);
                s = rest;
                continue;
            }
            let (weak, rest) = match s.strip_prefix("W/") {
                Some(rest) => (true, rest),
                None => (false, s),
            };
            let Some(close) = rest.strip_prefix('"').and_then(|r| r.find('"')) else { break };
            tags.push(Some((weak, &rest[..close + 2])));
            s = &rest[close + 2..];
        }
    }
    tags
}

/// Whether `If-None-Match` in `headers` matches `etag` (weak comparison; `*`
/// matches any existing file). `None` when there is no `If-None-Match`.
fn if_none_match(headers: &HeaderMap, etag: Option<&str>) -> Option<bool> {
    if !headers.contains_key(header::IF_NONE_MATCH) {
        return None;
    }
    let tags = entity_tags(headers.get_all(header::IF_NONE_MATCH).iter());
    Some(tags.iter().any(|t| match t {
        None => true,
        Some((_, tag)) => Some(*tag) == etag,
    }))
}

/// Whether `If-Modified-Since` in `headers` says the client's copy, last
/// modified at `mtime`, is current. `false` when absent or unreadable.
fn not_modified_since(headers: &HeaderMap, mtime: Option<SystemTime>) -> bool {
    let (Some(value), Some(mtime)) = (headers.get(header::IF_MODIFIED_SINCE), mtime) else { return false };
    let Some(since) = value.to_str().ok().and_then(|s| httpdate::parse_http_date(s).ok()) else { return false };
    whole_seconds(mtime) <= since
}

/// `t` truncated to whole seconds (HTTP dates have no fraction).
fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

/// Whether `If-Range` in `headers`, if any, lets the `Range` apply: it must be
/// our (strong) ETag or exactly our `Last-Modified`.
fn if_range_allows(headers: &HeaderMap, etag: Option<&str>, last_modified: Option<&str>) -> bool {
    let Some(value) = headers.get(header::IF_RANGE) else { return true };
    let Ok(value) = value.to_str() else { return false };
    let value = value.trim();
    if value.starts_with('"') {
        Some(value) == etag
    } else if value.starts_with("W/") {
        false
    } else {
        Some(value) == last_modified
    }
}

/// A body streaming `len` bytes of `file` from where it stands, `CHUNK` at a
/// time. A file that ends early fails the body rather than send less than the
/// announced `Content-Length`.
fn file_body(file: tokio::fs::File, len: u64) -> Body {
    let stream = futures_util::stream::try_unfold((file.take(len), len), |(mut file, remaining)| async move {
        if remaining == 0 {
            return Ok(None);
        }
        let want = usize::try_from(remaining).map_or(CHUNK, |r| r.min(CHUNK));
        let mut buf = BytesMut::with_capacity(want);
        let n = file.read_buf(&mut buf).await?;
        if n == 0 {
            return Err::<_, BoxError>(Box::new(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file got shorter while being sent",
            )));
        }
        Ok(Some((Frame::data(buf.freeze()), (file, remaining.saturating_sub(n as u64)))))
    });
    StreamBody::new(stream).boxed()
}

/// What a path inside the root turned out to be.
enum Found {
    /// A folder.
    Folder,
    /// A regular file, open.
    File(OpenFile),
    /// Anything else (a FIFO, a socket, a device).
    Other,
}

/// What [`FileServer::open_inside`] does, blocking: `None` when `candidate`
/// resolves to somewhere outside `root`.
fn open_inside_blocking(root: &Path, candidate: &Path) -> io::Result<Option<Found>> {
    let real = std::fs::canonicalize(candidate)?;
    if !real.starts_with(root) {
        return Ok(None);
    }
    let meta = std::fs::metadata(&real)?;
    if meta.is_dir() {
        return Ok(Some(Found::Folder));
    }
    if !meta.is_file() {
        // Never open anything else: a FIFO would block, a device is no file to serve.
        return Ok(Some(Found::Other));
    }
    let file = std::fs::File::open(&real)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Some(Found::Other));
    }
    let mtime = meta.modified().ok().filter(|t| t.duration_since(UNIX_EPOCH).is_ok());
    Ok(Some(Found::File(OpenFile { file: tokio::fs::File::from_std(file), size: meta.len(), mtime })))
}

/// An open regular file and what its metadata said when it was opened.
struct OpenFile {
    /// The file, at its start.
    file: tokio::fs::File,
    /// Its size in bytes.
    size: u64,
    /// Its modification time, if the platform has one (and it is after 1970).
    mtime: Option<SystemTime>,
}

/// A response with `status`, `body` and the given header values.
fn response(
    status: StatusCode,
    body: Body,
    headers: impl IntoIterator<Item = (header::HeaderName, HeaderValue)>,
) -> Response {
    let mut resp = http::Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().extend(headers);
    resp
}

impl FileServer {
    /// Answers one request.
    async fn serve(&self, method: &Method, headers: &HeaderMap, cx: &RequestContext) -> Response {
        if method != Method::GET && method != Method::HEAD {
            let mut resp = error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        let path = cx.path.as_str();
        if !path.starts_with('/') {
            return not_found();
        }
        let segments: Result<Vec<String>, PathError> =
            path.split('/').filter(|s| !s.is_empty()).map(decode_segment).collect();
        let segments = match segments {
            Ok(s) => s,
            Err(PathError::Malformed) => return error_response(StatusCode::BAD_REQUEST, "bad path"),
            Err(PathError::Refused) => return not_found(),
        };
        let Some(rest) = segments.strip_prefix(self.prefix.as_slice()) else { return not_found() };
        let mut candidate = self.root.clone();
        candidate.extend(rest);
        let trailing_slash = path.ends_with('/');
        match self.open_inside(&candidate).await {
            Err(resp) => resp,
            Ok(Found::Folder) if !trailing_slash => self.redirect_to_folder(cx),
            Ok(Found::Folder) => {
                let index = candidate.join("index.html");
                match self.open_inside(&index).await {
                    Ok(Found::File(file)) => send(file, &index, method, headers).await,
                    Ok(_) => not_found(),
                    Err(resp) => resp,
                }
            }
            Ok(Found::File(file)) if !trailing_slash => send(file, &candidate, method, headers).await,
            Ok(_) => not_found(),
        }
    }

    /// Resolves `candidate` through its links and, if it lies inside the root
    /// and is a file, opens it. The file system is asked in one blocking task.
    async fn open_inside(&self, candidate: &Path) -> Result<Found, Response> {
        let root = self.root.clone();
        let candidate = candidate.to_path_buf();
        let found = tokio::task::spawn_blocking(move || open_inside_blocking(&root, &candidate)).await;
        match found {
            Ok(Ok(Some(found))) => Ok(found),
            Ok(Ok(None)) => Err(not_found()),
            Ok(Err(e)) => Err(io_error_response(&e)),
            Err(_) => Err(error_response(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file")),
        }
    }

    /// 308 to the request path with a slash added, query kept.
    fn redirect_to_folder(&self, cx: &RequestContext) -> Response {
        let mut location = format!("{}/", cx.path);
        if let Some(q) = cx.query.as_deref().filter(|q| !q.is_empty()) {
            location.push('?');
            location.push_str(q);
        }
        if location.starts_with("//") {
            return not_found();
        }
        match HeaderValue::from_str(&location) {
            Ok(v) => response(StatusCode::PERMANENT_REDIRECT, empty(), [(header::LOCATION, v)]),
            Err(_) => error_response(StatusCode::BAD_REQUEST, "bad path"),
        }
    }
}

/// Sends `open` (named `name`), minding conditional and range headers.
async fn send(open: OpenFile, name: &Path, method: &Method, headers: &HeaderMap) -> Response {
    let OpenFile { mut file, size, mtime } = open;
    let etag =
        mtime.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| format!("\"{size:x}-{:x}\"", d.as_nanos()));
    let last_modified = mtime.map(httpdate::fmt_http_date);
    let mut validators = Vec::with_capacity(2);
    if let Some(v) = etag.as_deref().and_then(|e| HeaderValue::from_str(e).ok()) {
        validators.push((header::ETAG, v));
    }
    if let Some(v) = last_modified.as_deref().and_then(|d| HeaderValue::from_str(d).ok()) {
        validators.push((header::LAST_MODIFIED, v));
    }

    let fresh = match if_none_match(headers, etag.as_deref()) {
        Some(matched) => matched,
        None => not_modified_since(headers, mtime),
    };
    if fresh {
        return response(StatusCode::NOT_MODIFIED, empty(), validators);
    }

    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if method == Method::GET && if_range_allows(headers, etag.as_deref(), last_modified.as_deref()) => {
            parse_range(r, size)
        }
        _ => RangeSpec::Whole,
    };
    let mut fields = validators;
    fields.push((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
    let (status, start, len) = match range {
        RangeSpec::Whole => (StatusCode::OK, 0, size),
        RangeSpec::Part { start, end } => {
            let content_range = format!("bytes {start}-{end}/{size}");
            if let Ok(v) = HeaderValue::from_str(&content_range) {
                fields.push((header::CONTENT_RANGE, v));
            }
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeSpec::Unsatisfiable => {
            let mut resp = error_response(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                fields.push((header::CONTENT_RANGE, v));
            }
            resp.headers_mut().extend(fields);
            return resp;
        }
    };
    fields.push((header::CONTENT_TYPE, HeaderValue::from_static(content_type(name))));
    fields.push((header::CONTENT_LENGTH, HeaderValue::from(len)));
    let body = if method == Method::HEAD || len == 0 {
        empty()
    } else {
        if start > 0 {
            if let Err(e) = file.seek(io::SeekFrom::Start(start)).await {
                return io_error_response(&e);
            }
        }
        file_body(file, len)
    };
    response(status, body, fields)
}

impl Handler for FileServer {
    fn handle<'a>(&'a self, req: Request, cx: &'a RequestContext, _next: Next<'a>) -> BoxFuture<'a, Response> {
        Box::pin(async move {
            let (parts, _body) = req.into_parts();
            self.serve(&parts.method, &parts.headers, cx).await
        })
    }
}

#[cfg(test)]
mod tests;
