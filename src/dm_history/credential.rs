//! The credential a request carries, in the three forms Rocket.Chat accepts for `/api/v1`
//! (spec/shim.md §2): `X-User-Id` + `X-Auth-Token`, `Authorization: Bearer`, `access_token` in
//! the query. Its `Debug` never shows the secret; its fingerprint (SHA-256) is the cache key
//! of verified identities, never the token itself.
//!
//! A request's credential borrows from its head (nothing is copied to check a cached identity);
//! the service account's owns its strings (`Credential<'static>`).

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

static X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
static X_AUTH_TOKEN: HeaderName = HeaderName::from_static("x-auth-token");

/// A credential as the client presented it. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential<'a> {
    /// `X-User-Id` + `X-Auth-Token` (login tokens and personal access tokens).
    Headers {
        user_id: Cow<'a, str>,
        token: Cow<'a, str>,
    },
    /// `Authorization: Bearer <token>` (OAuth).
    Bearer(Cow<'a, str>),
    /// `?access_token=<token>` (OAuth, in the query string).
    AccessToken(Cow<'a, str>),
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Headers { user_id, .. } => write!(f, "Headers({user_id}, <token>)"),
            Credential::Bearer(_) => f.write_str("Bearer(<token>)"),
            Credential::AccessToken(_) => f.write_str("AccessToken(<token>)"),
        }
    }
}

impl<'a> Credential<'a> {
    /// The credential of a request, in Rocket.Chat's order (the headers when both are present,
    /// then the OAuth forms), borrowed from it. `None` means "not logged in".
    pub fn from_request(
        headers: &'a HeaderMap,
        access_token: Option<&'a str>,
    ) -> Option<Credential<'a>> {
        let get = |n: &HeaderName| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        if let (Some(user_id), Some(token)) = (get(&X_USER_ID), get(&X_AUTH_TOKEN)) {
            return Some(Credential::Headers {
                user_id: Cow::Borrowed(user_id),
                token: Cow::Borrowed(token),
            });
        }
        if let Some(auth) = get(&header::AUTHORIZATION) {
            let mut parts = auth.splitn(2, ' ');
            if let (Some(scheme), Some(token)) = (parts.next(), parts.next()) {
                let token = token.trim();
                if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() {
                    return Some(Credential::Bearer(Cow::Borrowed(token)));
                }
            }
        }
        access_token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| Credential::AccessToken(Cow::Borrowed(t)))
    }

    /// A SHA-256 of the credential, used as the cache key.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        match self {
            Credential::Headers { user_id, token } => {
                h.update(b"h\0");
                h.update(user_id.as_bytes());
                h.update(b"\0");
                h.update(token.as_bytes());
            }
            Credential::Bearer(t) | Credential::AccessToken(t) => {
                // Both are the same OAuth token, so they share an entry.
                h.update(b"o\0");
                h.update(t.as_bytes());
            }
        }
        h.finalize().into()
    }

    /// Puts the credential on an upstream request: headers, or `access_token` appended to
    /// `target` (which may already have a query).
    pub fn apply(&self, headers: &mut HeaderMap, target: &mut String) {
        match self {
            Credential::Headers { user_id, token } => {
                if let (Ok(u), Ok(t)) =
                    (HeaderValue::from_str(user_id), HeaderValue::from_str(token))
                {
                    headers.insert(&X_USER_ID, u);
                    let mut t = t;
                    t.set_sensitive(true);
                    headers.insert(&X_AUTH_TOKEN, t);
                }
            }
            Credential::Bearer(t) => {
                if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                    v.set_sensitive(true);
                    headers.insert(header::AUTHORIZATION, v);
                }
            }
            Credential::AccessToken(t) => {
                target.push(if target.contains('?') { '&' } else { '?' });
                target.push_str("access_token=");
                target.push_str(&crate::dm_history::params::encode_component(t));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        m
    }

    #[test]
    fn credential_forms_in_order() {
        let both = h(&[
            ("X-Auth-Token", "t"),
            ("x-user-id", "u"),
            ("authorization", "Bearer b"),
        ]);
        assert_eq!(
            Credential::from_request(&both, Some("q")),
            Some(Credential::Headers {
                user_id: "u".into(),
                token: "t".into()
            })
        );
        let bearer = h(&[("authorization", "bearer b"), ("x-user-id", "u")]);
        assert_eq!(
            Credential::from_request(&bearer, Some("q")),
            Some(Credential::Bearer("b".into()))
        );
        assert_eq!(
            Credential::from_request(&HeaderMap::new(), Some("q")),
            Some(Credential::AccessToken("q".into()))
        );
        assert_eq!(
            Credential::from_request(&h(&[("x-user-id", "u")]), None),
            None
        );
        assert_eq!(
            Credential::from_request(&h(&[("authorization", "Basic abc")]), None),
            None
        );
    }

    #[test]
    fn debug_hides_tokens_and_fingerprints_differ() {
        let c = Credential::Headers {
            user_id: "u".into(),
            token: "secret".into(),
        };
        assert!(!format!("{c:?}").contains("secret"));
        assert!(!format!("{:?}", Credential::Bearer("secret".into())).contains("secret"));
        let d = Credential::Headers {
            user_id: "u".into(),
            token: "other".into(),
        };
        assert_ne!(c.fingerprint(), d.fingerprint());
        assert_eq!(
            Credential::Bearer("x".into()).fingerprint(),
            Credential::AccessToken("x".into()).fingerprint()
        );
    }
}
