//! Host operations: network namespaces, bridges and veths over netlink, taps through the
//! tun ioctl, QEMU command lines and processes, and the lab guest's kernel command line.
//!
//! Rule: `setns` only changes the calling thread, so code that must run inside another
//! namespace runs on a dedicated OS thread ([`netns::run_in`]), never on a tokio worker.
#![warn(missing_docs)]

pub mod boot;
pub mod frames;
pub mod net;
pub mod netns;
pub mod proc;
pub mod qemu;
pub mod qemu_probe;
pub mod tap;
