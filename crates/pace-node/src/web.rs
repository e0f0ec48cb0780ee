//! The pages every node serves, with their assets embedded in the binary
//! (no build step, no framework): the waiting room `/r/{room}`, the admin
//! console `/admin`, and `/assets/*`.
//!
//! The HTTP layer's page routes ([`crate::http::routes::pages`]) read the
//! store and answer with these renderings.
//!
//! A room's page is its template with the room's appearance filled in:
//! the title and message HTML-escaped into the markup, and a JSON block
//! (`<script type="application/json">`, `<` escaped) for the script. The
//! pages load only their own scripts and styles; the Content-Security-Policy
//! says so, so a tenant's text can never run as code.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use pace_protocol::RoomId;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::Body;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "room.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../web/room.css"),
    },
    Asset {
        name: "room.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/room.js"),
    },
    Asset {
        name: "pow-worker.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/pow-worker.js"),
    },
    Asset {
        name: "admin.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../web/admin.css"),
    },
    Asset {
        name: "admin.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/admin.js"),
    },
];

const ROOM_HTML: &str = include_str!("../web/room.html");
const ADMIN_HTML: &str = include_str!("../web/admin.html");
const TARGET_HTML: &str = include_str!("../web/target.html");

/// What a page may load: its own scripts, styles, worker and sockets.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; worker-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The bytes of the waiting-room page with everything it loads (for the
/// size budget: under 50 KB uncompressed).
pub fn room_page_bytes() -> usize {
    ROOM_HTML.len()
        + ["room.css", "room.js", "pow-worker.js"]
            .iter()
            .filter_map(|n| ASSETS.iter().find(|a| a.name == *n))
            .map(|a| a.body.len())
            .sum::<usize>()
}

/// HTML-escapes text for element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON safe inside a `<script>` element: no `<`, `>` or `&` can end it
/// or open a comment (they become `\u003c` …, the same JSON value).
fn script_json(value: &serde_json::Value) -> String {
    value
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

fn etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// A plain page for errors (unknown room, store down), styled like the
/// room page.
fn notice(status: StatusCode, title: &str, text: &str) -> Response<Body> {
    let [bg, fg, accent] = crate::queue::DEFAULT_COLOURS;
    let config = json!({"room": "", "tenant": null, "notice": true,
        "colours": {"background": bg, "text": fg, "accent": accent}});
    let body = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><link rel=stylesheet href=/assets/room.css>\
         <script type=application/json id=pace-room>{c}</script></head>\
         <body data-state=closed><main class=card><h1>{t}</h1><p class=headline>{x}</p></main></body></html>",
        t = escape_html(title),
        x = escape_html(text),
        c = script_json(&config),
    );
    html(status, body)
}

/// The page of a room that does not exist (404).
pub fn missing_room() -> Response<Body> {
    notice(
        StatusCode::NOT_FOUND,
        "No waiting room here",
        "There is no waiting room at this address. Check the link you followed.",
    )
}

/// The waiting-room page of `room` (owned by `tenant`), configured as
/// `found` says.
pub fn room_page(
    room: &RoomId,
    tenant: Option<String>,
    found: &crate::queue::Room,
) -> Response<Body> {
    let look = &found.config.appearance;
    let title = if look.title.is_empty() {
        "You are in line".to_owned()
    } else {
        look.title.clone()
    };
    let [background, text, accent] = look.colours();
    let config = json!({
        "room": room,
        "tenant": tenant,
        "title": title,
        "colours": {"background": background, "text": text, "accent": accent},
    });
    let page = ROOM_HTML
        .replace("{{config}}", &script_json(&config))
        .replace("{{title}}", &escape_html(&title))
        .replace("{{message}}", &escape_html(&look.message));
    html(StatusCode::OK, page)
}

