//! The token a node agent joins a cluster with, in k3s's format: `K10<sha256 of the CA certificate, hex>::node:<secret>`.
//! The CA hash lets an agent that has only the token fetch the CA from the server's `/cacerts` and check it
//! before trusting the server; the secret is the bearer token the agent then presents.

use std::fmt;

const PREFIX: &str = "K10";
const SEPARATOR: &str = "::node:";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// Lowercase hex SHA-256 of the CA certificate PEM as the server serves it at `/cacerts`.
    pub ca_hash: String,
    pub secret: String,
}

#[derive(Debug, thiserror::Error)]
#[error("not a skiff join token: expected K10<ca sha256>::node:<secret>")]
pub struct InvalidJoinToken;

impl JoinToken {
    pub fn parse(text: &str) -> Result<Self, InvalidJoinToken> {
        let (hash, secret) =
            text.trim().strip_prefix(PREFIX).and_then(|rest| rest.split_once(SEPARATOR)).ok_or(InvalidJoinToken)?;
        let hex = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex || secret.is_empty() {
            return Err(InvalidJoinToken);
        }
        Ok(JoinToken { ca_hash: hash.to_ascii_lowercase(), secret: secret.to_string() })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}{SEPARATOR}{}", self.ca_hash, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let token = JoinToken { ca_hash: "ab".repeat(32), secret: "s3cret".into() };
        assert_eq!(JoinToken::parse(&format!("{token}\n")).unwrap(), token);
        for bad in ["", "s3cret", "K10abc::node:x", &format!("K10{}::node:", "ab".repeat(32))] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?}");
        }
    }
}
