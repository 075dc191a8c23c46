//! The link's mutual authentication: each side proves it holds the shared token with an
//! HMAC-SHA256 over both sides' nonces, so the token never crosses the link and a controller
//! without it cannot give an agent work. Verification is constant-time (ring's `hmac::verify`).

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;

/// Which side a proof is from: the labels keep one side's proof from being replayed as the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Controller,
    Agent,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Controller => b"squall controller",
            Role::Agent => b"squall agent",
        }
    }
}

/// A shared secret, as read from a token file (surrounding white space trimmed).
#[derive(Clone)]
pub struct Token(hmac::Key);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(
        "the token in {path} is {len} bytes; use at least 16 (e.g. `head -c 32 /dev/urandom | base64 > {path}`)"
    )]
    Short { path: String, len: usize },
}

impl Token {
    pub fn new(secret: &[u8]) -> Token {
        Token(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// Reads a token file; tokens shorter than 16 bytes are refused.
    pub fn from_file(path: &std::path::Path) -> Result<Token, TokenError> {
        let p = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| TokenError::Read { path: p.clone(), source })?;
        let secret = text.trim_ascii();
        if secret.len() < 16 {
            return Err(TokenError::Short { path: p, len: secret.len() });
        }
        Ok(Token::new(secret))
    }

    /// A random token (for `squall run --local-agents`).
    pub fn random() -> (Token, String) {
        let bytes = nonce();
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        (Token::new(text.as_bytes()), text)
    }

    /// `role`'s proof over (its peer's nonce, its own nonce).
    pub fn prove(&self, role: Role, peer_nonce: &[u8], own_nonce: &[u8]) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(role.label());
        ctx.update(peer_nonce);
        ctx.update(own_nonce);
        ctx.sign().as_ref().to_vec()
    }

    /// Checks `role`'s proof, in constant time.
    pub fn verify(&self, role: Role, peer_nonce: &[u8], own_nonce: &[u8], proof: &[u8]) -> bool {
        let mut msg = Vec::with_capacity(32 + peer_nonce.len() + own_nonce.len());
        msg.extend_from_slice(role.label());
        msg.extend_from_slice(peer_nonce);
        msg.extend_from_slice(own_nonce);
        hmac::verify(&self.0, &msg, proof).is_ok()
    }
}

/// Fresh random bytes for one handshake.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut n).expect("the system random source works");
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_token_role_and_nonces() {
        let (a, b) = (nonce(), nonce());
        let t = Token::new(b"0123456789abcdef");
        let p = t.prove(Role::Controller, &a, &b);
        assert!(t.verify(Role::Controller, &a, &b, &p));
        assert!(!t.verify(Role::Agent, &a, &b, &p), "a controller proof must not pass as an agent's");
        assert!(!t.verify(Role::Controller, &b, &a, &p), "nonces are ordered");
        assert!(!Token::new(b"0123456789abcdeX").verify(Role::Controller, &a, &b, &p));
        assert!(!t.verify(Role::Controller, &a, &b, &p[..31]));
    }
}
