//! Routes to the other nodes' pod ranges, so a packet between pods on two nodes keeps both pods' addresses:
//!
//! - host-gw (the default, as flannel's host-gw backend and kube-router): each range via its node's address,
//!   when that node shares a link with this one: one router hop, no encapsulation.
//! - VXLAN (as flannel's vxlan backend), for nodes that share no link, or for every node with
//!   `--pod-routes vxlan`: a kernel vxlan device, `skiff.vxlan` (VNI 1, UDP 8472), whose address is the
//!   first of the node's pod range; each other node's range is routed via that node's first address on the
//!   device, whose link-layer address is a function of the range (`0a:58` and the range's four octets, as
//!   OVN-Kubernetes derives its MACs), so no node needs to publish it; a permanent neighbour entry and a
//!   forwarding entry tell the kernel which node's address to send that MAC's frames to. Every agent with
//!   another node to reach makes the device, so each can receive encapsulated traffic whatever it sends
//!   (agents sharing one machine's network, as in tests, reach each other locally and make none).
//!
//! Everything is made with rtnetlink (the crate of that name); routes carry a protocol number of Skiff's
//! own, so a restarted agent finds those it made before and removes what no longer belongs. The device,
//! and with it the routes, neighbours and forwarding entries through it, is made anew at each start.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::NeighbourFlags;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

/// The `proto` of Skiff's routes (`ip route show proto 83`): a number no routing daemon of iproute2's
/// list uses, so the routes are told apart from the administrator's.
const PROTOCOL: u8 = 83;
/// The overlay device, its VNI and UDP port (flannel's, and the kernel's default for vxlan).
pub const VXLAN_DEVICE: &str = "skiff.vxlan";
const VXLAN_ID: u32 = 1;
const VXLAN_PORT: u16 = 8472;
/// What VXLAN's headers take of the underlying link's MTU (outer IPv4, UDP, VXLAN and Ethernet headers).
const VXLAN_OVERHEAD: u32 = 50;

/// `--pod-routes`: how this node reaches other nodes' pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RouteMode {
    /// Directly via the node's address where it shares a link; VXLAN where it does not.
    #[default]
    HostGw,
    /// VXLAN to every node.
    Vxlan,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid pod route mode {0:?}: expected host-gw or vxlan")]
pub struct InvalidRouteMode(String);

impl FromStr for RouteMode {
    type Err = InvalidRouteMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "host-gw" => Ok(RouteMode::HostGw),
            "vxlan" => Ok(RouteMode::Vxlan),
            _ => Err(InvalidRouteMode(text.to_string())),
        }
    }
}

/// A node's pod range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRange {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl std::fmt::Display for PodRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl PodRange {
    /// The link-layer address of the range's node on the overlay.
    fn vtep_mac(&self) -> [u8; 6] {
        let [a, b, c, d] = self.network.octets();
        [0x0a, 0x58, a, b, c, d]
    }
}

/// How a range is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hop {
    /// Via the node's address on a shared link.
    Direct(Ipv4Addr),
    /// Over the overlay to the node at this address.
    Overlay(Ipv4Addr),
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

