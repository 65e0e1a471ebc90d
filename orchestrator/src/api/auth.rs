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

/// A configured token list, as `ESO_OPERATOR_TOKEN` or `ESO_READ_TOKEN`
/// give it: one token, or `name:token` entries separated by commas (the
/// name is who the history records as having acted). Its `Debug` shows
/// the names only.
#[derive(Clone, Default)]
pub struct TokenList(Vec<(String, [u8; 32])>);

impl FromStr for TokenList {
    type Err = String;

    fn from_str(text: &str) -> Result<TokenList, String> {
        let mut tokens = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, token) = match entry.split_once(':') {
                Some((name, token)) => (name.trim(), token.trim()),
                None => (DEFAULT_OPERATOR, entry),
            };
            if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c)) {
                return Err(format!("a token's name must be 1 to 64 letters, digits or `_.@-`, not {:?}", super::truncate(name)));
            }
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(format!("the token of `{name}` is shorter than {MIN_TOKEN_CHARS} characters; use a random one, e.g. `openssl rand -hex 32`"));
            }
            if tokens.iter().any(|(n, _)| n == name) {
                return Err(format!("the name `{name}` is given twice"));
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

/// What a presented token may do.
enum Role {
    Operate(String),
    Read,
}

impl Tokens {
    /// An empty list counts as none.
    pub fn new(operators: Option<TokenList>, readers: Option<TokenList>) -> Tokens {
        Tokens { operators: operators.filter(|t| !t.is_empty()), readers: readers.filter(|t| !t.is_empty()) }
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

fn from_loopback(parts: &Parts) -> bool {
    // No address (a server not started by `app::start`) counts as remote.
    parts.extensions.get::<ConnectInfo<SocketAddr>>().is_some_and(|ConnectInfo(peer)| match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    })
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

    #[test]
    fn token_lists() {
        let list: TokenList = "alice:0123456789abcdef0123, bob:fedcba9876543210fedc".parse().unwrap_or_default();
        assert_eq!(list.find(&digest("0123456789abcdef0123")), Some("alice"));
        assert_eq!(list.find(&digest("fedcba9876543210fedc")), Some("bob"));
        assert_eq!(list.find(&digest("0123456789abcdef012")), None);
        let bare: TokenList = "0123456789abcdef0123".parse().unwrap_or_default();
        assert_eq!(bare.find(&digest("0123456789abcdef0123")), Some(DEFAULT_OPERATOR));
        assert!(!format!("{list:?}").contains("0123"), "Debug must not show tokens: {list:?}");
        for (text, why) in [("short", "shorter than 16"), ("a b:0123456789abcdef0123", "name"), ("x:0123456789abcdef0,x:0123456789abcdef1", "twice")] {
            let err = text.parse::<TokenList>().err().unwrap_or_default();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn roles() {
        let tokens = Tokens::new("alice:operator-token-0001".parse().ok(), "reader-token-00001".parse().ok());
        assert!(!Tokens::new("".parse().ok(), " , ".parse().ok()).configured(), "empty is unset");
        assert!(matches!(tokens.role("operator-token-0001"), Some(Role::Operate(name)) if name == "alice"));
        assert!(matches!(tokens.role("reader-token-00001"), Some(Role::Read)));
        assert!(tokens.role("reader-token-00002").is_none());
    }
}
