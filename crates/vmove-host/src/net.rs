//! Links over rtnetlink: bridges, veths, addresses. A [`Netlink`] works in the network
//! namespace of the thread that created it.
use std::net::IpAddr;
use std::os::fd::RawFd;

use anyhow::{anyhow, Context, Result};
use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth};

/// A single-threaded runtime for netlink work on a dedicated thread.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")
}

/// A netlink connection in the calling thread's namespace.
pub struct Netlink {
    handle: Handle,
}

/// A link and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSummary {
    /// Interface name.
    pub name: String,
    /// Kind (`bridge`, `veth`, `tun`, ...), if the kernel reported one.
    pub kind: Option<String>,
    /// Index of the bridge it belongs to.
    pub controller: Option<u32>,
    /// Interface index.
    pub index: u32,
}

fn summary(m: &LinkMessage) -> LinkSummary {
    let mut s = LinkSummary { name: String::new(), kind: None, controller: None, index: m.header.index };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => s.name = n.clone(),
            LinkAttribute::Controller(c) => s.controller = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        s.kind = Some(match k {
                            InfoKind::Bridge => "bridge".into(),
                            InfoKind::Veth => "veth".into(),
                            InfoKind::Tun => "tun".into(),
                            InfoKind::Vlan => "vlan".into(),
                            other => format!("{other:?}").to_lowercase(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    s
}

impl Netlink {
    /// Opens a netlink socket; must be called inside a tokio runtime.
    pub fn connect() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().context("netlink socket")?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Every link in the namespace.
    pub async fn links(&self) -> Result<Vec<LinkSummary>> {
        let msgs: Vec<LinkMessage> = self.handle.link().get().execute().try_collect().await.context("list links")?;
        Ok(msgs.iter().map(summary).collect())
    }

    /// A link by name.
    pub async fn link(&self, name: &str) -> Result<Option<LinkSummary>> {
        Ok(self.links().await?.into_iter().find(|l| l.name == name))
    }

    async fn index(&self, name: &str) -> Result<u32> {
        self.link(name).await?.map(|l| l.index).ok_or_else(|| anyhow!("no link named {name}"))
    }

    /// Creates a bridge (up) unless it exists.
    pub async fn ensure_bridge(&self, name: &str) -> Result<()> {
        if self.link(name).await?.is_none() {
            self.handle
                .link()
                .add(LinkBridge::new(name).up().build())
                .execute()
                .await
                .with_context(|| format!("create bridge {name}"))?;
        }
        self.set_up(name).await
    }

    /// Creates a veth pair.
    pub async fn add_veth(&self, name: &str, peer: &str) -> Result<()> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .with_context(|| format!("create veth {name}/{peer}"))
    }

    /// Moves a link into the namespace given by fd.
    pub async fn move_to_netns(&self, name: &str, ns_fd: RawFd) -> Result<()> {
        let idx = self.index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(idx).setns_by_fd(ns_fd).build())
            .execute()
            .await
            .with_context(|| format!("move {name} to another namespace"))
    }

    /// Sets a link up.
    pub async fn set_up(&self, name: &str) -> Result<()> {
        let idx = self.index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .with_context(|| format!("set {name} up"))
    }

    /// Sets a link down.
    pub async fn set_down(&self, name: &str) -> Result<()> {
        let idx = self.index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(idx).down().build())
            .execute()
            .await
            .with_context(|| format!("set {name} down"))
    }

    /// Attaches a link to a bridge.
    pub async fn set_controller(&self, name: &str, bridge: &str) -> Result<()> {
        let idx = self.index(name).await?;
        let br = self.index(bridge).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(idx).controller(br).build())
            .execute()
            .await
            .with_context(|| format!("attach {name} to bridge {bridge}"))
    }

    /// Adds an address to a link.
    pub async fn add_address(&self, name: &str, ip: IpAddr, prefix: u8) -> Result<()> {
        let idx = self.index(name).await?;
        match self.handle.address().add(idx, ip, prefix).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(anyhow!(e).context(format!("add {ip}/{prefix} to {name}"))),
        }
    }

    /// Deletes a link; succeeds if it does not exist.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let Some(l) = self.link(name).await? else { return Ok(()) };
        let mut links = self.handle.link();
        match links.del(l.index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            Err(e) => Err(anyhow!(e).context(format!("delete {name}"))),
        }
    }
}
