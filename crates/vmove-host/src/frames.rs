//! When a guest's frames leave it: a packet socket on the guest's tap records the kernel
//! timestamp of every frame the guest sends (it arrives on the tap's host side as an
//! incoming packet). A live migration uses it to see the outage the way the network does:
//! the guest's last frame on the source, and its first frame (and the announce's RARP) on
//! the target.
//!
//! It also keeps copies of the frames sent *to* the guest (the last [`CARRY_BYTES`] worth):
//! those that reach the source after its vCPUs stopped would be lost with the source's tap,
//! so the migration carries them to the target, which hands them to the guest there
//! ([`inject`]). Each copy keeps the frame's virtio-net header: a frame for the guest is
//! usually still waiting for its TCP or UDP checksum (the sender offloaded it, and the
//! guest's NIC finishes it), so its bytes alone would reach the guest with a wrong checksum
//! and be dropped there; with the header, the target's tap hands it on exactly as the
//! source's would have.
//!
//! The watcher runs on its own OS thread (packet sockets are per namespace, and the agent
//! process already lives in its host's namespace) and keeps the last [`KEEP`] frames.
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{
    bind, recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, LinkAddr, MsgFlags, SockFlag,
    SockProtocol, SockType,
};

/// How many frames are kept.
pub const KEEP: usize = 8192;

/// At most this many bytes of frames sent to the guest are kept for carrying.
pub const CARRY_BYTES: usize = 512 * 1024;

/// The length of a virtio-net header (`struct virtio_net_hdr`): flags, GSO type, header
/// length, GSO size, checksum start and offset.
pub const VNET_HDR_LEN: usize = 10;

/// `PACKET_VNET_HDR`: a packet socket reads and writes each frame after its virtio-net header.
const PACKET_VNET_HDR: libc::c_int = 15;

/// The RARP ethertype (QEMU's `announce-self`).
pub const ETH_P_RARP: u16 = 0x8035;

/// A frame the guest sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Kernel receive time, unix µs.
    pub at_us: u64,
    /// Ethertype (or 802.3 length).
    pub ethertype: u16,
}

impl Frame {
    /// Whether this is the announce's RARP (sent by QEMU, not by the guest).
    pub fn is_rarp(&self) -> bool {
        self.ethertype == ETH_P_RARP
    }
}

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// No such interface.
    #[error("interface {0} not found")]
    NoInterface(String),
    /// The packet socket could not be set up.
    #[error("packet socket on {iface}: {step}")]
    Socket {
        /// Interface.
        iface: String,
        /// What failed.
        step: &'static str,
        /// Cause.
        #[source]
        source: nix::Error,
    },
}

/// A frame sent to the guest, kept whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToGuest {
    /// Kernel transmit time, unix µs.
    pub at_us: u64,
    /// Its virtio-net header (checksum still to be done, segmentation), as the tap had it.
    pub vnet_hdr: [u8; VNET_HDR_LEN],
    /// The Ethernet frame.
    pub bytes: Vec<u8>,
}

impl ToGuest {
    /// The header and the frame, as [`inject`] takes them.
    pub fn with_header(&self) -> Vec<u8> {
        [&self.vnet_hdr[..], &self.bytes].concat()
    }
}

/// Sets `PACKET_VNET_HDR` on a packet socket.
fn vnet_headers(fd: &OwnedFd) -> nix::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket, and a c_int option value of the length given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_VNET_HDR,
            std::ptr::addr_of!(on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(nix::Error::last())
    }
}

#[derive(Default)]
struct Log {
    frames: VecDeque<Frame>,
    to_guest: VecDeque<ToGuest>,
    to_guest_bytes: usize,
}

