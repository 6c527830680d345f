//! The key layout (see the [crate docs](crate)). Every function returns a key of the
//! store's key rules, given names that follow them (host, guest, pool and volume names do).

/// The cluster's definition.
pub const CLUSTER_META: &str = "cluster/meta";
/// The prefix of guest definitions.
pub const GUESTS: &str = "cluster/guests/";
/// The prefix of membership keys.
pub const MEMBERS: &str = "members/";
/// The prefix of guest ownership keys.
pub const OWNERS: &str = "owners/";
/// The prefix of migration claims.
pub const MIGRATIONS: &str = "migrations/";
/// The prefix of the job index.
pub const JOBS: &str = "jobs/";
/// The prefix of drain and evacuation records (`vmove host drain|evacuate`).
pub const DRAINS: &str = "drains/";
/// The prefix of the keys naming the process that runs a drain (attached to its lease).
pub const DRAIN_RUNNERS: &str = "drain-runners/";

/// A guest's definition and placement.
pub fn guest(name: &str) -> String {
    format!("{GUESTS}{name}")
}

/// A host's membership.
pub fn member(host: &str) -> String {
    format!("{MEMBERS}{host}")
}

/// The prefix under which the ownership of guests is kept (a lease per guest).
pub fn owners() -> &'static str {
    OWNERS
}

/// The prefix under which a pool's volume leases are kept.
pub fn volume_leases(pool: &str) -> String {
    format!("leases/{pool}/")
}

/// The claim of the migration of a guest.
pub fn migration(guest: &str) -> String {
    format!("{MIGRATIONS}{guest}")
}

/// A job in the index.
pub fn job(id: &str) -> String {
    format!("{JOBS}{id}")
}

/// A drain's record.
pub fn drain(id: &str) -> String {
    format!("{DRAINS}{id}")
}

/// The key of the process that runs a drain.
pub fn drain_runner(id: &str) -> String {
    format!("{DRAIN_RUNNERS}{id}")
}

/// The sub-namespace of a host's own state, relative to the cluster's namespace.
pub fn host_namespace(host: &str) -> String {
    format!("hosts/{host}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_store_rules() {
        for k in [guest("vm1"), member("host1"), migration("vm1"), job("host2-3"), drain("drain-host1-2"), drain_runner("evacuate-host3-1"), CLUSTER_META.to_string()] {
            assert!(vmove_store::key::validate_key(&k).is_ok(), "{k}");
        }
        for p in [GUESTS, MEMBERS, OWNERS, MIGRATIONS, JOBS, DRAINS, DRAIN_RUNNERS, &volume_leases("shared")] {
            assert!(vmove_store::key::validate_prefix(p).is_ok(), "{p}");
        }
        assert_eq!(host_namespace("host1"), "hosts/host1/");
    }
}
