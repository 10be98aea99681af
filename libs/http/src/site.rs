//! A web page's static files (the storefront), served by the face beside
//! the rules: `GET /` is `index.html`, `GET /<name>` each other file of the
//! directory. They are read once, at start, into memory, within bounds, so
//! serving them touches no disk and no path from a request reaches the file
//! system.
//!
//! Every file is answered with a Content-Security-Policy that allows the
//! page's own origin only (scripts, styles, fetches, images), no inline
//! script, no framing, no forms to elsewhere: the page talks to the gateway
//! that served it and to no other host.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tonic::body::Body;

/// The policy every file of the site is served with.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; font-src 'self'; \
     manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Most files a site may have.
const MAX_FILES: usize = 64;
/// Most bytes all its files may hold together.
const MAX_BYTES: usize = 8 * 1024 * 1024;

/// Why a site could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("{dir}: {source}")]
    Read {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no index.html")]
    NoIndex(PathBuf),
    #[error("{dir}: more than {MAX_FILES} files or {MAX_BYTES} bytes")]
    TooLarge { dir: PathBuf },
    #[error("{0}: a file name that is not plain ASCII")]
    Name(PathBuf),
}

#[derive(Debug, Clone)]
struct File {
    body: Bytes,
    content_type: &'static str,
}

/// The files of one directory (not its subdirectories), by request path.
#[derive(Debug, Clone, Default)]
pub struct Site {
    files: BTreeMap<String, File>,
}

/// The media type of a file, by its extension.
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

impl Site {
    /// Reads every regular file directly in `dir`; it must hold an
    /// `index.html`.
    pub fn load(dir: &Path) -> Result<Site, SiteError> {
        let read = |source| SiteError::Read {
            dir: dir.to_path_buf(),
            source,
        };
        let mut files = BTreeMap::new();
        let mut total = 0usize;
        for entry in std::fs::read_dir(dir).map_err(read)? {
            let entry = entry.map_err(read)?;
            if !entry.file_type().map_err(read)?.is_file() {
                continue;
            }
            let name = entry.file_name();
            let name = name
                .to_str()
                .filter(|n| n.is_ascii())
                .ok_or_else(|| SiteError::Name(entry.path()))?
                .to_string();
            // Hidden files (an editor's, a build stamp) are not the site's.
            if name.starts_with('.') {
                continue;
            }
            // Sized before it is read: a huge file is refused, not loaded.
            let size = entry.metadata().map_err(read)?.len();
            total = total.saturating_add(usize::try_from(size).unwrap_or(usize::MAX));
            if files.len() >= MAX_FILES || total > MAX_BYTES {
                return Err(SiteError::TooLarge {
                    dir: dir.to_path_buf(),
                });
            }
            let body = std::fs::read(entry.path()).map_err(read)?;
            let file = File {
                content_type: content_type(&name),
                body: Bytes::from(body),
            };
            if name == "index.html" {
                files.insert("/".to_string(), file.clone());
            }
            files.insert(format!("/{name}"), file);
        }
        if !files.contains_key("/") {
            return Err(SiteError::NoIndex(dir.to_path_buf()));
        }
        Ok(Site { files })
    }

    /// Whether `path` is one of its files.
    pub fn has(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }

    /// How many paths it serves (`/` and `/index.html` counted apart).
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether it serves nothing.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The answer to `GET path`, when it is one of its files.
    pub fn get(&self, path: &str) -> Option<Response<Body>> {
        let file = self.files.get(path)?;
        let mut response = Response::new(Body::new(Full::new(file.body.clone())));
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(file.content_type),
        );
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(
            header::HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        );
        // Small files, rebuilt with every release: revalidated each time.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Some(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_files_of_a_directory_with_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<!doctype html>").unwrap();
        std::fs::write(dir.path().join("app.js"), "void 0").unwrap();
        std::fs::write(dir.path().join(".stamp"), "hidden").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/secret.txt"), "no").unwrap();
        let site = Site::load(dir.path()).unwrap();
        let index = site.get("/").unwrap();
        assert_eq!(
            index.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(
            index.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert!(site.has("/index.html"));
        assert_eq!(
            site.get("/app.js").unwrap().headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert!(site.get("/sub/secret.txt").is_none());
        assert!(site.get("/../Cargo.toml").is_none());
        assert!(site.get("/.stamp").is_none());
        assert_eq!(site.len(), 3);
    }

    #[test]
    fn a_directory_without_an_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.js"), "void 0").unwrap();
        assert!(matches!(Site::load(dir.path()), Err(SiteError::NoIndex(_))));
        assert!(matches!(
            Site::load(&dir.path().join("missing")),
            Err(SiteError::Read { .. })
        ));
    }
}
