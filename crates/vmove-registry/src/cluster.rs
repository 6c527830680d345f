//! The cluster definition in the store: what `vmove` reads instead of the cluster file's
//! guests and hosts when the file says etcd, `cluster import` (seed a store from a file)
//! and `cluster export` (a file from the store).
use vmove_model::{Cluster, GuestSpec, HostEntry};
use vmove_store::{get_record, list_records, put_record, Precondition, StateStore, StoreError};

use crate::keys::{self, CLUSTER_META, GUESTS};
use crate::{ClusterDef, GuestEntry, RegistryError, Result};

/// How [`import`] treats a store that holds a cluster already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Import {
    /// Refuse ([`RegistryError::AlreadyImported`]).
    New,
    /// Replace it: the file's definition, exactly its guests.
    Replace,
}

/// The cluster as the store holds it, with what is the operator's own taken from `file`
/// (TLS files, the store section, the file's path). [`RegistryError::Empty`] if the store
/// holds no cluster.
pub async fn load_cluster(store: &dyn StateStore, file: &Cluster) -> Result<Cluster> {
    let namespace = file.store.namespace_for(&file.cluster.name);
    let Some((def, _)) = get_record::<ClusterDef>(store, CLUSTER_META).await? else {
        return Err(RegistryError::Empty { namespace });
    };
    let guests = list_records::<GuestEntry>(store, GUESTS).await?.into_iter().map(|(_, GuestEntry(g), _)| g).collect();
    let c = Cluster {
        cluster: def.cluster,
        tls: file.tls.clone(),
        policy: def.policy,
        hosts: def.hosts,
        networks: def.networks,
        pools: def.pools,
        store: file.store.clone(),
        guests,
        path: file.path.clone(),
    };
    c.validate().map_err(RegistryError::Invalid)?;
    Ok(c)
}

/// The cluster file an export writes: the store's cluster (see [`load_cluster`]).
pub async fn export(store: &dyn StateStore, file: &Cluster) -> Result<Cluster> {
    load_cluster(store, file).await
}

/// Seeds the store with a cluster file's definition and guests; returns how many guests it
/// wrote.
pub async fn import(store: &dyn StateStore, c: &Cluster, how: Import) -> Result<usize> {
    c.validate().map_err(RegistryError::Invalid)?;
    let def = ClusterDef::of(c);
    let cond = match how {
        Import::New => Precondition::Absent,
        Import::Replace => Precondition::Any,
    };
    match put_record(store, CLUSTER_META, &def, cond).await {
        Ok(_) => {}
        Err(StoreError::Conflict { .. }) => {
            let name = get_record::<ClusterDef>(store, CLUSTER_META).await?.map(|(d, _)| d.cluster.name).unwrap_or_default();
            return Err(RegistryError::AlreadyImported { namespace: c.store.namespace_for(&c.cluster.name), name });
        }
        Err(e) => return Err(e.into()),
    }
    if how == Import::Replace {
        for (key, GuestEntry(g), _) in list_records::<GuestEntry>(store, GUESTS).await? {
            if c.guest(&g.name).is_none() {
                store.delete(&key, Precondition::Any).await?;
            }
        }
    }
    for g in &c.guests {
        put_guest(store, g).await?;
    }
    Ok(c.guests.len())
}

/// Writes a guest's definition (and so its placement).
pub async fn put_guest(store: &dyn StateStore, spec: &GuestSpec) -> Result<()> {
    put_record(store, &keys::guest(&spec.name), &GuestEntry(spec.clone()), Precondition::Any).await?;
    Ok(())
}

/// Removes a guest's definition; returns whether it was there.
pub async fn remove_guest(store: &dyn StateStore, name: &str) -> Result<bool> {
    Ok(store.delete(&keys::guest(name), Precondition::Any).await?)
}

/// How often [`put_host`] and [`remove_host`] retry a compare-and-swap that lost a race.
pub const HOST_UPDATE_ATTEMPTS: u32 = 16;

/// Changes the store's cluster definition with `edit`, compare-and-swap on its revision
/// (two operators adding hosts at once both land); returns what `edit` returned.
async fn update_def<T>(store: &dyn StateStore, namespace: &str, mut edit: impl FnMut(&mut ClusterDef) -> Result<T>) -> Result<T> {
    for _ in 0..HOST_UPDATE_ATTEMPTS {
        let Some((mut def, rev)) = get_record::<ClusterDef>(store, CLUSTER_META).await? else {
            return Err(RegistryError::Empty { namespace: namespace.to_string() });
        };
        let out = edit(&mut def)?;
        match put_record(store, CLUSTER_META, &def, Precondition::Revision(rev)).await {
            Ok(_) => return Ok(out),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(RegistryError::Contended(HOST_UPDATE_ATTEMPTS))
}

/// Adds a host to the store's cluster (or replaces the entry of that name: a reissue).
/// `file` gives the namespace for messages.
pub async fn put_host(store: &dyn StateStore, file: &Cluster, entry: &HostEntry) -> Result<()> {
    let namespace = file.store.namespace_for(&file.cluster.name);
    update_def(store, &namespace, |def| {
        if let Some(other) = def.hosts.iter().find(|h| h.address == entry.address && h.name != entry.name) {
            return Err(RegistryError::Invalid(format!("{} is the address of {} already", entry.address, other.name)));
        }
        match def.hosts.iter_mut().find(|h| h.name == entry.name) {
            Some(h) => *h = entry.clone(),
            None => def.hosts.push(entry.clone()),
        }
        Ok(())
    })
    .await
}

/// Removes a host from the store's cluster; refuses while the store places guests on it
/// ([`RegistryError::HostHasGuests`]). Returns the entry that went.
pub async fn remove_host(store: &dyn StateStore, file: &Cluster, name: &str) -> Result<HostEntry> {
    let namespace = file.store.namespace_for(&file.cluster.name);
    let guests: Vec<String> = list_records::<GuestEntry>(store, GUESTS)
        .await?
        .into_iter()
        .filter(|(_, GuestEntry(g), _)| g.host == name)
        .map(|(_, GuestEntry(g), _)| g.name)
        .collect();
    if !guests.is_empty() {
        return Err(RegistryError::HostHasGuests { host: name.to_string(), guests });
    }
    update_def(store, &namespace, |def| {
        let Some(i) = def.hosts.iter().position(|h| h.name == name) else {
            return Err(RegistryError::NoHost(name.to_string()));
        };
        Ok(def.hosts.remove(i))
    })
    .await
}
