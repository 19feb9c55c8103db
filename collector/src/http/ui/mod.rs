//! The operator console at `/ui/`: sign-in with an operator or admin
//! token into a session cookie, then a page whose script uses the same
//! JSON API as every other client (the API accepts the session cookie in
//! place of `Authorization: Bearer`, see [`AppState::authenticate`]), so
//! the tenant rules are the API's, unchanged. Everything it loads comes
//! from the collector itself (no CDN, fonts or scripts from elsewhere).
//!
//! | method, path | what |
//! |---|---|
//! | `GET /ui/` | the console (or a redirect to the sign-in page) |
//! | `GET /ui/login`, `POST /ui/login` | sign-in form; a token field |
//! | `POST /ui/logout` | sign-out (the form carries the CSRF token) |
//! | `GET /ui/console.js`, `/ui/manage.js`, `/ui/console.css` | the console's scripts and style |
//!
//! Cross-site requests: the cookie is `SameSite=Strict`; a cookie-
//! authenticated request that changes state must carry the session's CSRF
//! token (`X-CSRF-Token`), and one with an `Origin` of another host is
//! refused ([`guard`]).

pub mod session;

use std::sync::Arc;

use axum::extract::{Form, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::auth::Role;
use session::{cookie_value, csrf_matches, Opened, CSRF_HEADER};

const SCRIPT: &str = include_str!("console.js");
const MANAGE_SCRIPT: &str = include_str!("manage.js");
const STYLE: &str = include_str!("console.css");
/// Longest token a sign-in form may carry.
const MAX_TOKEN_BYTES: usize = 4096;

/// The console's routes (empty when it is turned off).
pub fn routes(enabled: bool) -> Router<Arc<AppState>> {
    if !enabled {
        return Router::new();
    }
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(console))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/console.js", get(script))
        .route("/ui/manage.js", get(manage_script))
        .route("/ui/console.css", get(style))
}

/// The session of the request's cookie, if it is open.
pub fn session_of(s: &AppState, headers: &HeaderMap) -> Option<(String, Opened)> {
    let id = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(cookie_value)?;
    s.sessions.get(id).map(|o| (id.to_string(), o))
}

/// Cross-site protection of cookie-authenticated requests (a request with
/// `Authorization` is the API's, untouched): another host's `Origin` is
/// refused, and a request that changes state needs the session's CSRF
/// token in `X-CSRF-Token` (the sign-in and sign-out forms check theirs).
pub async fn guard(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let h = req.headers();
    if h.contains_key(header::AUTHORIZATION) {
        return next.run(req).await;
    }
    let Some((_, opened)) = session_of(&s, h) else {
        return next.run(req).await;
    };
    if let (Some(origin), Some(host)) = (h.get(header::ORIGIN), h.get(header::HOST)) {
        let origin = origin.to_str().unwrap_or("");
        let origin_host = origin
            .split_once("://")
            .map_or(origin, |(_, rest)| rest)
            .trim_end_matches('/');
        if origin_host != host.to_str().unwrap_or("") {
            return ApiError::forbidden(format!(
                "a console session may not be used from another site (Origin {origin:?})"
            ))
            .with_field("Origin")
            .into_response();
        }
    }
    let path = req.uri().path();
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && path != "/ui/login" && path != "/ui/logout" {
        let given = h
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !csrf_matches(&opened, given) {
            return ApiError::forbidden(
                "a console request that changes state needs the session's X-CSRF-Token header",
            )
            .with_field("X-CSRF-Token")
            .into_response();
        }
    }
    next.run(req).await
}

/// Headers of every console page: nothing from elsewhere, no framing.
fn page(status: StatusCode, body: String) -> Response {
    let mut r = (status, Html(body)).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `text` escaped for HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

fn shell(title: &str, head: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><link rel=\"stylesheet\" href=\"/ui/console.css\">{head}</head>\
         <body>{body}</body></html>\n",
        title = escape(title)
    )
}

