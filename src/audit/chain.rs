//! The chain link written as each record's `prev`: hex SHA-256 over the exact bytes of the
//! previous line (without its `\n`), or hex HMAC-SHA256 over the same bytes when a key is
//! configured, so that someone without the key cannot re-chain a rewritten file.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The link of the first line of a new chain: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Computes links, keyed or not. Cheap to clone; its `Debug` never shows the key.
#[derive(Clone)]
pub struct Linker {
    /// The keyed state, cloned for every line (HMAC's key schedule is done once).
    key: Option<Hmac<Sha256>>,
}

/// Why no key could be had from the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the environment variable {0} (audit.hmac_key_env / --key-env) is not set or empty")]
pub struct MissingKey(pub String);

impl std::fmt::Debug for Linker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linker")
            .field("keyed", &self.key.is_some())
            .finish()
    }
}

impl Linker {
    /// Plain SHA-256 links.
    pub fn plain() -> Linker {
        Linker { key: None }
    }

    /// HMAC-SHA256 links keyed with `key` (any length: HMAC hashes long keys, pads short ones).
    pub fn keyed(key: &[u8]) -> Linker {
        Linker {
            // HMAC accepts every key length, so this never falls back in practice.
            key: <Hmac<Sha256> as Mac>::new_from_slice(key).ok(),
        }
    }

    /// The linker `audit.hmac_key_env` (or `--key-env`) asks for: plain when `name` is empty,
    /// keyed with the variable's value otherwise. A named variable that is unset or empty is
    /// an error rather than a silent fall-back to unkeyed links.
    pub fn from_env(name: &str) -> Result<Linker, MissingKey> {
        if name.is_empty() {
            return Ok(Linker::plain());
        }
        match std::env::var_os(name) {
            Some(v) if !v.is_empty() => Ok(Linker::keyed(v.as_encoded_bytes())),
            _ => Err(MissingKey(name.to_owned())),
        }
    }

    /// Whether links are HMACs.
    pub fn is_keyed(&self) -> bool {
        self.key.is_some()
    }

    /// The link of `line` (its bytes without the trailing `\n`), as 64 lowercase hex digits.
    pub fn link(&self, line: &[u8]) -> String {
        match &self.key {
            Some(k) => {
                let mut mac = k.clone();
                mac.update(line);
                to_hex(&mac.finalize().into_bytes())
            }
            None => to_hex(&Sha256::digest(line)),
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Whether `s` has the shape of a link: 64 lowercase hex digits.
pub fn is_link(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_links_are_sha256_hex() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            Linker::plain().link(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_link(GENESIS));
        assert!(!is_link("ABC"));
    }

    #[test]
    fn keyed_links_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            Linker::keyed(b"Jefe").link(b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            format!("{:?}", Linker::keyed(b"secret")),
            "Linker { keyed: true }"
        );
    }

    #[test]
    fn a_named_but_unset_key_is_an_error() {
        assert!(!Linker::from_env("").expect("plain").is_keyed());
        let e = Linker::from_env("RCSHIM_TEST_SURELY_UNSET_KEY").expect_err("unset");
        assert!(
            e.to_string().contains("RCSHIM_TEST_SURELY_UNSET_KEY"),
            "{e}"
        );
    }
}
