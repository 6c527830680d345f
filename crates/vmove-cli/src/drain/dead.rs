//! Whether a host is dead, before `vmove host evacuate` restarts its guests elsewhere.
//!
//! With the file store nothing expires: a host's volume leases name it until someone takes
//! them over, and a host that is cut off keeps running its guests. Evacuating a host whose
//! guests still run is a split brain (two copies of a guest writing one disk), and the
//! agent dying does not stop its guests (QEMU runs in its own session). So, without
//! `--force`, a host is dead only when, for the whole grace period (default 60 s, as
//! Nova's `service_down_time`):
//!
//! 1. its agent answers no call, and
//! 2. its management address does not even refuse a TCP connection: a refusal (RST) is
//!    the host's kernel answering, i.e. the machine is up with its agent down, and its
//!    guests may well be running.
//!
//! Anything else is not dead ([`Verdict::Alive`]: the agent answers; drain it) or not
//! sure ([`Verdict::Unsure`]: the operator makes sure the guests are down, e.g. powers the
//! machine off, and says so with `--force`). The remaining risk, said in docs/drain.md: a
//! host cut off from the operator's network but not from its storage looks dead here.
//!
//! With etcd (host leases that expire, agents that fence themselves when they cannot renew),
//! [`host_is_dead`] becomes: the host's lease key is gone (`vmove_store::wait_until_gone`),
//! which the server decides and the host has already acted on.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vmove_api::{Health, Request};
use vmove_model::Cluster;

/// The verdict on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Dead: its guests may be started elsewhere. The evidence, one line.
    Dead(String),
    /// Its agent answers: not dead.
    Alive(String),
    /// Not known: the operator must make sure (`--force`).
    Unsure(String),
}

/// What one look at the host found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The agent answered (its version).
    AgentAnswered(String),
    /// The agent did not answer, but its port accepts TCP connections.
    PortOpen,
    /// The connection was refused: the host's kernel answers.
    Refused,
    /// Nothing answered at all (timeout, no route).
    Silent,
}

/// How often the host is looked at during the grace period.
const EVERY: Duration = Duration::from_secs(2);
/// How long one look may take.
const LOOK: Duration = Duration::from_secs(3);

/// The verdict from the looks so far; `None` while the grace period is not over and
/// nothing decided it yet.
pub fn judge(host: &str, addr: &str, probes: &[Probe], waited: Duration, grace: Duration) -> Option<Verdict> {
    for p in probes {
        match p {
            Probe::AgentAnswered(v) => return Some(Verdict::Alive(format!("{host}'s agent answers (version {v}): drain it instead"))),
            Probe::PortOpen => {
                return Some(Verdict::Unsure(format!(
                    "{host}'s agent does not answer, but {addr} accepts connections: something runs there"
                )))
            }
            Probe::Refused => {
                return Some(Verdict::Unsure(format!(
                    "{host}'s agent does not answer, but the machine does ({addr} refuses connections): its guests may still run"
                )))
            }
            Probe::Silent => {}
        }
    }
    (waited >= grace).then(|| {
        Verdict::Dead(format!(
            "nothing at {addr} answered for {}s ({} looks): {host} is powered off or cut off",
            waited.as_secs(),
            probes.len()
        ))
    })
}

/// One look: the agent's health call, then a plain TCP connection to its address.
async fn look(cluster: &Cluster, host: &str, addr: SocketAddr) -> Probe {
    if let Ok(clients) = vmove_api::operator_clients(cluster) {
        if let Some((_, c)) = clients.into_iter().find(|(n, _)| n == host) {
            match c.with_timeout(LOOK).call::<Health>(&Request::Health).await {
                Ok(h) => return Probe::AgentAnswered(h.agent_version),
                // It answered, with an error: it is up.
                Err(e) if !e.is_unreachable() => return Probe::AgentAnswered(format!("unknown: {}", crate::out::one_line(e))),
                Err(_) => {}
            }
        }
    }
    match tokio::time::timeout(LOOK, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Probe::PortOpen,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
        _ => Probe::Silent,
    }
}

/// Whether `host` is dead (see the module documentation), watching it for up to `grace`.
pub async fn host_is_dead(cluster: &Cluster, host: &str, grace: Duration) -> Verdict {
    let Some(entry) = cluster.host(host) else {
        return Verdict::Unsure(format!("no host named {host} in the cluster file"));
    };
    let Ok(addr) = entry.address.parse::<SocketAddr>() else {
        return Verdict::Unsure(format!("{host}'s address {} is not IP:PORT", entry.address));
    };
    let start = Instant::now();
    let mut probes = Vec::new();
    loop {
        probes.push(look(cluster, host, addr).await);
        if let Some(v) = judge(host, &entry.address, &probes, start.elapsed(), grace) {
            return v;
        }
        tokio::time::sleep(EVERY.min(grace.saturating_sub(start.elapsed()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Duration = Duration::from_secs(60);

    #[test]
    fn silence_for_the_whole_grace_period_is_death() {
        let silent = vec![Probe::Silent; 3];
        assert_eq!(judge("host1", "198.51.100.2:7450", &silent, Duration::from_secs(59), G), None, "not before the grace period");
        assert_eq!(
            judge("host1", "198.51.100.2:7450", &silent, Duration::from_secs(61), G),
            Some(Verdict::Dead("nothing at 198.51.100.2:7450 answered for 61s (3 looks): host1 is powered off or cut off".into()))
        );
    }

    #[test]
    fn any_answer_decides_at_once() {
        let a = "198.51.100.2:7450";
        let v = judge("host1", a, &[Probe::Silent, Probe::AgentAnswered("0.1.0".into())], Duration::ZERO, G);
        assert_eq!(v, Some(Verdict::Alive("host1's agent answers (version 0.1.0): drain it instead".into())));
        let v = judge("host1", a, &[Probe::Refused], Duration::ZERO, G);
        assert_eq!(
            v,
            Some(Verdict::Unsure(
                "host1's agent does not answer, but the machine does (198.51.100.2:7450 refuses connections): its guests may \
                 still run"
                    .into()
            ))
        );
        let v = judge("host1", a, &[Probe::Silent, Probe::PortOpen], Duration::from_secs(120), G);
        assert!(matches!(&v, Some(Verdict::Unsure(w)) if w.contains("accepts connections")), "{v:?}");
        // A refusal early in the grace period counts even if later looks are silent.
        let v = judge("host1", a, &[Probe::Refused, Probe::Silent], Duration::from_secs(120), G);
        assert!(matches!(v, Some(Verdict::Unsure(_))), "{v:?}");
    }
}