fn login_form(status: StatusCode, message: Option<&str>) -> Response {
    let error = message.map_or(String::new(), |m| {
        format!(
            "<p class=\"error\" role=\"alert\" id=\"login-error\">{}</p>",
            escape(m)
        )
    });
    page(
        status,
        shell(
            "Sign in - Sesam collector",
            "",
            &format!(
                "<main class=\"login\"><h1>Sesam collector</h1>{error}\
                 <form method=\"post\" action=\"/ui/login\">\
                 <label for=\"token\">Operator or admin token</label>\
                 <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
                 <button type=\"submit\" id=\"sign-in\">Sign in</button></form></main>"
            ),
        ),
    )
}

async fn login_page(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if session_of(&s, &headers).is_some() {
        return Redirect::to("/ui/").into_response();
    }
    login_form(StatusCode::OK, None)
}

#[derive(Deserialize)]
struct LoginForm {
    /// Missing: answered like an empty one (400 on the form).
    #[serde(default)]
    token: String,
}

async fn login(State(s): State<Arc<AppState>>, Form(f): Form<LoginForm>) -> Response {
    let token = f.token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return login_form(
            StatusCode::BAD_REQUEST,
            Some(&format!("the token must be 1 to {MAX_TOKEN_BYTES} bytes")),
        );
    }
    let Some(principal) = s.tokens.authenticate(token) else {
        return login_form(StatusCode::UNAUTHORIZED, Some("unknown token"));
    };
    if !matches!(principal.role, Role::Operator | Role::Admin) {
        return login_form(
            StatusCode::FORBIDDEN,
            Some("only operator and admin tokens may sign in to the console"),
        );
    }
    let Some((id, _)) = s.sessions.open(token) else {
        return login_form(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("too many console sessions are open (--ui-max-sessions); try again later"),
        );
    };
    let mut r = Redirect::to("/ui/").into_response();
    if let Ok(v) = HeaderValue::from_str(&s.sessions.cookie(&id)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<LogoutForm>,
) -> Response {
    if let Some((id, opened)) = session_of(&s, &headers) {
        if !csrf_matches(&opened, &f.csrf) {
            return ApiError::forbidden("sign-out needs the session's CSRF token")
                .with_field("csrf")
                .into_response();
        }
        s.sessions.close(&id);
    }
    let mut r = Redirect::to("/ui/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&s.sessions.clear_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn console(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some((_, opened)) = session_of(&s, &headers) else {
        return Redirect::to("/ui/login").into_response();
    };
    let Some(principal) = s.tokens.authenticate(&opened.token) else {
        return Redirect::to("/ui/login").into_response();
    };
    let who = match principal.subscription() {
        Some(sub) => format!("operator of {sub}"),
        None => "admin".to_string(),
    };
    let csrf = escape(&opened.csrf);
    let sub = escape(principal.subscription().unwrap_or(""));
    let head = format!(
        "<meta name=\"csrf-token\" content=\"{csrf}\"><meta name=\"subscription\" content=\"{sub}\">\
         <script src=\"/ui/console.js\" defer></script><script src=\"/ui/manage.js\" defer></script>"
    );
    let body = format!(
        "<header><span class=\"brand\">Sesam collector</span>\
         <nav aria-label=\"Sections\"><a href=\"#search\" id=\"nav-search\">Search</a>\
         <a href=\"#pipes\" id=\"nav-pipes\">Pipes</a>\
         <a href=\"#alerts\" id=\"nav-alerts\">Alerts</a>\
         <a href=\"#rules\" id=\"nav-rules\">Rules</a>\
         <a href=\"#notifications\" id=\"nav-notifications\">Notifications</a>\
         <a href=\"#sources\" id=\"nav-sources\">Sources</a></nav>\
         <span class=\"who\" id=\"who\">{who}</span>\
         <form method=\"post\" action=\"/ui/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\" id=\"sign-out\">Sign out</button></form></header>\
         <main id=\"view\" aria-live=\"polite\"></main>",
        who = escape(&who)
    );
    page(StatusCode::OK, shell("Sesam collector", &head, &body))
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    let mut r = text.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn manage_script() -> Response {
    asset("text/javascript; charset=utf-8", MANAGE_SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_text_and_attributes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
