//! The web dashboard, served by the query API: static files compiled into the binary
//! (`query-api/dashboard/`: plain HTML, CSS and JavaScript, no build step, nothing loaded
//! from elsewhere). The page signs in with an API key and talks to the query and admin
//! API with `Authorization: Bearer <key>`, like any other client.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /` | redirect to `/dashboard/` |
//! | `GET /dashboard` | redirect to `/dashboard/` |
//! | `GET /dashboard/` | the page (`index.html`) |
//! | `GET /dashboard/{file}` | `index.html`, `app.js`, `app.css` |
//!
//! Every file is answered with its content type, `Cache-Control: no-cache` and an `ETag`
//! (the names are not fingerprinted, so the browser revalidates and gets a 304 while the
//! binary is the same), and a Content-Security-Policy that allows only this origin: a
//! link like `/dashboard/#key=...` keeps the key in the fragment, which is never sent.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use fleet_service::ApiError;
use tower_http::trace::TraceLayer;

/// One compiled-in file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: &'static str,
}

/// FNV-1a (64 bit) of `bytes`, at compile time: the files' ETags.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// `"` + 16 hex digits + `"`, at compile time.
const fn etag_bytes(h: u64) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((h >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {{
        const BODY: &[u8] = include_bytes!(concat!("../../dashboard/", $name));
        const ETAG: [u8; 18] = etag_bytes(fnv1a(BODY));
        Asset {
            name: $name,
            content_type: $content_type,
            body: BODY,
            etag: match std::str::from_utf8(&ETAG) {
                Ok(s) => s,
                Err(_) => panic!("an ETag is ASCII"),
            },
        }
    }};
}

const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
];

/// Only this origin: scripts, styles, API calls. Inline SVG made by the script is DOM,
/// not a load.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard routes.
pub fn router() -> Router {
    Router::new()
        .route("/", get(to_dashboard))
        .route("/dashboard", get(to_dashboard))
        .route("/dashboard/", get(index))
        .route("/dashboard/{file}", get(file))
        .layer(TraceLayer::new_for_http().make_span_with(fleet_service::endpoints::http_span))
}

async fn to_dashboard() -> Redirect {
    Redirect::temporary("/dashboard/")
}

async fn index(headers: HeaderMap) -> Response {
    file(Path("index.html".to_owned()), headers).await
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::not_found(format!("no dashboard file {name}"))
            .with_field("file")
            .into_response();
    };
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == asset.etag || t.trim() == "*")
        });
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, HeaderValue::from_static(asset.etag)),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
    ];
    if not_modified {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(path: &str, if_none_match: Option<&str>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = Request::get(path);
        if let Some(t) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, t);
        }
        let resp = router()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, headers, body.to_vec())
    }

    #[tokio::test]
    async fn serves_files_with_types_and_caching() {
        for (path, ty, needle) in [
            ("/dashboard/", "text/html", "app.js"),
            ("/dashboard/index.html", "text/html", "data-testid"),
            ("/dashboard/app.js", "text/javascript", "Authorization"),
            ("/dashboard/app.css", "text/css", "{"),
        ] {
            let (status, headers, body) = get(path, None).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            let ct = headers[header::CONTENT_TYPE].to_str().expect("ascii");
            assert!(ct.starts_with(ty), "{path}: {ct}");
            assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{path}");
            assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
            let text = String::from_utf8(body).expect("utf-8");
            assert!(text.contains(needle), "{path} lacks {needle:?}");
            let etag = headers[header::ETAG].to_str().expect("ascii").to_owned();
            assert_eq!(etag.len(), 18, "{etag}");
            let (status, headers, body) = get(path, Some(&etag)).await;
            assert_eq!(status, StatusCode::NOT_MODIFIED, "{path}");
            assert_eq!(headers[header::ETAG], etag.as_str());
            assert!(body.is_empty());
        }
    }

    #[tokio::test]
    async fn redirects_and_unknown_files() {
        for path in ["/", "/dashboard"] {
            let (status, headers, _) = get(path, None).await;
            assert_eq!(status, StatusCode::TEMPORARY_REDIRECT, "{path}");
            assert_eq!(headers[header::LOCATION], "/dashboard/");
        }
        let (status, _, body) = get("/dashboard/secret.txt", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["field"], "file", "{v}");
    }

    #[test]
    fn nothing_external_is_referenced() {
        for a in ASSETS {
            let text = std::str::from_utf8(a.body).expect("utf-8");
            for bad in ["http://", "https://", "//cdn", "@import"] {
                // The SVG namespace is an identifier, not a load.
                let found = text
                    .match_indices(bad)
                    .any(|(i, _)| !text[i..].starts_with("http://www.w3.org/2000/svg"));
                assert!(!found, "{} references {bad}", a.name);
            }
        }
    }
}