/// The page answered while the store cannot be read (503, retried by the
/// browser in 5 s).
pub fn unavailable() -> Response<Body> {
    let mut resp = notice(
        StatusCode::SERVICE_UNAVAILABLE,
        "Waiting room unavailable",
        "The waiting room cannot be reached right now. This page tries again in a few seconds.",
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    resp.headers_mut()
        .insert(header::REFRESH, HeaderValue::from_static("5"));
    resp
}

/// `GET /admin`: the admin console.
pub fn admin_page() -> Response<Body> {
    html(StatusCode::OK, ADMIN_HTML.to_owned())
}

/// What the demo target page found in its `pace_token`.
#[derive(Debug)]
pub enum TargetToken<'a> {
    /// A valid admission token, with its claims.
    Verified(&'a crate::admission::AdmissionClaims),
    /// A token that did not verify, and why.
    Refused(String),
    /// No token in the URL.
    Missing,
}

/// The demo target page: the verified claims of its admission token, or
/// why it was refused.
pub fn target_page(token: TargetToken<'_>) -> Response<Body> {
    let row = |k: &str, v: &str| {
        format!(
            "<div><dt>{}</dt><dd>{}</dd></div>",
            escape_html(k),
            escape_html(v)
        )
    };
    let (state, title, lead, rows) = match token {
        TargetToken::Verified(c) => (
            "verified",
            "You're in",
            "Your admission token was verified with this cluster's public keys (EdDSA).",
            [
                row("Room", &c.aud),
                row("Device", &c.sub),
                row("Session", &c.jti),
                row("Issued", &unix_time(c.iat)),
                row("Expires", &unix_time(c.exp)),
                row("Issuer", &c.iss),
            ]
            .concat(),
        ),
        TargetToken::Refused(why) => (
            "refused",
            "Token refused",
            "The admission token did not verify; nobody is let in with it.",
            row("Reason", &why),
        ),
        TargetToken::Missing => (
            "none",
            "No admission token",
            "This page is where a waiting room sends admitted visitors. Open /r/demo to queue for it.",
            String::new(),
        ),
    };
    let page = TARGET_HTML
        .replace("{{state}}", state)
        .replace("{{title}}", title)
        .replace("{{lead}}", lead)
        .replace("{{rows}}", &rows);
    html(StatusCode::OK, page)
}

fn unix_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// `GET /assets/{name}`: an embedded file, with an ETag (answered 304 when
/// the browser already has it).
pub fn asset(name: &str, headers: &HeaderMap) -> Option<Response<Body>> {
    // Hashed once per process: the files never change while it runs.
    static ETAGS: LazyLock<Vec<String>> =
        LazyLock::new(|| ASSETS.iter().map(|a| etag(a.body.as_bytes())).collect());
    let i = ASSETS.iter().position(|a| a.name == name)?;
    let (asset, tag) = (&ASSETS[i], &ETAGS[i]);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag.as_str()));
    let mut resp = if fresh {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(Full::new(Bytes::from_static(asset.body.as_bytes())))
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // Revalidated on every load: a rolling upgrade never mixes versions.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, v);
    }
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_page_fits_its_budget() {
        let bytes = room_page_bytes();
        assert!(bytes < 50 * 1024, "the room page weighs {bytes} bytes");
        assert!(bytes > ROOM_HTML.len(), "assets counted");
    }

    #[test]
    fn text_cannot_break_out_of_markup_or_script() {
        assert_eq!(
            escape_html(r#"<script>"a"&'b'</script>"#),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;&lt;/script&gt;"
        );
        let v = json!({"t": "</script><!-- & -->"});
        let s = script_json(&v);
        assert!(
            !s.contains('<') && !s.contains('>') && !s.contains('&'),
            "{s}"
        );
        assert_eq!(serde_json::from_str::<serde_json::Value>(&s).unwrap(), v);
    }

    #[test]
    fn assets_answer_304_to_their_etag() {
        let first = asset("room.js", &HeaderMap::new()).unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[header::ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, tag);
        assert_eq!(
            asset("room.js", &h).unwrap().status(),
            StatusCode::NOT_MODIFIED
        );
        assert!(asset("../Cargo.toml", &HeaderMap::new()).is_none());
        assert!(asset("nope.js", &HeaderMap::new()).is_none());
    }

    #[test]
    fn every_template_placeholder_is_filled() {
        for (name, page, keys) in [
            ("room", ROOM_HTML, &["config", "title", "message"][..]),
            (
                "target",
                TARGET_HTML,
                &["state", "title", "lead", "rows"][..],
            ),
        ] {
            let mut filled = page.to_owned();
            for k in keys {
                assert!(filled.contains(&format!("{{{{{k}}}}}")), "{name}: {k}");
                filled = filled.replace(&format!("{{{{{k}}}}}"), "x");
            }
            assert!(!filled.contains("{{"), "{name} has an unfilled placeholder");
        }
    }
}
