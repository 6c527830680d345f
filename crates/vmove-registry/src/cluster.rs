//! The cluster definition in the store: what `vmove` reads instead of the cluster file's
//! guests and hosts when the file says etcd, `cluster import` (seed a store from a file)
//! and `cluster export` (a file from the store).
use vmove_model::{Cluster, GuestSpec};
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
