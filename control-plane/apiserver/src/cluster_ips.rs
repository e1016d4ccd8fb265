//! ClusterIP reservations: one store key per address held, naming its Service, as Kubernetes' IPAddress
//! objects do (the allocator GA in 1.33). Taking an address is one create, which fails when any API server
//! sharing the store holds it: no list of every Service per create (which made filling a cluster with
//! Services quadratic), and no two Services on one address.
//!
//! The Service and its reservation are two writes. A create that fails after reserving releases what it
//! reserved, and deleting a Service releases its addresses; what a server stopped between the two writes
//! leaves is found by [`repair`] (at start and every few minutes, as kube-apiserver's repair controller),
//! which also reserves the addresses of Services older than reservations. A reservation younger than
//! [`GRACE`] may belong to a create still in flight, so neither repair nor another create takes it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use skiff_store::{Revision, Store};
use tokio_util::sync::CancellationToken;

/// Where reservations live, outside `/registry/` where no API lists them: `<prefix><address>`.
const RESERVATIONS: &str = "/skiff/clusterips/";
/// How long a reservation whose Service is not (yet) there is left alone.
const GRACE: Duration = Duration::from_secs(60);
/// How often the reservations are compared with the Services (kube-apiserver: 3 minutes).
const REPAIR: Duration = Duration::from_secs(180);

/// A reservation this request made, to give back if the Service is not created after all.
#[derive(Debug)]
pub struct Reservation {
    key: String,
    revision: Revision,
}

#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("provided IP is already allocated")]
    Taken,
    #[error(transparent)]
    Store(#[from] skiff_store::Error),
}

fn key(ip: Ipv4Addr) -> String {
    format!("{RESERVATIONS}{ip}")
}

struct Held {
    service: String,
    reserved: Timestamp,
    revision: Revision,
}

fn held(kv: &skiff_store::KeyValue) -> Option<Held> {
    let value: Value = serde_json::from_slice(&kv.value).ok()?;
    Some(Held {
        service: value["service"].as_str()?.to_string(),
        reserved: value["reserved"].as_str()?.parse().ok()?,
        revision: kv.mod_revision,
    })
}

fn value(service: &str) -> bytes::Bytes {
    bytes::Bytes::from(json!({"service": service, "reserved": skiff_api::format_time(Timestamp::now())}).to_string())
}

fn older_than_grace(reserved: Timestamp) -> bool {
    Timestamp::now().duration_since(reserved).unsigned_abs() > GRACE
}

/// Takes `ip` for `service` (the Service's store key). `Some` when this call reserved it (to release if the create fails); `None`
/// when `service` already held it (an earlier Service of that name, which the create will meet). A
/// reservation past [`GRACE`] whose holder does not hold the address is taken over.
pub async fn reserve(store: &dyn Store, ip: Ipv4Addr, service: &str) -> Result<Option<Reservation>, ReserveError> {
    let key = key(ip);
    let current = match store.create(&key, value(service)).await {
        Ok(kv) => return Ok(Some(Reservation { key, revision: kv.mod_revision })),
        Err(skiff_store::Error::AlreadyExists(_)) => store.get(&key).await?,
        Err(e) => return Err(e.into()),
    };
    let Some(current) = current else { return Err(ReserveError::Taken) };
    let found = held(&current);
    if found.as_ref().is_some_and(|h| h.service == service) {
        return Ok(None);
    }
    let stale = match &found {
        Some(h) => older_than_grace(h.reserved) && !holds(store, &h.service, ip).await?,
        None => true,
    };
    if !stale {
        return Err(ReserveError::Taken);
    }
    match store.update(&key, value(service), Some(current.mod_revision)).await {
        Ok(kv) => Ok(Some(Reservation { key, revision: kv.mod_revision })),
        Err(skiff_store::Error::Conflict { .. } | skiff_store::Error::NotFound(_)) => Err(ReserveError::Taken),
        Err(e) => Err(e.into()),
    }
}

/// Whether `ip` is free to take, without taking it (a dry run).
pub async fn is_free(store: &dyn Store, ip: Ipv4Addr, service: &str) -> Result<bool, skiff_store::Error> {
    Ok(match store.get(&key(ip)).await? {
        None => true,
        Some(kv) => held(&kv).is_none_or(|h| h.service == service),
    })
}