/// A running watch on one interface.
pub struct FrameWatch {
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FrameWatch {
    /// Starts watching the frames that arrive on `iface` (from the guest, on a tap).
    pub fn start(iface: &str) -> Result<FrameWatch, FrameError> {
        let idx = nix::net::if_::if_nametoindex(iface).map_err(|_| FrameError::NoInterface(iface.to_string()))?;
        let err = |step| move |source| FrameError::Socket { iface: iface.to_string(), step, source };
        // ETH_P_ALL in network byte order.
        let proto = SockProtocol::EthAll;
        let fd: OwnedFd = socket(AddressFamily::Packet, SockType::Raw, SockFlag::SOCK_CLOEXEC, proto).map_err(err("socket"))?;
        setsockopt(&fd, sockopt::ReceiveTimestamp, &true).map_err(err("SO_TIMESTAMP"))?;
        vnet_headers(&fd).map_err(err("PACKET_VNET_HDR"))?;
        let tv = nix::sys::time::TimeVal::new(0, 100_000);
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(err("SO_RCVTIMEO"))?;
        let addr = link_addr(idx).ok_or(FrameError::Socket { iface: iface.to_string(), step: "sockaddr_ll", source: nix::Error::EINVAL })?;
        bind(fd.as_raw_fd(), &addr).map_err(err("bind"))?;
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (log.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("frames-{iface}"))
            .spawn(move || watch(fd, f, s))
            .map_err(|e| FrameError::Socket { iface: iface.to_string(), step: "thread", source: nix::Error::from_raw(e.raw_os_error().unwrap_or(0)) })?;
        Ok(FrameWatch { log, stop, thread: Some(thread) })
    }

    /// The frames the guest sent so far, oldest first.
    pub fn frames(&self) -> Vec<Frame> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).frames.iter().copied().collect()
    }

    /// Copies of the frames sent to the guest at or after `t_us`, oldest first.
    pub fn to_guest_since(&self, t_us: u64) -> Vec<ToGuest> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).to_guest.iter().filter(|f| f.at_us >= t_us).cloned().collect()
    }

    /// The guest's last frame (not a RARP) at or before `t_us`.
    pub fn last_before(&self, t_us: u64) -> Option<Frame> {
        self.frames().into_iter().rev().find(|f| !f.is_rarp() && f.at_us <= t_us)
    }

    /// The guest's first frame (not a RARP) at or after `t_us`.
    pub fn first_after(&self, t_us: u64) -> Option<Frame> {
        self.frames().into_iter().find(|f| !f.is_rarp() && f.at_us >= t_us)
    }

    /// The first RARP at or after `t_us`.
    pub fn first_rarp_after(&self, t_us: u64) -> Option<Frame> {
        self.frames().into_iter().find(|f| f.is_rarp() && f.at_us >= t_us)
    }

    /// Stops watching; the frames stay readable.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FrameWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

fn link_addr(ifindex: u32) -> Option<LinkAddr> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value, then filled in.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as libc::sa_family_t;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
    let len = u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(0);
    // SAFETY: `sll` is a fully initialised sockaddr_ll and `len` its size.
    unsafe { <LinkAddr as nix::sys::socket::SockaddrLike>::from_raw(std::ptr::addr_of!(sll).cast(), Some(len)) }
}

