//! Persistent tap devices, made with the tun ioctl (rtnetlink cannot create them).
use std::os::fd::AsRawFd;

/// Why a tap could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Not a valid interface name.
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
    /// `/dev/net/tun` could not be opened.
    #[error("open /dev/net/tun")]
    Open(#[source] std::io::Error),
    /// The kernel refused the ioctl.
    #[error("{op} {name}")]
    Ioctl {
        /// `TUNSETIFF` or `TUNSETPERSIST`.
        op: &'static str,
        /// The interface.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, TapError>;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str) -> Result<IfReq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(TapError::InvalidName(name.to_string()));
    }
    let mut r = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, _pad: [0; 22] };
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    Ok(r)
}

fn set_persist(name: &str, persist: bool) -> Result<()> {
    let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").map_err(TapError::Open)?;
    let mut r = ifreq(name)?;
    // SAFETY: `r` is a properly sized, initialised `struct ifreq` that outlives the call, and
    // the fd is a valid open /dev/net/tun handle.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut r as *mut IfReq) };
    if rc < 0 {
        let source = std::io::Error::last_os_error();
        return Err(TapError::Ioctl { op: "TUNSETIFF", name: name.to_string(), source });
    }
    // SAFETY: TUNSETPERSIST takes an integer argument; the fd is valid.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETPERSIST, libc::c_ulong::from(persist)) };
    if rc < 0 {
        let source = std::io::Error::last_os_error();
        return Err(TapError::Ioctl { op: "TUNSETPERSIST", name: name.to_string(), source });
    }
    Ok(())
}

/// Whether a link of that name exists in the calling thread's network namespace.
///
/// (Not `/sys/class/net`: an agent in a network namespace but the root mount namespace
/// sees the root namespace's links there.)
pub fn exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

/// Creates a persistent tap in the calling thread's namespace (no-op if it exists).
pub fn create(name: &str) -> Result<()> {
    if exists(name) {
        return Ok(());
    }
    set_persist(name, true)
}

/// Removes a persistent tap (no-op if it does not exist).
pub fn delete(name: &str) -> Result<()> {
    if !exists(name) {
        return Ok(());
    }
    set_persist(name, false)
}

/// A stable tap name for a guest's NIC: `vt` + 8 hex digits of the guest name's hash + index.
pub fn tap_name(guest: &str, nic_index: usize) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in guest.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("vt{h:08x}n{nic_index}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn tap_names_fit_ifnamsiz_and_differ() {
        let a = super::tap_name("vm1", 0);
        assert!(a.len() < libc::IFNAMSIZ);
        assert_ne!(a, super::tap_name("vm2", 0));
        assert_ne!(a, super::tap_name("vm1", 1));
        assert_eq!(a, super::tap_name("vm1", 0));
    }

    #[test]
    fn names_longer_than_ifnamsiz_are_refused() {
        let Err(e) = super::ifreq("a-name-far-too-long-for-linux") else { panic!("accepted") };
        assert_eq!(e.to_string(), "invalid interface name \"a-name-far-too-long-for-linux\"");
    }
}
