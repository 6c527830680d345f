//! [`CreateCommand`]: a guest to define on a host (and maybe start).
use anyhow::{anyhow, bail, Result};
use vmove_model::{parse_size_mib, BootSource, Cluster, DesiredState, DiskSpec, GuestSpec, NicSpec};

use crate::args::CreateArgs;

/// A guest to create: its definition (host, resources, NICs with their MACs, disks) and
/// whether to start it once defined.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateCommand {
    /// The definition; `desired` says whether it is to run.
    pub spec: GuestSpec,
}

impl CreateCommand {
    /// Whether the guest starts once defined.
    pub fn start(&self) -> bool {
        self.spec.desired == DesiredState::Running
    }
}

/// A MAC for a guest's NIC, from the cluster and guest names, unique in the cluster and
/// among `taken` (the guest's other NICs).
pub fn guest_mac(c: &Cluster, guest: &str, nic: usize, taken: &[String]) -> String {
    let mut salt = 0u32;
    loop {
        let mut h: u32 = 0x811c_9dc5;
        for b in format!("{}/{guest}/{nic}/{salt}", c.cluster.name).bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        let mac = format!("52:54:00:{:02x}:{:02x}:{:02x}", (h >> 16) & 0xff, (h >> 8) & 0xff, h & 0xff);
        if !taken.iter().any(|t| t.eq_ignore_ascii_case(&mac)) && !c.guests.iter().any(|g| g.macs().any(|m| m.eq_ignore_ascii_case(&mac))) {
            return mac;
        }
        salt += 1;
    }
}

fn parse_nic(c: &Cluster, guest: &str, idx: usize, s: &str, taken: &[String]) -> Result<NicSpec> {
    let mut parts = s.split(',');
    let network = parts.next().filter(|n| !n.is_empty()).ok_or_else(|| anyhow!("--nic {s:?}: expected NET[,ip=A/P][,mac=M]"))?;
    if c.network(network).is_none() {
        bail!("--nic {s:?}: no network named {network} in the cluster file");
    }
    let (mut ip, mut mac) = (None, None);
    for p in parts {
        match p.split_once('=') {
            Some(("ip", v)) => {
                let (addr, prefix) = v.split_once('/').ok_or_else(|| anyhow!("--nic {s:?}: ip needs a prefix, e.g. 192.0.2.10/24"))?;
                addr.parse::<std::net::Ipv4Addr>().map_err(|_| anyhow!("--nic {s:?}: {addr:?} is not an IPv4 address"))?;
                prefix.parse::<u8>().ok().filter(|p| *p <= 32).ok_or_else(|| anyhow!("--nic {s:?}: bad prefix {prefix:?}"))?;
                ip = Some(v.to_string());
            }
            Some(("mac", v)) => mac = Some(v.to_ascii_lowercase()),
            _ => bail!("--nic {s:?}: unknown option {p:?} (expected ip=A/P or mac=M)"),
        }
    }
    let mac = mac.unwrap_or_else(|| guest_mac(c, guest, idx, taken));
    Ok(NicSpec { network: network.to_string(), mac, ip })
}

fn parse_disk(c: &Cluster, s: &str) -> Result<DiskSpec> {
    let (vol, size) = match s.rsplit_once(':') {
        Some((v, sz)) => (v, Some(parse_size_mib(sz).map_err(|e| anyhow!("--disk {s:?}: {e}"))?)),
        None => (s, None),
    };
    let (pool, volume) = vol.split_once('/').ok_or_else(|| anyhow!("--disk {s:?}: expected POOL/VOLUME[:SIZE]"))?;
    if c.pool(pool).is_none() {
        bail!("--disk {s:?}: no storage pool named {pool} in the cluster file");
    }
    Ok(DiskSpec { pool: pool.into(), volume: volume.into(), size_mib: size })
}