fn kernel(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> RouteError {
    let what = what.into();
    move |source| RouteError::Kernel { what, source }
}

/// The routes this agent keeps in the kernel.
pub struct Routes {
    handle: Handle,
    mode: RouteMode,
    own: PodRange,
    node_ip: Ipv4Addr,
    /// The overlay device's index, once made.
    vxlan: Option<u32>,
    /// What is programmed now, by range.
    programmed: BTreeMap<PodRange, Hop>,
}

impl Routes {
    /// Opens the netlink connection for this node (`own` range, address `node_ip`), removes the overlay
    /// device an earlier agent left (with its routes and entries) and adopts the direct routes it left
    /// (corrected by the first [`Routes::reconcile`]).
    pub async fn open(mode: RouteMode, own: PodRange, node_ip: Ipv4Addr) -> Result<Self, RouteError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(RouteError::Socket)?;
        tokio::spawn(connection);
        let mut routes = Routes { handle, mode, own, node_ip, vxlan: None, programmed: BTreeMap::new() };
        if let Some(index) = routes.link_index(VXLAN_DEVICE).await? {
            routes.handle.link().del(index).execute().await.map_err(kernel("cannot remove the old overlay device"))?;
        }
        routes.programmed = routes.ours().await?;
        Ok(routes)
    }

    /// The index of a link, if it exists.
    async fn link_index(&self, name: &str) -> Result<Option<u32>, RouteError> {
        let mut request = std::pin::pin!(self.handle.link().get().match_name(name.to_string()).execute());
        match request.try_next().await {
            Ok(link) => Ok(link.map(|l| l.header.index)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(kernel(format!("cannot look up {name}"))(e)),
        }
    }

    /// The link `ip` is an address of, with its MTU.
    async fn link_of(&self, ip: Ipv4Addr) -> Result<Option<(u32, u32)>, RouteError> {
        let addresses: Vec<_> =
            self.handle.address().get().execute().try_collect().await.map_err(kernel("cannot list addresses"))?;
        let Some(index) = addresses.iter().find_map(|message| {
            let own = message.attributes.iter().any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(v)) | AddressAttribute::Address(IpAddr::V4(v)) if *v == ip));
            own.then_some(message.header.index)
        }) else {
            return Ok(None);
        };
        let link = std::pin::pin!(self.handle.link().get().match_index(index).execute()).try_next().await;
        let link = link.map_err(kernel("cannot read the node's link"))?;
        let mtu = link.and_then(|l| {
            l.attributes.iter().find_map(|a| if let LinkAttribute::Mtu(m) = a { Some(*m) } else { None })
        });
        Ok(Some((index, mtu.unwrap_or(1500))))
    }

    /// The overlay device, made on first use: encapsulating from the node's address, addressed with the
    /// first address of its range.
    async fn vxlan(&mut self) -> Result<u32, RouteError> {
        if let Some(index) = self.vxlan {
            return Ok(index);
        }
        let (own, node_ip) = (self.own, self.node_ip);
        let (underlying, mtu) = self.link_of(node_ip).await?.unwrap_or((0, 1500));
        let mut device = LinkVxlan::new(VXLAN_DEVICE, VXLAN_ID)
            .port(VXLAN_PORT)
            .learning(false)
            .local(node_ip)
            .mtu(mtu.saturating_sub(VXLAN_OVERHEAD))
            .address(own.vtep_mac().to_vec());
        if underlying != 0 {
            device = device.dev(underlying);
        }
        self.handle.link().add(device.build()).execute().await.map_err(kernel("cannot make the overlay device"))?;
        let index = self.link_index(VXLAN_DEVICE).await?.unwrap_or_default();
        self.handle
            .address()
            .add(index, IpAddr::V4(own.network), 32)
            .execute()
            .await
            .map_err(kernel("cannot address the overlay device"))?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(kernel("cannot bring the overlay device up"))?;
        self.vxlan = Some(index);
        Ok(index)
    }

    /// Skiff's direct routes in the main table (those through the overlay went with its old device).
    async fn ours(&self) -> Result<BTreeMap<PodRange, Hop>, RouteError> {
        let request = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build());
        let messages: Vec<RouteMessage> =
            request.execute().try_collect().await.map_err(kernel("cannot list routes"))?;
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
                found.insert(
                    PodRange { network, prefix: message.header.destination_prefix_length },
                    Hop::Direct(gateway),
                );
            }
        }
        Ok(found)
    }

    /// The node's own addresses and the networks it is attached to (address and prefix length).
    async fn links(&self) -> Result<Vec<(Ipv4Addr, u8)>, RouteError> {
        let messages: Vec<_> =
            self.handle.address().get().execute().try_collect().await.map_err(kernel("cannot list addresses"))?;
        Ok(messages
            .iter()
            .filter(|message| Some(message.header.index) != self.vxlan)
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
    /// machine's own addresses (several agents on one machine share its routes already).
    pub async fn reconcile(&mut self, wanted: &BTreeMap<PodRange, Ipv4Addr>) -> Result<(), RouteError> {
        let links = self.links().await?;
        let local = |ip: Ipv4Addr| ip.is_loopback() || links.iter().any(|(own, _)| *own == ip);
        let on_link = |ip: Ipv4Addr| {
            links.iter().any(|(own, prefix)| (1..32).contains(prefix) && same_network(*own, ip, *prefix))
        };
        let desired: BTreeMap<PodRange, Hop> = wanted
            .iter()
            .filter(|(_, node)| !local(**node))
            .map(|(range, node)| {
                let hop = if self.mode == RouteMode::HostGw && on_link(*node) {
                    Hop::Direct(*node)
                } else {
                    Hop::Overlay(*node)
                };
                (*range, hop)
            })
            .collect();
        let stale: Vec<(PodRange, Hop)> = self
            .programmed
            .iter()
            .filter(|(range, hop)| desired.get(range) != Some(hop))
            .map(|(range, hop)| (*range, *hop))
            .collect();
        for (range, hop) in stale {
            self.remove(range, hop).await?;
        }
        if !desired.is_empty() {
            // Other nodes may reach this one over the overlay, whatever this one uses.
            self.vxlan().await?;
        }
        for (range, hop) in desired {
            if self.programmed.get(&range) != Some(&hop) {
                self.add(range, hop).await?;
            }
        }
        Ok(())
    }

    async fn add(&mut self, range: PodRange, hop: Hop) -> Result<(), RouteError> {
        let failed = |what: &str| kernel(format!("cannot {what} for {range}"));
        match hop {
            Hop::Direct(node) => {
                self.handle
                    .route()
                    .add(direct(range, node))
                    .replace()
                    .execute()
                    .await
                    .map_err(failed("add the route"))?;
            }
            Hop::Overlay(node) => {
                let device = self.vxlan().await?;
                let mac = range.vtep_mac();
                // Which node the range's overlay address lives at: its MAC, then where to send that MAC.
                self.handle
                    .neighbours()
                    .add(device, IpAddr::V4(range.network))
                    .link_layer_address(&mac)
                    .replace()
                    .execute()
                    .await
                    .map_err(failed("add the overlay neighbour"))?;
                self.handle
                    .neighbours()
                    .add_bridge(device, &mac)
                    .destination(IpAddr::V4(node))
                    .flags(NeighbourFlags::Own)
                    .replace()
                    .execute()
                    .await
                    .map_err(failed("add the overlay forwarding entry"))?;
                self.handle
                    .route()
                    .add(overlay(range, device))
                    .replace()
                    .execute()
                    .await
                    .map_err(failed("add the overlay route"))?;
            }
        }
        tracing::info!(%range, ?hop, "pod route added");
        self.programmed.insert(range, hop);
        Ok(())
    }

    async fn remove(&mut self, range: PodRange, hop: Hop) -> Result<(), RouteError> {
        let message = match hop {
            Hop::Direct(node) => direct(range, node),
            Hop::Overlay(_) => overlay(range, self.vxlan.unwrap_or_default()),
        };
        match self.handle.route().del(message).execute().await {
            Ok(()) => {}
            // Gone already (its link went down, or someone removed it).
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
            Err(source) => return Err(kernel(format!("cannot remove the route to {range}"))(source)),
        }
        // The overlay's neighbour and forwarding entries stay until the device goes: harmless, and
        // replaced if the range comes back on another node.
        tracing::info!(%range, "pod route removed");
        self.programmed.remove(&range);
        Ok(())
    }

    /// Removes every route this agent made, and the overlay device (it stops).
    pub async fn remove_all(&mut self) -> Result<(), RouteError> {
        self.reconcile(&BTreeMap::new()).await?;
        match self.vxlan.take() {
            Some(index) => {
                self.handle.link().del(index).execute().await.map_err(kernel("cannot remove the overlay device"))
            }
            None => Ok(()),
        }
    }
}

fn direct(range: PodRange, node: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(range.network, range.prefix)
        .gateway(node)
        .protocol(RouteProtocol::Other(PROTOCOL))
        .build()
}

/// The range via its node's overlay address, which is on the device's link though on no network of it.
fn overlay(range: PodRange, device: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(range.network, range.prefix)
        .gateway(range.network)
        .output_interface(device)
        .onlink()
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

    #[test]
    fn overlay_macs_follow_the_range_and_modes_parse() {
        let range = PodRange { network: "10.42.132.0".parse().unwrap(), prefix: 22 };
        assert_eq!(range.vtep_mac(), [0x0a, 0x58, 10, 42, 132, 0]);
        assert_eq!(range.to_string(), "10.42.132.0/22");
        assert_eq!("vxlan".parse::<RouteMode>().unwrap(), RouteMode::Vxlan);
        assert_eq!("host-gw".parse::<RouteMode>().unwrap(), RouteMode::HostGw);
        assert!("flannel".parse::<RouteMode>().is_err());
    }
}
