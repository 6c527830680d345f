//! The kernel command line of the lab guest image (direct kernel boot).
//!
//! The agent boots lab guests (`BootSource::Lab`) with QEMU's `-kernel/-initrd/-append`;
//! the image itself is built by `vmove-lab`. The contract, read by `vmove-guest`:
//! `console=ttyS0 quiet vmove.name=<name> [vmove.ip=<ipv4>/<prefix>] vmove.dirty=<MB/s> vmove.wss=<MiB> [vmove.disk=<MB/s>]`.

/// Options for one boot of the lab guest, turned into a kernel command line by [`cmdline`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOpts {
    /// Guest name (printed in `VMOVE READY <name>`, served over HTTP). No whitespace.
    pub name: String,
    /// `<ipv4>/<prefix>` for eth0; None: eth0 up without an address.
    pub ip: Option<String>,
    /// Memory dirty rate in MB/s (0: idle).
    pub dirty_mb_s: u32,
    /// Working set of the memory dirtier, MiB.
    pub wss_mib: u32,
    /// Write rate onto the data disk, MB/s (0: the disk log only).
    pub disk_mb_s: u32,
}

impl Default for BootOpts {
    fn default() -> Self {
        BootOpts { name: "guest".to_string(), ip: None, dirty_mb_s: 0, wss_mib: 64, disk_mb_s: 0 }
    }
}

/// The kernel command line for one boot.
pub fn cmdline(o: &BootOpts) -> String {
    // `quiet`: kernel messages (written to the UART directly) could otherwise land in the
    // middle of the guest's status lines; warnings and errors still show.
    let mut s = format!("console=ttyS0 quiet vmove.name={}", o.name);
    if let Some(ip) = &o.ip {
        s.push_str(&format!(" vmove.ip={ip}"));
    }
    s.push_str(&format!(" vmove.dirty={} vmove.wss={}", o.dirty_mb_s, o.wss_mib));
    if o.disk_mb_s > 0 {
        s.push_str(&format!(" vmove.disk={}", o.disk_mb_s));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_contract() {
        let o = BootOpts {
            name: "vm1".to_string(),
            ip: Some("10.0.2.15/24".to_string()),
            dirty_mb_s: 20,
            wss_mib: 128,
            disk_mb_s: 0,
        };
        assert_eq!(
            cmdline(&o),
            "console=ttyS0 quiet vmove.name=vm1 vmove.ip=10.0.2.15/24 vmove.dirty=20 vmove.wss=128"
        );
        let o = BootOpts { disk_mb_s: 5, ..o };
        assert!(cmdline(&o).ends_with(" vmove.wss=128 vmove.disk=5"), "{}", cmdline(&o));
        let o = BootOpts { name: "idle".to_string(), ..BootOpts::default() };
        assert_eq!(cmdline(&o), "console=ttyS0 quiet vmove.name=idle vmove.dirty=0 vmove.wss=64");
    }
}
