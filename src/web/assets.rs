//! The dashboard's files from `web/`, embedded in the binary at build time (no CDN; the
//! page works offline and the binary is all there is to deploy).

const INDEX: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/style.css");
const FAVICON: &str = include_str!("../../web/favicon.svg");

/// Shown instead of the dashboard when a token is required and none was given.
pub const LOGIN_HTML: &str = include_str!("../../web/login.html");

/// `(body, content type)` of an embedded file.
pub fn get(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "index.html" => Some((INDEX, "text/html; charset=utf-8")),
        "app.js" => Some((APP_JS, "text/javascript; charset=utf-8")),
        "style.css" => Some((STYLE, "text/css; charset=utf-8")),
        "favicon.svg" => Some((FAVICON, "image/svg+xml")),
        _ => None,
    }
}