impl CreateArgs {
    /// Checks the arguments against the cluster file (host, free name, networks, pools,
    /// sizes) and makes the definition; NICs without `mac=` get one from [`guest_mac`].
    pub fn into_command(self, cluster: &Cluster) -> Result<CreateCommand> {
        let a = self;
        if cluster.host(&a.host).is_none() {
            bail!("no host named {} in {}", a.host, cluster.path.display());
        }
        if let Some(g) = cluster.guest(&a.name) {
            bail!("guest name {} is already in use (on {})", a.name, g.host);
        }
        let memory_mib = parse_size_mib(&a.memory).map_err(|e| anyhow!("--memory: {e}"))?;
        if a.vcpus == 0 {
            bail!("--vcpus must be at least 1");
        }
        let boot = match a.image.as_str() {
            "lab" => BootSource::Lab { dirty_mb_s: a.dirty_rate, wss_mib: a.wss, disk_mb_s: a.disk_rate },
            "disk" => BootSource::Disk,
            other => bail!("--image {other:?}: expected lab or disk"),
        };
        let mut nics = Vec::new();
        for (i, n) in a.nic.iter().enumerate() {
            let taken: Vec<String> = nics.iter().map(|x: &NicSpec| x.mac.clone()).collect();
            nics.push(parse_nic(cluster, &a.name, i, n, &taken)?);
        }
        let disks = a.disk.iter().map(|d| parse_disk(cluster, d)).collect::<Result<Vec<_>>>()?;
        if a.disk_rate > 0 && (disks.is_empty() || a.image != "lab") {
            bail!("--disk-rate writes onto a lab guest's first disk: give it a --disk");
        }
        if boot == BootSource::Disk && disks.is_empty() {
            bail!("--image disk needs a --disk to boot from");
        }
        if let Some(g) = a.group.as_deref().filter(|g| !vmove_model::valid_name(g)) {
            bail!("--group {g:?}: use 1 to 64 letters, digits, '-', '_', '.'");
        }
        let spec = GuestSpec {
            name: a.name,
            host: a.host,
            vcpus: a.vcpus,
            memory_mib,
            cpu_model: a.cpu_model,
            boot,
            desired: if a.start { DesiredState::Running } else { DesiredState::Stopped },
            nics,
            disks,
            console_port: None,
            group: a.group,
        };
        Ok(CreateCommand { spec })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command, GuestCmd};
    use crate::testutil::cluster;

    fn from_args(argv: &[&str]) -> Result<CreateCommand> {
        let argv: Vec<&str> = ["vmove", "guest", "create"].iter().chain(argv).copied().collect();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Guest(GuestCmd::Create(a)) => a.into_command(&cluster()),
            other => panic!("not guest create: {other:?}"),
        }
    }

    #[test]
    fn arguments_make_the_definition() {
        let c = from_args(&[
            "vm2", "--host", "host2", "--memory", "1G", "--vcpus", "2", "--nic", "lab-net,ip=192.0.2.10/24", "--nic",
            "lab-net,mac=52:54:00:AA:00:02", "--disk", "shared/vm2.img:64M", "--dirty-rate", "20", "--wss", "128", "--start",
            "--group", "db",
        ])
        .unwrap();
        let mac0 = guest_mac(&cluster(), "vm2", 0, &[]);
        assert_eq!(
            c.spec,
            GuestSpec {
                name: "vm2".into(),
                host: "host2".into(),
                vcpus: 2,
                memory_mib: 1024,
                cpu_model: "qemu64".into(),
                boot: BootSource::Lab { dirty_mb_s: 20, wss_mib: 128, disk_mb_s: 0 },
                desired: DesiredState::Running,
                nics: vec![
                    NicSpec { network: "lab-net".into(), mac: mac0, ip: Some("192.0.2.10/24".into()) },
                    NicSpec { network: "lab-net".into(), mac: "52:54:00:aa:00:02".into(), ip: None },
                ],
                disks: vec![DiskSpec { pool: "shared".into(), volume: "vm2.img".into(), size_mib: Some(64) }],
                console_port: None,
                group: Some("db".into()),
            }
        );
        assert!(c.start());
        assert!(!from_args(&["vm2", "--host", "host1"]).unwrap().start());
    }

    #[test]
    fn bad_arguments_are_refused() {
        let e = |argv: &[&str]| from_args(argv).unwrap_err().to_string();
        assert_eq!(e(&["vm2", "--host", "host9"]), "no host named host9 in /lab/cluster.toml");
        assert_eq!(e(&["vm1", "--host", "host2"]), "guest name vm1 is already in use (on host1)");
        assert_eq!(e(&["vm2", "--host", "host1", "--vcpus", "0"]), "--vcpus must be at least 1");
        assert_eq!(e(&["vm2", "--host", "host1", "--image", "disk"]), "--image disk needs a --disk to boot from");
        assert_eq!(e(&["vm2", "--host", "host1", "--nic", "wan"]), "--nic \"wan\": no network named wan in the cluster file");
        assert_eq!(e(&["vm2", "--host", "host1", "--disk", "x.img"]), "--disk \"x.img\": expected POOL/VOLUME[:SIZE]");
        assert!(e(&["vm2", "--host", "host1", "--group", "a b"]).starts_with("--group \"a b\""));
    }

    #[test]
    fn generated_macs_are_unique() {
        let c = cluster();
        let a = guest_mac(&c, "vm2", 0, &[]);
        assert!(a.starts_with("52:54:00:"));
        assert_ne!(guest_mac(&c, "vm2", 0, std::slice::from_ref(&a)), a);
        assert_eq!(guest_mac(&c, "vm2", 0, &[]), a, "stable");
    }
}