fn watch(fd: OwnedFd, log: Arc<Mutex<Log>>, stop: Arc<AtomicBool>) {
    // A virtio-net header, then a frame of up to 64 KiB (a segmentation offload's).
    let mut buf = vec![0u8; VNET_HDR_LEN + 65536];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeVal);
    while !stop.load(Ordering::SeqCst) {
        let (outgoing, at_us, n) = {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<LinkAddr>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_TRUNC) {
                Ok(m) => m,
                Err(nix::Error::EAGAIN | nix::Error::EINTR) => continue,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            // Frames the host sends to the guest are "outgoing" on the tap: skip them.
            let outgoing = msg.address.as_ref().is_some_and(|a| a.pkttype() == libc::PACKET_OUTGOING);
            let at_us = msg
                .cmsgs()
                .ok()
                .and_then(|mut c| {
                    c.find_map(|m| match m {
                        ControlMessageOwned::ScmTimestamp(tv) => Some(tv),
                        _ => None,
                    })
                })
                .map(|tv| {
                    u64::try_from(tv.tv_sec()).unwrap_or(0).saturating_mul(1_000_000).saturating_add(u64::try_from(tv.tv_usec()).unwrap_or(0))
                })
                .unwrap_or_else(now_us);
            (outgoing, at_us, msg.bytes)
        };
        if n < VNET_HDR_LEN + 14 || n > buf.len() {
            continue;
        }
        let (hdr, frame) = buf[..n].split_at(VNET_HDR_LEN);
        let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
        if outgoing {
            // To the guest: keep a copy, the oldest go first past CARRY_BYTES.
            l.to_guest_bytes = l.to_guest_bytes.saturating_add(n);
            let mut vnet_hdr = [0u8; VNET_HDR_LEN];
            vnet_hdr.copy_from_slice(hdr);
            l.to_guest.push_back(ToGuest { at_us, vnet_hdr, bytes: frame.to_vec() });
            while l.to_guest_bytes > CARRY_BYTES {
                match l.to_guest.pop_front() {
                    Some(f) => l.to_guest_bytes = l.to_guest_bytes.saturating_sub(VNET_HDR_LEN + f.bytes.len()),
                    None => break,
                }
            }
            continue;
        }
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        if l.frames.len() == KEEP {
            l.frames.pop_front();
        }
        l.frames.push_back(Frame { at_us, ethertype });
    }
}

/// Hands frames to the guest behind `iface` (a tap): sent on the tap, they reach the guest as
/// if they had come from the network. Each is a virtio-net header ([`VNET_HDR_LEN`] bytes,
/// all zero for a complete frame) followed by the frame. Returns how many were sent.
pub fn inject(iface: &str, frames: &[Vec<u8>]) -> Result<usize, FrameError> {
    let idx = nix::net::if_::if_nametoindex(iface).map_err(|_| FrameError::NoInterface(iface.to_string()))?;
    let err = |step| move |source| FrameError::Socket { iface: iface.to_string(), step, source };
    let fd: OwnedFd =
        socket(AddressFamily::Packet, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::EthAll).map_err(err("socket"))?;
    vnet_headers(&fd).map_err(err("PACKET_VNET_HDR"))?;
    let addr = link_addr(idx).ok_or(FrameError::Socket { iface: iface.to_string(), step: "sockaddr_ll", source: nix::Error::EINVAL })?;
    // A frame the kernel refuses (a header that does not fit its frame, say) is skipped.
    let (mut sent, mut refused) = (0, None);
    for f in frames.iter().filter(|f| f.len() >= VNET_HDR_LEN + 14) {
        match nix::sys::socket::sendto(fd.as_raw_fd(), f, &addr, MsgFlags::empty()) {
            Ok(_) => sent += 1,
            Err(e) => refused = Some(e),
        }
    }
    match refused {
        Some(e) if sent == 0 => Err(err("sendto")(e)),
        _ => Ok(sent),
    }
}

