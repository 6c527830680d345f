//! The lab: an embedded cluster on one machine (network namespaces as hosts), and the lab
//! guest image.
//!
//! Layout of a lab named `<lab>` (the last component of its directory), in slot `s`:
//!
//! ```text
//!  root ns ── vmv<s> 198.51.100.(16s+1)/28
//!               │
//!  <lab>-switch: bridge "mgmt" ── h<i>m ══ mgmt0 198.51.100.(16s+1+i)/28 in <lab>-host<i>
//!                bridge "fabric" ─ h<i>f ══ uplink0 ⊂ bridge "lab-net" in <lab>-host<i>
//!                                └ cl0  ══ eth0 192.0.2.2/24 in <lab>-client
//! ```
//! With `--store etcd --etcd-members N`, etcd member `j` runs in `<lab>-etcd<j>`, its
//! `mgmt0` on the bridge "mgmt" at 198.51.100.(16s+15-j)/28 ([`etcd`]).
//!
//! Guests' taps join `lab-net` on their host, so all guests and the client share one L2
//! network. Deleting the namespaces removes every link; `down` also kills every process
//! left inside them.
#![warn(missing_docs)]

pub mod etcd;
pub mod image;
pub mod lab;
pub mod probe;
mod topology;

pub use lab::{down, up, LabInfo, LabOptions};