/// Gives back a reservation this request made.
pub async fn release(store: &dyn Store, reservation: Reservation) {
    if let Err(e) = store.delete(&reservation.key, Some(reservation.revision)).await
        && !matches!(e, skiff_store::Error::NotFound(_) | skiff_store::Error::Conflict { .. })
    {
        tracing::warn!(key = reservation.key, error = %e, "cannot release a cluster IP; the repair will");
    }
}

/// Releases the addresses a deleted Service (stored at `service_key`) held.
pub async fn release_service(store: &dyn Store, service_key: &str, service: &Value) {
    release_addresses(store, service_key, addresses(service)).await;
}

/// Releases those of `ips` the Service stored at `service_key` holds.
pub async fn release_addresses(store: &dyn Store, service_key: &str, ips: impl IntoIterator<Item = Ipv4Addr>) {
    for ip in ips {
        let key = key(ip);
        let Ok(Some(kv)) = store.get(&key).await else { continue };
        if held(&kv).is_some_and(|h| h.service == service_key) {
            release(store, Reservation { key, revision: kv.mod_revision }).await;
        }
    }
}

/// The IPv4 cluster IPs a stored Service holds.
pub fn addresses(service: &Value) -> Vec<Ipv4Addr> {
    let spec = &service["spec"];
    let listed: Vec<&str> = match spec["clusterIPs"].as_array() {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(Value::as_str).collect(),
        _ => spec["clusterIP"].as_str().into_iter().collect(),
    };
    listed.into_iter().filter_map(|ip| ip.parse().ok()).collect()
}

/// Whether the Service stored at `service` holds `ip`.
async fn holds(store: &dyn Store, service: &str, ip: Ipv4Addr) -> Result<bool, skiff_store::Error> {
    let Some(kv) = store.get(service).await? else { return Ok(false) };
    Ok(serde_json::from_slice::<Value>(&kv.value).is_ok_and(|service| addresses(&service).contains(&ip)))
}

