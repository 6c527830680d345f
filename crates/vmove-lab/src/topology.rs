//! Namespaces and links of a lab.
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use anyhow::{anyhow, Context, Result};
use vmove_host::net::{runtime, Netlink, NetlinkError};
use vmove_host::netns;

/// Labs that can run at once (slots of 198.51.100.0/24, a /28 each).
pub const SLOTS: u8 = 16;
/// Hosts a lab can have (with its etcd members: they share the /28).
pub const MAX_HOSTS: u8 = 13;
/// etcd members a lab can have.
pub const MAX_ETCD: u8 = 5;
/// etcd's client port on a member's address (each member has a namespace of its own, so
/// parallel labs never collide on ports).
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
pub const ETCD_PEER_PORT: u16 = 2380;
/// The guest network's name, and its bridge's name on every host.
pub const GUEST_NET: &str = "lab-net";
/// The client's address on the guest network.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// Names and addresses of one lab.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Lab name.
    pub name: String,
    /// Slot (selects the management subnet and root-side link name).
    pub slot: u8,
    /// Number of hosts.
    pub hosts: u8,
    /// Number of etcd members (0: the file store).
    pub etcd: u8,
}

impl Plan {
    pub fn switch_ns(&self) -> String {
        format!("{}-switch", self.name)
    }
    pub fn client_ns(&self) -> String {
        format!("{}-client", self.name)
    }
    pub fn host_ns(&self, i: u8) -> String {
        format!("{}-host{i}", self.name)
    }
    pub fn host_name(i: u8) -> String {
        format!("host{i}")
    }
    pub fn root_link(&self) -> String {
        format!("vmv{}", self.slot)
    }
    pub fn root_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, 16 * self.slot + 1)
    }
    pub fn host_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, 16 * self.slot + 1 + i)
    }
    /// The namespace of etcd member `j` (1-based).
    pub fn etcd_ns(&self, j: u8) -> String {
        format!("{}-etcd{j}", self.name)
    }
    /// etcd member `j`'s address on the management network: from the top of the /28 down
    /// (16s+14, 16s+13, ...), so hosts (from the bottom up) and members never meet while
    /// hosts + members <= 13.
    pub fn etcd_ip(&self, j: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, 16 * self.slot + 15 - j)
    }
    /// The client URL of etcd member `j`.
    pub fn etcd_client_url(&self, j: u8) -> String {
        format!("https://{}:{ETCD_CLIENT_PORT}", self.etcd_ip(j))
    }
    /// The peer URL of etcd member `j`.
    pub fn etcd_peer_url(&self, j: u8) -> String {
        format!("https://{}:{ETCD_PEER_PORT}", self.etcd_ip(j))
    }
    /// Every namespace of the lab.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.switch_ns(), self.client_ns()];
        v.extend((1..=self.hosts).map(|i| self.host_ns(i)));
        v.extend((1..=self.etcd).map(|j| self.etcd_ns(j)));
        v
    }
}

/// Whether `ns` is one of the namespaces a lab named `lab` makes.
pub fn belongs_to(lab: &str, ns: &str) -> bool {
    let Some(rest) = ns.strip_prefix(lab).and_then(|r| r.strip_prefix('-')) else { return false };
    let numbered = |p: &str| rest.strip_prefix(p).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    rest == "switch" || rest == "client" || numbered("host") || numbered("etcd")
}

fn in_ns<T: Send + 'static, F>(ns: &str, f: impl FnOnce(Netlink) -> F + Send + 'static) -> Result<T>
where
    F: std::future::Future<Output = Result<T, NetlinkError>>,
{
    let ns2 = ns.to_string();
    netns::run_in(ns, move || {
        runtime()?.block_on(async move { f(Netlink::connect()?).await }).with_context(|| format!("in namespace {ns2}"))
    })
}

