//! JSON Web Tokens signed ES256 (RFC 7515's compact serialization, RFC 7518 §3.4): the little of JOSE that
//! service account tokens need, one key and one algorithm. The key is ECDSA P-256 in PKCS#8 PEM; its key
//! ID is kube-apiserver's, the SHA-256 of the public key's SubjectPublicKeyInfo in base64url, so a verifier
//! that learns the key from elsewhere picks it by the same `kid`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey,
};
use serde_json::{Value, json};
use sha2::Digest;

/// The one algorithm signed and accepted. A verifier that trusted the header's `alg` would let the token
/// choose how it is checked (`none`, or HS256 keyed with the public key).
const ALGORITHM: &str = "ES256";

/// Why the signing key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not a PEM private key rcgen reads.
    #[error("the service account key is not a PEM private key")]
    Pem(#[source] rcgen::Error),
    /// A key of another type (RSA, another curve).
    #[error("the service account key is not an ECDSA P-256 key")]
    Algorithm,
    /// ring refused the key (its public half does not match, ...).
    #[error("the service account key is unusable: {0}")]
    Rejected(ring::error::KeyRejected),
}

/// The system's random number generator failed while signing (ECDSA needs a fresh nonce).
#[derive(Debug, thiserror::Error)]
#[error("cannot sign a token: the random number generator failed")]
pub struct SignError;

/// Why a token is refused before its claims are looked at.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts, or a header or payload that is no JSON object.
    #[error("not a well-formed JWT")]
    Malformed,
    /// A header naming an algorithm other than ES256.
    #[error("unsupported signing algorithm {0:?}")]
    Algorithm(String),
    /// A header naming another key.
    #[error("signed with an unknown key")]
    KeyId,
    /// The signature does not verify with this key.
    #[error("invalid signature")]
    Signature,
}

/// The key tokens are signed and verified with.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    key_id: String,
    rng: SystemRandom,
}

impl SigningKey {
    /// The key in `pem` (PKCS#8, as `pki` writes `sa.key`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        use rcgen::PublicKeyData;
        let key = rcgen::KeyPair::from_pem(pem).map_err(KeyError::Pem)?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(KeyError::Algorithm);
        }
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
            .map_err(KeyError::Rejected)?;
        let key_id = BASE64URL.encode(sha2::Sha256::digest(key.subject_public_key_info()));
        Ok(Self { pair, key_id, rng })
    }

    /// `claims` as a signed compact JWT with the header `{"alg":"ES256","kid":KEY_ID}`.
    pub fn sign(&self, claims: &Value) -> Result<String, SignError> {
        let header = json!({"alg": ALGORITHM, "kid": self.key_id});
        let input = format!("{}.{}", BASE64URL.encode(header.to_string()), BASE64URL.encode(claims.to_string()));
        let signature = self.pair.sign(&self.rng, input.as_bytes()).map_err(|_| SignError)?;
        Ok(format!("{input}.{}", BASE64URL.encode(signature)))
    }

    /// The claims of `token` if this key signed it. A header without `kid` is tried with this key, as
    /// Kubernetes tries every key it has.
    pub fn verify(&self, token: &str) -> Result<Value, JwtError> {
        let (input, signature) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
        let (header, payload) = input.split_once('.').ok_or(JwtError::Malformed)?;
        let header = decode_object(header)?;
        match header.get("alg").and_then(Value::as_str) {
            Some(ALGORITHM) => {}
            other => return Err(JwtError::Algorithm(other.unwrap_or_default().to_string())),
        }
        if header.get("kid").is_some_and(|kid| kid.as_str() != Some(self.key_id.as_str())) {
            return Err(JwtError::KeyId);
        }
        let signature = BASE64URL.decode(signature).map_err(|_| JwtError::Malformed)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.pair.public_key().as_ref())
            .verify(input.as_bytes(), &signature)
            .map_err(|_| JwtError::Signature)?;
        decode_object(payload)
    }
}

