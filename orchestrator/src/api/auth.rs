//! Who may look at every saga and who may repair them.
//!
//! The application's own routes (starting a saga, sending one an event,
//! reading one by its id) are as open as the seed API always was: whoever
//! knows a saga's id may read it. Listing every saga, the console, and
//! operator actions are not: they are guarded by bearer tokens from the
//! configuration (`ESO_OPERATOR_TOKEN` may read and act, `ESO_READ_TOKEN`
//! may read). With no token configured, actions are off and the reads
//! answer loopback clients only, so `cargo run` on a laptop shows its
//! console and a deployment shows nothing until it is given a token.
//!
//! A presented token is compared with every configured one by SHA-256
//! digest in constant time, so neither its content nor its length shows in
//! how long the answer takes. Tokens are never logged.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

/// Shortest token accepted: a guessable token guards nothing.
pub const MIN_TOKEN_CHARS: usize = 16;
/// Who a bare token (without `name:`) acts as.
const DEFAULT_OPERATOR: &str = "operator";

/// A setting that holds secrets, as given: its `Debug` shows nothing, and
/// it is parsed after the command line, so that no parse error (clap's
/// would quote the whole value) can print it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(text.to_string()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A configured token list, as `ESO_OPERATOR_TOKEN` or `ESO_READ_TOKEN`
/// give it: one token, or `name:token` entries separated by commas (the
/// name is who the history records as having acted). Its `Debug` shows
/// the names only.
#[derive(Clone, Default)]
pub struct TokenList(Vec<(String, [u8; 32])>);

impl TokenList {
    /// Parses a setting. Errors name the entry by its position, never by
    /// its text: a bare token with a `:` in it would show part of itself.
    pub fn parse(setting: &Secret) -> Result<TokenList, String> {
        let mut tokens = Vec::new();
        for (i, entry) in setting.0.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let n = i + 1;
            let (name, token) = match entry.split_once(':') {
                Some((name, token)) => (name.trim(), token.trim()),
                None => (DEFAULT_OPERATOR, entry),
            };
            if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c)) {
                return Err(format!("entry {n}: a token's name (before `:`) must be 1 to 64 letters, digits or `_.@-`"));
            }
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(format!("entry {n}: the token is shorter than {MIN_TOKEN_CHARS} characters; use a random one, e.g. `openssl rand -hex 32`"));
            }
            if tokens.iter().any(|(known, _)| known == name) {
                return Err(format!("entry {n}: the name `{name}` is given twice"));
            }
            tokens.push((name.to_string(), digest(token)));
        }
        // Empty (`ESO_OPERATOR_TOKEN=`) is the same as unset, as compose and
        // charts write an unset setting.
        Ok(TokenList(tokens))
    }
}

impl fmt::Debug for TokenList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(name, _)| format!("{name}:***"))).finish()
    }
}

impl TokenList {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of the token `presented` is, checking every entry.
    fn find(&self, presented: &[u8; 32]) -> Option<&str> {
        let mut found = None;
        for (name, token) in &self.0 {
            if bool::from(token.ct_eq(presented)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The tokens a server checks requests against.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    operators: Option<TokenList>,
    readers: Option<TokenList>,
}

/// The settings' names, for errors.
const OPERATOR_SETTING: &str = "ESO_OPERATOR_TOKEN";
const READ_SETTING: &str = "ESO_READ_TOKEN";

/// What a presented token may do.
enum Role {
    Operate(String),
    Read,
}

impl Tokens {
    /// The tokens of the two settings; an empty one counts as unset.
    pub fn from_settings(operators: Option<&Secret>, readers: Option<&Secret>) -> Result<Tokens, String> {
        let parse = |setting: Option<&Secret>, name: &str| -> Result<Option<TokenList>, String> {
            match setting.map(TokenList::parse).transpose() {
                Ok(list) => Ok(list.filter(|t| !t.is_empty())),
                Err(why) => Err(format!("{name}: {why}")),
            }
        };
        Ok(Tokens { operators: parse(operators, OPERATOR_SETTING)?, readers: parse(readers, READ_SETTING)? })
    }

    fn configured(&self) -> bool {
        self.operators.is_some() || self.readers.is_some()
    }

    fn role(&self, presented: &str) -> Option<Role> {
        let presented = digest(presented);
        // Both lists are always checked, so the time does not tell which matched.
        let operator = self.operators.as_ref().and_then(|t| t.find(&presented)).map(str::to_string);
        let reader = self.readers.as_ref().and_then(|t| t.find(&presented)).is_some();
        match (operator, reader) {
            (Some(name), _) => Some(Role::Operate(name)),
            (None, true) => Some(Role::Read),
            (None, false) => None,
        }
    }
}

/// The request's bearer token, if it sent one.
fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let value = value.to_str().map_err(|_| ApiError::Unauthorized("the Authorization header must be `Bearer <token>`".into()))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(Some(token.trim())),
        _ => Err(ApiError::Unauthorized("the Authorization header must be `Bearer <token>`".into())),
    }
}

/// Whether the request comes from this machine itself: a loopback peer,
/// naming a loopback host, not relayed. A proxy on the same host (or a
/// mesh sidecar) connects from loopback for remote clients: it says so in
/// `Forwarded`/`X-Forwarded-For`, which disqualifies the request. The
/// `Host` check keeps a web page the user visits from reading the API
/// through a DNS name rebound to 127.0.0.1.
fn from_loopback(parts: &Parts) -> bool {
    // No address (a server not started by `app::start`) counts as remote.
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().is_some_and(|ConnectInfo(peer)| is_loopback(peer.ip()));
    let relayed = ["forwarded", "x-forwarded-for", "x-real-ip"].iter().any(|h| parts.headers.contains_key(*h));
    let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    peer && !relayed && names_loopback(host)
}

fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// `localhost`, `127.0.0.1`, `[::1]`…, with or without a port.
fn names_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(is_loopback)
}