/// Creates every namespace and link of the lab.
pub fn build(p: &Plan) -> Result<()> {
    for ns in p.namespaces() {
        netns::create(&ns)?;
    }
    let root_fd = netns::open_current()?;
    let mut host_fds = Vec::new();
    for i in 1..=p.hosts {
        host_fds.push(netns::open(&p.host_ns(i))?);
    }
    let client_fd = netns::open(&p.client_ns())?;
    let mut etcd_fds = Vec::new();
    for j in 1..=p.etcd {
        etcd_fds.push(netns::open(&p.etcd_ns(j))?);
    }
    let (root_link, hosts, members) = (p.root_link(), p.hosts, p.etcd);
    let root_raw = root_fd.as_raw_fd();
    let host_raw: Vec<i32> = host_fds.iter().map(|f| f.as_raw_fd()).collect();
    let etcd_raw: Vec<i32> = etcd_fds.iter().map(|f| f.as_raw_fd()).collect();
    let client_raw = client_fd.as_raw_fd();
    in_ns(&p.switch_ns(), move |nl| async move {
        nl.ensure_bridge("mgmt").await?;
        nl.ensure_bridge("fabric").await?;
        nl.add_veth("root", &root_link).await?;
        nl.move_to_netns(&root_link, root_raw).await?;
        attach(&nl, "root", "mgmt").await?;
        for i in 1..=hosts {
            let fd = host_raw[usize::from(i - 1)];
            let (m, f) = (format!("h{i}m"), format!("h{i}f"));
            nl.add_veth(&m, "mgmt0").await?;
            nl.move_to_netns("mgmt0", fd).await?;
            attach(&nl, &m, "mgmt").await?;
            nl.add_veth(&f, "uplink0").await?;
            nl.move_to_netns("uplink0", fd).await?;
            attach(&nl, &f, "fabric").await?;
        }
        for j in 1..=members {
            let m = format!("e{j}m");
            nl.add_veth(&m, "mgmt0").await?;
            nl.move_to_netns("mgmt0", etcd_raw[usize::from(j - 1)]).await?;
            attach(&nl, &m, "mgmt").await?;
        }
        nl.add_veth("cl0", "eth0").await?;
        nl.move_to_netns("eth0", client_raw).await?;
        attach(&nl, "cl0", "fabric").await
    })?;
    drop(host_fds);
    drop(etcd_fds);
    drop(client_fd);
    let (rl, rip) = (p.root_link(), p.root_ip());
    std::thread::spawn(move || {
        runtime()?.block_on(async move {
            let nl = Netlink::connect()?;
            nl.add_address(&rl, IpAddr::V4(rip), 28).await?;
            nl.set_up(&rl).await
        })
    })
    .join()
    .map_err(|_| anyhow!("netlink thread panicked"))??;
    for i in 1..=p.hosts {
        let ip = p.host_ip(i);
        in_ns(&p.host_ns(i), move |nl| async move {
            nl.ensure_bridge(GUEST_NET).await?;
            attach(&nl, "uplink0", GUEST_NET).await?;
            nl.add_address("mgmt0", IpAddr::V4(ip), 28).await?;
            nl.set_up("mgmt0").await
        })?;
    }
    for j in 1..=p.etcd {
        let ip = p.etcd_ip(j);
        in_ns(&p.etcd_ns(j), move |nl| async move {
            nl.add_address("mgmt0", IpAddr::V4(ip), 28).await?;
            nl.set_up("mgmt0").await?;
            nl.set_up("lo").await
        })?;
    }
    in_ns(&p.client_ns(), |nl| async move {
        nl.add_address("eth0", IpAddr::V4(CLIENT_IP), 24).await?;
        nl.set_up("eth0").await
    })
}

async fn attach(nl: &Netlink, link: &str, bridge: &str) -> Result<(), NetlinkError> {
    nl.set_controller(link, bridge).await?;
    nl.set_up(link).await
}

/// Kills every process inside the lab's namespaces, deletes them and the root-side link.
pub fn destroy(lab: &str, root_link: Option<&str>) -> Result<()> {
    let namespaces: Vec<String> = netns::list(lab).into_iter().filter(|n| belongs_to(lab, n)).collect();
    for _ in 0..50 {
        let pids: Vec<i32> = namespaces.iter().flat_map(|n| netns::pids_in(n)).collect();
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            vmove_host::proc::kill9(*pid as u32);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for ns in &namespaces {
        netns::delete(ns)?;
    }
    if let Some(rl) = root_link {
        let rl = rl.to_string();
        std::thread::spawn(move || runtime()?.block_on(async move { Netlink::connect()?.delete(&rl).await }))
            .join()
            .map_err(|_| anyhow!("netlink thread panicked"))??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_ownership_is_exact() {
        assert!(belongs_to("t1", "t1-host1"));
        assert!(belongs_to("t1", "t1-host12"));
        assert!(belongs_to("t1", "t1-switch"));
        assert!(belongs_to("t1", "t1-client"));
        assert!(!belongs_to("t1", "t1-x-host1"));
        assert!(!belongs_to("t1", "t10-host1"));
        assert!(!belongs_to("t1", "t1-host"));
        assert!(belongs_to("t1", "t1-etcd3"));
        assert!(!belongs_to("t1", "t1-etcd"));
    }

    #[test]
    fn addresses_per_slot_do_not_overlap() {
        let a = Plan { name: "a".into(), slot: 0, hosts: 13, etcd: 0 };
        let b = Plan { name: "b".into(), slot: 1, hosts: 13, etcd: 0 };
        assert_eq!(a.root_ip(), Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(a.host_ip(13), Ipv4Addr::new(198, 51, 100, 14));
        assert_eq!(b.root_ip(), Ipv4Addr::new(198, 51, 100, 17));
        let last = Plan { name: "z".into(), slot: SLOTS - 1, hosts: MAX_HOSTS, etcd: 0 };
        assert_eq!(last.host_ip(MAX_HOSTS), Ipv4Addr::new(198, 51, 100, 254));
        // etcd members from the top: 3 hosts and 3 members of slot 1 use .18-.20 and .28-.30.
        let e = Plan { name: "e".into(), slot: 1, hosts: 3, etcd: 3 };
        assert_eq!((e.host_ip(3), e.etcd_ip(3), e.etcd_ip(1)), (Ipv4Addr::new(198, 51, 100, 20), Ipv4Addr::new(198, 51, 100, 28), Ipv4Addr::new(198, 51, 100, 30)));
        let full = Plan { name: "f".into(), slot: 0, hosts: 10, etcd: 3 };
        assert!(full.host_ip(10) < full.etcd_ip(3));
        assert_eq!(e.etcd_client_url(2), "https://198.51.100.29:2379");
        assert_eq!(e.namespaces().last().map(String::as_str), Some("e-etcd3"));
    }
}