/// Reserves what the Services under `services` (their store prefix) hold without a reservation, and
/// releases reservations past [`GRACE`] whose Service does not hold them. Returns how many of each.
pub async fn repair(store: &dyn Store, services: &str) -> Result<(usize, usize), skiff_store::Error> {
    let mut wanted: HashMap<Ipv4Addr, String> = HashMap::new();
    for kv in list_all(store, services).await? {
        let Ok(service) = serde_json::from_slice::<Value>(&kv.value) else { continue };
        for ip in addresses(&service) {
            wanted.insert(ip, kv.key.clone());
        }
    }
    let (mut reserved, mut released) = (0, 0);
    let mut present = std::collections::HashSet::new();
    for kv in list_all(store, RESERVATIONS).await? {
        let Some(ip) = kv.key.strip_prefix(RESERVATIONS).and_then(|ip| ip.parse::<Ipv4Addr>().ok()) else { continue };
        let found = held(&kv);
        let kept = found.as_ref().is_some_and(|h| wanted.get(&ip) == Some(&h.service) || !older_than_grace(h.reserved));
        if kept {
            present.insert(ip);
            continue;
        }
        let revision = found.map_or(kv.mod_revision, |h| h.revision);
        match store.delete(&kv.key, Some(revision)).await {
            Ok(_) => released += 1,
            Err(skiff_store::Error::NotFound(_) | skiff_store::Error::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    for (ip, service) in wanted.into_iter().filter(|(ip, _)| !present.contains(ip)) {
        match store.create(&key(ip), value(&service)).await {
            Ok(_) => reserved += 1,
            // Taken meanwhile (or released just now for another holder): the next pass looks again.
            Err(skiff_store::Error::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((reserved, released))
}

async fn list_all(store: &dyn Store, prefix: &str) -> Result<Vec<skiff_store::KeyValue>, skiff_store::Error> {
    let mut all = Vec::new();
    let mut start_after: Option<String> = None;
    loop {
        let page = store.list(prefix, start_after.as_deref(), 500).await?;
        start_after = page.kvs.last().map(|kv| kv.key.clone());
        all.extend(page.kvs);
        if !page.more || start_after.is_none() {
            return Ok(all);
        }
    }
}

/// Repairs every [`REPAIR`] until `shutdown` (the first pass at once).
pub async fn run(store: std::sync::Arc<dyn Store>, shutdown: CancellationToken) {
    let Some(def) = skiff_api::resources::find("", "v1", "services") else { return };
    let services = crate::objects::prefix(def, None);
    let mut tick = tokio::time::interval(REPAIR);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            result = repair(store.as_ref(), &services) => match result {
                Ok((0, 0)) => {}
                Ok((reserved, released)) => tracing::info!(reserved, released, "cluster IP reservations repaired"),
                Err(e) => tracing::warn!(error = %e, "cannot repair the cluster IP reservations"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(skiff_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        (dir, store)
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    const SERVICES: &str = "/registry/core/services/";

    async fn put_service(store: &dyn Store, name: &str, cluster_ip: &str) {
        let service = json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"clusterIP": cluster_ip}});
        store.create(&format!("{SERVICES}default/{name}"), service.to_string().into()).await.unwrap();
    }

    /// A reservation written `age` ago.
    async fn put_reservation(store: &dyn Store, address: &str, service: &str, age: Duration) {
        let reserved = Timestamp::now() - jiff::SignedDuration::try_from(age).unwrap();
        let value = json!({"service": service, "reserved": skiff_api::format_time(reserved)});
        store.create(&key(ip(address)), value.to_string().into()).await.unwrap();
    }

    #[tokio::test]
    async fn an_address_goes_to_one_service_until_released() {
        let (_dir, store) = store();
        let first = reserve(store.as_ref(), ip("10.43.0.5"), "default/a").await.unwrap().unwrap();
        assert!(matches!(reserve(store.as_ref(), ip("10.43.0.5"), "default/b").await, Err(ReserveError::Taken)));
        assert!(!is_free(store.as_ref(), ip("10.43.0.5"), "default/b").await.unwrap());
        assert!(reserve(store.as_ref(), ip("10.43.0.5"), "default/a").await.unwrap().is_none(), "already its own");
        release(store.as_ref(), first).await;
        assert!(reserve(store.as_ref(), ip("10.43.0.5"), "default/b").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_stale_reservation_is_taken_over_and_a_fresh_one_is_not() {
        let (_dir, store) = store();
        put_reservation(store.as_ref(), "10.43.0.6", "default/gone", GRACE * 2).await;
        put_reservation(store.as_ref(), "10.43.0.7", "default/creating", Duration::ZERO).await;
        assert!(reserve(store.as_ref(), ip("10.43.0.6"), "default/b").await.unwrap().is_some());
        assert!(matches!(reserve(store.as_ref(), ip("10.43.0.7"), "default/b").await, Err(ReserveError::Taken)));
    }

    #[tokio::test]
    async fn repair_reserves_what_services_hold_and_releases_what_none_holds() {
        let (_dir, store) = store();
        put_service(store.as_ref(), "old", "10.43.0.8").await;
        put_service(store.as_ref(), "kept", "10.43.0.9").await;
        put_reservation(store.as_ref(), "10.43.0.9", &format!("{SERVICES}default/kept"), GRACE * 2).await;
        put_reservation(store.as_ref(), "10.43.0.10", "default/deleted", GRACE * 2).await;
        put_reservation(store.as_ref(), "10.43.0.11", "default/creating", Duration::ZERO).await;
        assert_eq!(repair(store.as_ref(), SERVICES).await.unwrap(), (1, 1));
        let held = |address: &str| {
            let store = store.clone();
            let address = address.to_string();
            async move { store.get(&key(ip(&address))).await.unwrap().and_then(|kv| held(&kv)).map(|h| h.service) }
        };
        assert_eq!(held("10.43.0.8").await, Some(format!("{SERVICES}default/old")));
        assert_eq!(held("10.43.0.9").await, Some(format!("{SERVICES}default/kept")));
        assert_eq!(held("10.43.0.10").await, None);
        assert_eq!(held("10.43.0.11").await.as_deref(), Some("default/creating"), "a create may be in flight");
        assert_eq!(repair(store.as_ref(), SERVICES).await.unwrap(), (0, 0));
    }
}
