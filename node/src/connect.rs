//! Joining a cluster with nothing but the server URL and the join token: fetch the CA from `/cacerts` without
//! trusting the connection, keep it only if its hash is the one in the token, then talk to the server over
//! TLS verified by that CA with the token's secret as bearer.

use kube::Client;
use sha2::Digest;
use skiff_api::join::JoinToken;

use crate::AgentError;

pub async fn connect(server: &str, token: &JoinToken) -> Result<Client, AgentError> {
    let url: http::Uri = server.parse().map_err(|_| AgentError::Config(format!("invalid server URL {server:?}")))?;
    let mut unverified = kube::Config::new(url.clone());
    // Only for fetching the CA, whose hash is checked below before anything is trusted.
    unverified.accept_invalid_certs = true;
    let probe = Client::try_from(unverified).map_err(AgentError::Client)?;
    let request = http::Request::get("/cacerts").body(Vec::new()).map_err(|e| AgentError::Config(e.to_string()))?;
    let ca_pem = probe.request_text(request).await.map_err(AgentError::Client)?;
    let hash = hex::encode(sha2::Sha256::digest(ca_pem.as_bytes()));
    if hash != token.ca_hash {
        return Err(AgentError::CaMismatch { expected: token.ca_hash.clone(), actual: hash });
    }
    let roots = rustls_pemfile::certs(&mut ca_pem.as_bytes())
        .map(|cert| cert.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AgentError::Config(format!("the server's CA is not PEM: {e}")))?;
    let mut config = kube::Config::new(url);
    config.root_cert = Some(roots);
    config.auth_info.token = Some(token.secret.clone().into());
    Client::try_from(config).map_err(AgentError::Client)
}
