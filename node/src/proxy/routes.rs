//! Routes to the other nodes' pod ranges, as flannel's host-gw backend and kube-router program them: each
//! range via its node's address, when that node shares a link with this one, so a packet between pods on
//! two nodes crosses one router hop and keeps both pods' addresses.
//!
//! Routes are made with rtnetlink (the crate of that name) and carry a protocol number of Skiff's own, so
//! a restarted agent finds those it made before and removes what no longer belongs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};

/// The `proto` of Skiff's routes (`ip route show proto 83`): a number no routing daemon of iproute2's
/// list uses, so the routes are told apart from the administrator's.
const PROTOCOL: u8 = 83;

/// Another node's pod range and where to reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRange {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

/// The routes this agent keeps in the kernel.
pub struct Routes {
    handle: Handle,
    /// What is programmed now, by range: the gateway.
    programmed: BTreeMap<PodRange, Ipv4Addr>,
}

impl Routes {
    /// Opens the netlink connection and adopts the routes an earlier agent left (they are corrected by the
    /// first [`Routes::reconcile`]).
    pub async fn open() -> Result<Self, RouteError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(RouteError::Socket)?;
        tokio::spawn(connection);
        let mut routes = Routes { handle, programmed: BTreeMap::new() };
        routes.programmed = routes.ours().await?;
        Ok(routes)
    }

    /// Skiff's routes in the main table.
    async fn ours(&self) -> Result<BTreeMap<PodRange, Ipv4Addr>, RouteError> {
        let request = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build());
        let messages: Vec<RouteMessage> = request
            .execute()
            .try_collect()
            .await
            .map_err(|source| RouteError::Kernel { what: "cannot list routes".into(), source })?;
        let mut found = BTreeMap::new();
        for message in messages.iter().filter(|m| m.header.protocol == RouteProtocol::Other(PROTOCOL)) {
            let mut destination = None;
            let mut gateway = None;
            for attribute in &message.attributes {
                match attribute {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = Some(*ip),
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                    _ => {}
                }
            }
            if let (Some(network), Some(gateway)) = (destination, gateway) {
                found.insert(PodRange { network, prefix: message.header.destination_prefix_length }, gateway);
            }
        }
        Ok(found)
    }

    /// The node's own addresses and the networks it is attached to (address and prefix length).
    async fn links(&self) -> Result<Vec<(Ipv4Addr, u8)>, RouteError> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| RouteError::Kernel { what: "cannot list addresses".into(), source })?;
        Ok(messages
            .iter()
            .filter_map(|message| {
                message.attributes.iter().find_map(|attribute| match attribute {
                    AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
                        Some((*ip, message.header.prefix_len))
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// Makes the kernel route exactly `wanted` (range -> the node's address), skipping nodes on this
    /// machine's own addresses and nodes on no shared link (for those a VXLAN overlay is needed, which
    /// this agent does not make yet: a warning says so).
    pub async fn reconcile(&mut self, wanted: &BTreeMap<PodRange, Ipv4Addr>) -> Result<(), RouteError> {
        let links = self.links().await?;
        let local = |ip: Ipv4Addr| ip.is_loopback() || links.iter().any(|(own, _)| *own == ip);
        let on_link = |ip: Ipv4Addr| {
            links.iter().any(|(own, prefix)| *prefix < 32 && *prefix > 0 && same_network(*own, ip, *prefix))
        };
        let mut desired = BTreeMap::new();
        for (range, gateway) in wanted {
            if local(*gateway) {
                continue;
            }
            if !on_link(*gateway) {
                tracing::warn!(
                    range = %format!("{}/{}", range.network, range.prefix),
                    node_ip = %gateway,
                    "no route to this node's pods: it shares no link with this node, and VXLAN is not supported yet"
                );
                continue;
            }
            desired.insert(*range, *gateway);
        }
        let stale: Vec<(PodRange, Ipv4Addr)> = self
            .programmed
            .iter()
            .filter(|(range, gateway)| desired.get(range) != Some(gateway))
            .map(|(range, gateway)| (*range, *gateway))
            .collect();
        for (range, gateway) in stale {
            self.delete(range, gateway).await?;
        }
        for (range, gateway) in desired {
            if self.programmed.get(&range) != Some(&gateway) {
                self.handle.route().add(message(range, gateway)).replace().execute().await.map_err(|source| {
                    RouteError::Kernel {
                        what: format!("cannot route {}/{} via {gateway}", range.network, range.prefix),
                        source,
                    }
                })?;
                tracing::info!(range = %format!("{}/{}", range.network, range.prefix), via = %gateway, "pod route added");
                self.programmed.insert(range, gateway);
            }
        }
        Ok(())
    }

    async fn delete(&mut self, range: PodRange, gateway: Ipv4Addr) -> Result<(), RouteError> {
        match self.handle.route().del(message(range, gateway)).execute().await {
            Ok(()) => {}
            // Gone already (its link went down, or someone removed it).
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
            Err(source) => {
                return Err(RouteError::Kernel {
                    what: format!("cannot remove the route to {}/{}", range.network, range.prefix),
                    source,
                });
            }
        }
        tracing::info!(range = %format!("{}/{}", range.network, range.prefix), "pod route removed");
        self.programmed.remove(&range);
        Ok(())
    }

    /// Removes every route this agent made (it stops).
    pub async fn remove_all(&mut self) -> Result<(), RouteError> {
        self.reconcile(&BTreeMap::new()).await
    }
}

fn message(range: PodRange, gateway: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(range.network, range.prefix)
        .gateway(gateway)
        .protocol(RouteProtocol::Other(PROTOCOL))
        .build()
}

fn same_network(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    u32::from(a) & mask == u32::from(b) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_compare_by_prefix() {
        let a: Ipv4Addr = "10.231.0.11".parse().unwrap();
        assert!(same_network(a, "10.231.0.12".parse().unwrap(), 24));
        assert!(!same_network(a, "10.231.1.12".parse().unwrap(), 24));
        assert!(same_network(a, "10.231.1.12".parse().unwrap(), 16));
    }
}