/// Now, unix µs.
pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes one Ethernet frame into a tap from the "guest" side (the tap's file).
    fn guest_send(tap: &std::fs::File, ethertype: u16) {
        use std::io::Write;
        // virtio-net header (the taps are made with IFF_VNET_HDR), then the frame.
        let mut f = vec![0u8; 10];
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&[0u8; 46]);
        let mut t = tap;
        t.write_all(&f).expect("write frame");
    }

    /// Reads one frame from the tap's guest side (without its virtio-net header).
    fn read_from_tap(tap: &std::fs::File) -> Option<Vec<u8>> {
        read_with_header(tap).map(|f| f[VNET_HDR_LEN..].to_vec())
    }

    /// Reads one frame from the tap's guest side, with its virtio-net header.
    fn read_with_header(tap: &std::fs::File) -> Option<Vec<u8>> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd { fd: tap.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for an open descriptor.
        let ready = unsafe { libc::poll(&mut pfd, 1, 2000) };
        if ready <= 0 {
            return None;
        }
        let mut buf = vec![0u8; 2048];
        let mut t = tap;
        let n = t.read(&mut buf).ok()?;
        (n > VNET_HDR_LEN).then(|| buf[..n].to_vec())
    }

    fn open_tap(name: &str) -> std::fs::File {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").expect("tun");
        #[repr(C)]
        struct IfReq {
            name: [u8; libc::IFNAMSIZ],
            flags: libc::c_short,
            _pad: [u8; 22],
        }
        let mut r = IfReq { name: [0; libc::IFNAMSIZ], flags: 0x0002 | 0x1000 | 0x4000, _pad: [0; 22] };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: a valid ifreq for TUNSETIFF on an open tun fd.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), 0x4004_54ca, &mut r as *mut IfReq) };
        assert!(rc >= 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        f
    }

    #[derive(Debug)]
    struct TE(#[allow(dead_code)] String);
    impl From<crate::netns::NetnsError> for TE {
        fn from(e: crate::netns::NetnsError) -> TE {
            TE(e.to_string())
        }
    }

    #[test]
    fn frames_from_the_guest_are_timed_and_rarps_told_apart() {
        let ns = format!("vt-frames-{}", std::process::id());
        crate::netns::create(&ns).expect("netns");
        let r = crate::netns::run_in::<_, TE>(&ns, move || {
            crate::tap::create("vtf0").map_err(|e| TE(e.to_string()))?;
            let rt = crate::net::runtime().map_err(|e| TE(e.to_string()))?;
            rt.block_on(async { crate::net::Netlink::connect()?.set_up("vtf0").await })
                .map_err(|e| TE(e.to_string()))?;
            let tap = open_tap("vtf0");
            let mut w = FrameWatch::start("vtf0").map_err(|e| TE(e.to_string()))?;
            let t0 = now_us();
            guest_send(&tap, 0x0800);
            guest_send(&tap, ETH_P_RARP);
            guest_send(&tap, 0x0806);
            // A frame for the guest, handed in on the host side: the guest reads it from
            // its tap, and the watch keeps a copy (to carry it across a migration).
            let mut to_guest = vec![0x52, 0x54, 0, 0, 0, 1, 2, 0, 0, 0, 0, 9, 0x08, 0x00];
            to_guest.extend_from_slice(&[7u8; 50]);
            let n = inject("vtf0", &[[&[0u8; VNET_HDR_LEN][..], &to_guest].concat()]).map_err(|e| TE(e.to_string()))?;
            // (The host's own IPv6 chatter may come first.)
            let got = (0..20).map_while(|_| read_from_tap(&tap)).find(|f| *f == to_guest);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while (w.frames().len() < 3 || w.to_guest_since(t0).is_empty()) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            w.stop();
            let kept = w.to_guest_since(t0).into_iter().map(|f| f.bytes).filter(|b| *b == to_guest).collect::<Vec<_>>();
            Ok((t0, w.frames(), w.first_after(t0), w.first_rarp_after(t0), w.last_before(now_us()), (n, got, kept, to_guest)))
        });
        crate::netns::delete(&ns).expect("delete netns");
        let (t0, frames, first, rarp, last, (n, got, kept, to_guest)) = r.expect("in the namespace");
        assert_eq!(n, 1);
        assert_eq!(got.as_deref(), Some(&to_guest[..]), "the guest received the injected frame");
        assert_eq!(kept, vec![to_guest], "a copy of the frame sent to the guest is kept");
        assert_eq!(frames.iter().map(|f| f.ethertype).collect::<Vec<_>>(), [0x0800, ETH_P_RARP, 0x0806], "{frames:?}");
        assert!(frames.iter().all(|f| f.at_us >= t0.saturating_sub(1000)), "kernel timestamps: {frames:?} vs {t0}");
        assert_eq!(first.map(|f| f.ethertype), Some(0x0800));
        assert_eq!(rarp.map(|f| f.ethertype), Some(ETH_P_RARP));
        assert_eq!(last.map(|f| f.ethertype), Some(0x0806), "the RARP is never the guest's frame");
    }

    /// A UDP datagram whose checksum the sender left to the NIC (virtio-net header
    /// NEEDS_CSUM, the field holding only the pseudo-header sum), as frames for a guest on a
    /// tap usually are.
    fn partial_checksum_frame() -> Vec<u8> {
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
        hdr[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: the UDP header
        hdr[8..10].copy_from_slice(&6u16.to_le_bytes()); // csum_offset: its checksum
        let mut f = vec![0x52, 0x54, 0, 0, 0, 1, 2, 0, 0, 0, 0, 9, 0x08, 0x00];
        // IPv4, 20 + 8 + 8 bytes, UDP, 192.0.2.2 → 192.0.2.50 (header checksum left 0: not checked here).
        f.extend_from_slice(&[0x45, 0, 0, 36, 0, 1, 0x40, 0, 64, 17, 0, 0, 192, 0, 2, 2, 192, 0, 2, 50]);
        f.extend_from_slice(&[0xc3, 0x50, 0, 7, 0, 16, 0x12, 0x34]);
        f.extend_from_slice(&42u64.to_be_bytes());
        [&hdr[..], &f].concat()
    }

    #[test]
    fn frames_for_the_guest_keep_their_virtio_header_through_watch_and_inject() {
        let ns = format!("vt-vnet-{}", std::process::id());
        crate::netns::create(&ns).expect("netns");
        let r = crate::netns::run_in::<_, TE>(&ns, move || {
            crate::tap::create("vtv0").map_err(|e| TE(e.to_string()))?;
            let rt = crate::net::runtime().map_err(|e| TE(e.to_string()))?;
            rt.block_on(async { crate::net::Netlink::connect()?.set_up("vtv0").await }).map_err(|e| TE(e.to_string()))?;
            let tap = open_tap("vtv0");
            // As QEMU does for a virtio-net NIC: the guest finishes checksums (TUNSETOFFLOAD, TUN_F_CSUM).
            {
                use std::os::fd::AsRawFd;
                // SAFETY: TUNSETOFFLOAD with an integer argument on an attached tun fd.
                let rc = unsafe { libc::ioctl(tap.as_raw_fd(), 0x4004_54d0, 1 as libc::c_uint) };
                assert!(rc >= 0, "TUNSETOFFLOAD: {}", std::io::Error::last_os_error());
            }
            let mut w = FrameWatch::start("vtv0").map_err(|e| TE(e.to_string()))?;
            let t0 = now_us();
            let sent = partial_checksum_frame();
            // A header that claims a checksum beyond its frame is refused by the kernel and skipped.
            let mut bad = sent.clone();
            bad[6..8].copy_from_slice(&4000u16.to_le_bytes());
            let n = inject("vtv0", &[bad, sent.clone(), vec![0u8; 12]]).map_err(|e| TE(e.to_string()))?;
            let got = (0..20).map_while(|_| read_with_header(&tap)).find(|f| f[VNET_HDR_LEN..] == sent[VNET_HDR_LEN..]);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while w.to_guest_since(t0).is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            w.stop();
            let kept: Vec<Vec<u8>> = w.to_guest_since(t0).iter().map(ToGuest::with_header).filter(|f| f[VNET_HDR_LEN..] == sent[VNET_HDR_LEN..]).collect();
            Ok((n, got, kept, sent))
        });
        crate::netns::delete(&ns).expect("delete netns");
        let (n, got, kept, sent) = r.expect("in the namespace");
        assert_eq!(n, 1, "the bad frame and the runt are skipped, the good one sent");
        let got = got.expect("the guest side received the frame");
        assert_eq!(got[0] & 1, 1, "the guest is told to finish the checksum (NEEDS_CSUM): {got:?}");
        assert_eq!(&got[6..10], &sent[6..10], "checksum start and offset as sent");
        assert_eq!(kept, vec![sent], "the watch keeps the header with the frame, for the target to inject as is");
    }
}
