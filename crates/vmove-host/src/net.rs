//! Links over rtnetlink: bridges, veths, addresses. A [`Netlink`] works in the network
//! namespace of the thread that created it.
use std::net::IpAddr;
use std::os::fd::RawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth};

/// Why a netlink operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The runtime for netlink work could not be made.
    #[error("tokio runtime")]
    Runtime(#[source] std::io::Error),
    /// The netlink socket could not be opened.
    #[error("netlink socket")]
    Socket(#[source] std::io::Error),
    /// No link of that name in the namespace.
    #[error("no link named {0}")]
    NoLink(String),
    /// The kernel refused a request (`list links`, `create bridge br0`, `set tap0 up`, ...).
    #[error("{what}")]
    Request {
        /// The request.
        what: String,
        /// The cause.
        #[source]
        source: rtnetlink::Error,
    },
}

type Result<T> = std::result::Result<T, NetlinkError>;

fn failed(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

/// A single-threaded runtime for netlink work on a dedicated thread.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(NetlinkError::Runtime)
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
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Every link in the namespace.
    pub async fn links(&self) -> Result<Vec<LinkSummary>> {
        let msgs: Vec<LinkMessage> = self.handle.link().get().execute().try_collect().await.map_err(failed("list links"))?;
        Ok(msgs.iter().map(summary).collect())
    }

    /// A link by name.
    pub async fn link(&self, name: &str) -> Result<Option<LinkSummary>> {
        Ok(self.links().await?.into_iter().find(|l| l.name == name))
    }

    async fn index(&self, name: &str) -> Result<u32> {
        self.link(name).await?.map(|l| l.index).ok_or_else(|| NetlinkError::NoLink(name.to_string()))
    }

    /// Creates a bridge (up) unless it exists.
    pub async fn ensure_bridge(&self, name: &str) -> Result<()> {
        if self.link(name).await?.is_none() {
            self.handle
                .link()
                .add(LinkBridge::new(name).up().build())
                .execute()
                .await
                .map_err(failed(format!("create bridge {name}")))?;
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
            .map_err(failed(format!("create veth {name}/{peer}")))
    }

    /// Moves a link into the namespace given by fd.
    pub async fn move_to_netns(&self, name: &str, ns_fd: RawFd) -> Result<()> {
        let idx = self.index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(idx).setns_by_fd(ns_fd).build())
            .execute()
            .await
            .map_err(failed(format!("move {name} to another namespace")))
    }

    /// Sets a link up.
    pub async fn set_up(&self, name: &str) -> Result<()> {
        let idx = self.index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(failed(format!("set {name} up")))
    }

    /// Sets a link down.
    pub async fn set_down(&self, name: &str) -> Result<()> {
        let idx = self.index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(idx).down().build())
            .execute()
            .await
            .map_err(failed(format!("set {name} down")))
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
            .map_err(failed(format!("attach {name} to bridge {bridge}")))
    }

    /// Adds an address to a link.
    pub async fn add_address(&self, name: &str, ip: IpAddr, prefix: u8) -> Result<()> {
        let idx = self.index(name).await?;
        match self.handle.address().add(idx, ip, prefix).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(failed(format!("add {ip}/{prefix} to {name}"))(e)),
        }
    }

    /// Deletes a link; succeeds if it does not exist.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let Some(l) = self.link(name).await? else { return Ok(()) };
        let mut links = self.handle.link();
        match links.del(l.index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            Err(e) => Err(failed(format!("delete {name}"))(e)),
        }
    }
}