/// The `iss` claim of what looks like a JWT, read without verifying anything: Kubernetes' authenticators
/// first pick the tokens whose issuer is theirs and leave the others to the next authenticator.
pub fn unverified_issuer(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else { return None };
    decode_object(payload).ok()?.get("iss")?.as_str().map(str::to_string)
}

fn decode_object(part: &str) -> Result<Value, JwtError> {
    let bytes = BASE64URL.decode(part).map_err(|_| JwtError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(object @ Value::Object(_)) => Ok(object),
        _ => Err(JwtError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_pem(&rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap()
    }

    fn part(token: &str, index: usize) -> Value {
        serde_json::from_slice(&BASE64URL.decode(token.split('.').nth(index).unwrap()).unwrap()).unwrap()
    }

    /// `token` with its header replaced by `header`.
    fn with_header(token: &str, header: Value) -> String {
        let rest = token.split_once('.').unwrap().1;
        format!("{}.{rest}", BASE64URL.encode(header.to_string()))
    }

    #[test]
    fn a_signed_token_verifies_and_names_its_key() {
        let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let key = SigningKey::from_pem(&pem).unwrap();
        let claims = json!({"iss": "https://kubernetes.default.svc.cluster.local", "sub": "system:serviceaccount:a:b"});
        let token = key.sign(&claims).unwrap();
        assert_eq!(key.verify(&token), Ok(claims));
        use rcgen::PublicKeyData;
        let spki = rcgen::KeyPair::from_pem(&pem).unwrap().subject_public_key_info();
        let kid = BASE64URL.encode(sha2::Sha256::digest(spki));
        assert_eq!(part(&token, 0), json!({"alg": "ES256", "kid": kid}));
        assert_eq!(BASE64URL.decode(token.rsplit('.').next().unwrap()).unwrap().len(), 64, "r and s, 32 bytes each");
        assert_eq!(unverified_issuer(&token).as_deref(), Some("https://kubernetes.default.svc.cluster.local"));
    }

    #[test]
    fn tampered_foreign_and_malformed_tokens_are_refused() {
        let (key, other) = (key(), key());
        let token = key.sign(&json!({"sub": "system:serviceaccount:a:b"})).unwrap();
        let (header, rest) = token.split_once('.').unwrap();
        let signature = rest.split_once('.').unwrap().1;
        let forged = BASE64URL.encode(json!({"sub": "system:serviceaccount:kube-system:admin"}).to_string());
        assert_eq!(key.verify(&format!("{header}.{forged}.{signature}")), Err(JwtError::Signature));
        assert_eq!(other.verify(&token), Err(JwtError::KeyId));
        let unnamed = with_header(&token, json!({"alg": "ES256"}));
        assert_eq!(other.verify(&unnamed), Err(JwtError::Signature), "without a kid the signature decides");
        assert_eq!(key.verify(&with_header(&token, json!({"alg": "none"}))), Err(JwtError::Algorithm("none".into())));
        assert_eq!(key.verify(&with_header(&token, json!({"alg": "HS256"}))), Err(JwtError::Algorithm("HS256".into())));
        let not_json = format!("{header}.bm90IGpzb24.{signature}");
        assert_eq!(
            key.verify(&not_json),
            Err(JwtError::Signature),
            "the payload is read only once the signature holds"
        );
        for malformed in ["", "abc", "a.b", "a.b.c"] {
            assert_eq!(key.verify(malformed), Err(JwtError::Malformed), "{malformed}");
            assert_eq!(unverified_issuer(malformed), None);
        }
    }

    #[test]
    fn only_p256_keys_sign() {
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap().serialize_pem();
        assert!(matches!(SigningKey::from_pem(&p384), Err(KeyError::Algorithm)));
        assert!(matches!(SigningKey::from_pem("not a key"), Err(KeyError::Pem(_))));
    }
}