/// Proof that the request may read every saga (the list, the console).
pub struct CanRead;

impl FromRequestParts<AppState> for CanRead {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<CanRead, ApiError> {
        if !state.tokens.configured() {
            return if from_loopback(parts) {
                Ok(CanRead)
            } else {
                Err(ApiError::Forbidden(
                    "with no token configured, the saga list and the console answer loopback clients only; set ESO_READ_TOKEN or ESO_OPERATOR_TOKEN".into(),
                ))
            };
        }
        match bearer(parts)? {
            None => Err(ApiError::Unauthorized("send `Authorization: Bearer <token>` (the read or operator token)".into())),
            Some(token) => state.tokens.role(token).map(|_| CanRead).ok_or_else(|| ApiError::Unauthorized("that token is not one of ours".into())),
        }
    }
}

/// Proof that the request may load the console's page and assets. They
/// hold no data (the page reads it with the token it asks for), so with
/// tokens configured anyone may load them; with none, loopback only, like
/// the reads the page makes.
pub struct CanOpenConsole;

impl FromRequestParts<AppState> for CanOpenConsole {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<CanOpenConsole, ApiError> {
        if state.tokens.configured() || from_loopback(parts) {
            Ok(CanOpenConsole)
        } else {
            Err(ApiError::Forbidden("with no token configured, the console answers loopback clients only; set ESO_READ_TOKEN or ESO_OPERATOR_TOKEN".into()))
        }
    }
}

/// The operator a request acts as: it carried an operator token.
pub struct Operator(pub String);

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Operator, ApiError> {
        if state.tokens.operators.is_none() {
            return Err(ApiError::Forbidden(
                "operator actions are off: set ESO_OPERATOR_TOKEN (e.g. `ESO_OPERATOR_TOKEN=alice:$(openssl rand -hex 32)`) to turn them on".into(),
            ));
        }
        match bearer(parts)? {
            None => Err(ApiError::Unauthorized("send `Authorization: Bearer <token>` with an operator token".into())),
            Some(token) => match state.tokens.role(token) {
                Some(Role::Operate(name)) => Ok(Operator(name)),
                Some(Role::Read) => Err(ApiError::Forbidden("this token may read, not act: actions need an operator token".into())),
                None => Err(ApiError::Unauthorized("that token is not one of ours".into())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> TokenList {
        TokenList::parse(&Secret(text.into())).unwrap_or_default()
    }

    #[test]
    fn token_lists() {
        let named = list("alice:0123456789abcdef0123, bob:fedcba9876543210fedc");
        assert_eq!(named.find(&digest("0123456789abcdef0123")), Some("alice"));
        assert_eq!(named.find(&digest("fedcba9876543210fedc")), Some("bob"));
        assert_eq!(named.find(&digest("0123456789abcdef012")), None);
        assert_eq!(list("0123456789abcdef0123").find(&digest("0123456789abcdef0123")), Some(DEFAULT_OPERATOR));
        assert!(!format!("{named:?}").contains("0123"), "Debug must not show tokens: {named:?}");
        assert_eq!(format!("{:?}", Secret("hunter2hunter2hunter2".into())), "Secret(***)");
        for (text, why) in [
            ("short", "entry 1: the token is shorter than 16"),
            ("a b:0123456789abcdef0123", "entry 1: a token's name"),
            ("x:0123456789abcdef0,x:0123456789abcdef1", "entry 2: the name `x` is given twice"),
            ("sec ret:with-a-colon-inside-0123", "entry 1"),
        ] {
            let err = TokenList::parse(&Secret(text.into())).err().unwrap_or_default();
            assert!(err.contains(why), "{text:?}: {err}");
            assert!(!err.contains("0123") && !err.contains("ret"), "an error must not quote the setting: {err}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for host in ["localhost", "localhost:3000", "127.0.0.1:3000", "127.0.0.2", "[::1]:3000", "[::1]", "LOCALHOST"] {
            assert!(names_loopback(host), "{host}");
        }
        for host in ["", "evil.example:3000", "192.0.2.2:3000", "localhost.evil.example", "[::2]:80", "127.0.0.1.nip.io"] {
            assert!(!names_loopback(host), "{host}");
        }
    }

    #[test]
    fn roles() {
        let setting = |text: &str| Secret(text.into());
        let tokens = Tokens::from_settings(Some(&setting("alice:operator-token-0001")), Some(&setting("reader-token-00001"))).unwrap_or_default();
        assert!(!Tokens::from_settings(Some(&setting("")), Some(&setting(" , "))).unwrap_or_default().configured(), "empty is unset");
        let err = Tokens::from_settings(None, Some(&setting("short"))).err().unwrap_or_default();
        assert!(err.starts_with("ESO_READ_TOKEN: entry 1"), "{err}");
        assert!(matches!(tokens.role("operator-token-0001"), Some(Role::Operate(name)) if name == "alice"));
        assert!(matches!(tokens.role("reader-token-00001"), Some(Role::Read)));
        assert!(tokens.role("reader-token-00002").is_none());
    }
}
