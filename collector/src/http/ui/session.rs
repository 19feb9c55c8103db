//! Console sessions: a random id in an `HttpOnly`, `SameSite=Strict`
//! cookie, the token it was opened with kept here (never in the browser
//! after sign-in), a CSRF token for every request that changes state, and
//! an expiry. Bounded: at most [`UiConfig::max_sessions`] open at once;
//! expired ones are dropped as new ones open.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "sesam_session";
/// The header a console request that changes state carries its session's
/// CSRF token in (forms: the `csrf` field).
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The console's settings.
#[derive(Debug, Clone)]
pub struct UiConfig {
    /// Serve `/ui/` at all.
    pub enabled: bool,
    /// A session ends this long after sign-in.
    pub session_ttl: Duration,
    /// Sessions open at once; past it a sign-in is refused (503).
    pub max_sessions: usize,
    /// Mark the cookie `Secure` (the collector is reached through TLS).
    pub secure_cookie: bool,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            enabled: true,
            session_ttl: Duration::from_secs(12 * 3600),
            max_sessions: 10_000,
            secure_cookie: false,
        }
    }
}

#[derive(Debug)]
struct Session {
    token: String,
    csrf: String,
    expires: Instant,
}

/// What a valid session cookie stands for.
#[derive(Debug, Clone)]
pub struct Opened {
    pub token: String,
    pub csrf: String,
}

#[derive(Debug)]
pub struct Sessions {
    config: UiConfig,
    map: Mutex<HashMap<String, Session>>,
}

/// 244 random bits as hex (two v4 UUIDs, from the OS's generator).
fn random_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Sessions {
    pub fn new(config: UiConfig) -> Sessions {
        Sessions {
            config,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &UiConfig {
        &self.config
    }

    /// Opens a session for `token` (already checked); `None` when
    /// [`UiConfig::max_sessions`] are open.
    pub fn open(&self, token: &str) -> Option<(String, Opened)> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.config.max_sessions {
            map.retain(|_, s| s.expires > now);
            if map.len() >= self.config.max_sessions {
                return None;
            }
        }
        let id = random_id();
        let s = Session {
            token: token.to_string(),
            csrf: random_id(),
            expires: now + self.config.session_ttl,
        };
        let opened = Opened {
            token: s.token.clone(),
            csrf: s.csrf.clone(),
        };
        map.insert(id.clone(), s);
        Some((id, opened))
    }

    /// The session of cookie value `id`, if open and not expired.
    pub fn get(&self, id: &str) -> Option<Opened> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some(s) if s.expires > now => Some(Opened {
                token: s.token.clone(),
                csrf: s.csrf.clone(),
            }),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends the session `id`.
    pub fn close(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Sessions open now (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `Set-Cookie` value of session `id`.
    pub fn cookie(&self, id: &str) -> String {
        format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.config.session_ttl.as_secs(),
            if self.config.secure_cookie {
                "; Secure"
            } else {
                ""
            }
        )
    }

    /// The `Set-Cookie` value that removes the cookie.
    pub fn clear_cookie(&self) -> String {
        format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.config.secure_cookie {
                "; Secure"
            } else {
                ""
            }
        )
    }
}

/// Whether `given` is the session's CSRF token (constant time).
pub fn csrf_matches(opened: &Opened, given: &str) -> bool {
    opened.csrf.len() == given.len() && bool::from(opened.csrf.as_bytes().ct_eq(given.as_bytes()))
}

/// The session cookie's value in a `Cookie` header, if any.
pub fn cookie_value(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_are_bounded_and_close() {
        let s = Sessions::new(UiConfig {
            session_ttl: Duration::from_millis(50),
            max_sessions: 2,
            ..UiConfig::default()
        });
        let (a, oa) = s.open("tok-a").expect("room");
        let (b, _) = s.open("tok-b").expect("room");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(s.open("tok-c").is_none(), "full");
        assert_eq!(s.get(&a).expect("open").token, "tok-a");
        assert!(csrf_matches(&oa, &oa.csrf));
        assert!(!csrf_matches(&oa, "x"));
        s.close(&a);
        assert!(s.get(&a).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.get(&b).is_none(), "expired");
        assert!(s.open("tok-c").is_some(), "expired ones make room");
    }

    #[test]
    fn the_cookie_is_found_among_others_and_bounded() {
        assert_eq!(cookie_value("a=1; sesam_session=abc; b=2"), Some("abc"));
        assert_eq!(cookie_value("sesam_session="), None);
        assert_eq!(
            cookie_value(&format!("sesam_session={}", "x".repeat(129))),
            None
        );
        let s = Sessions::new(UiConfig {
            secure_cookie: true,
            ..UiConfig::default()
        });
        let c = s.cookie("abc");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("; Secure"));
    }
}
