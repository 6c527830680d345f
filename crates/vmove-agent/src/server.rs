//! The mTLS API server: one JSON request line in, one JSON reply line out.
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use vmove_api::pki::CertPair;
use vmove_api::{GuestLog, Health, Reply, Request, Role};
use vmove_model::AgentConfig;

use crate::guests::Agent;
use crate::jobs::Jobs;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 1 << 20;

/// Serves the API until the process ends.
pub async fn serve(agent: Arc<Agent>, jobs: Arc<Jobs>, cfg: &AgentConfig) -> Result<()> {
    let ca = std::fs::read_to_string(&cfg.ca).with_context(|| format!("read {}", cfg.ca.display()))?;
    let me = CertPair {
        cert_pem: std::fs::read_to_string(&cfg.cert).with_context(|| format!("read {}", cfg.cert.display()))?,
        key_pem: std::fs::read_to_string(&cfg.key).with_context(|| format!("read {}", cfg.key.display()))?,
    };
    let acceptor = TlsAcceptor::from(vmove_api::tls::server_config(&ca, &me)?);
    let listener = TcpListener::bind(&cfg.listen).await.with_context(|| format!("listen on {}", cfg.listen))?;
    tracing::info!(host = %cfg.name, listen = %cfg.listen, accel = %agent.accel, "vmoved serving");
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept: {e}");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let agent = agent.clone();
        let jobs = jobs.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(agent, jobs, acceptor, tcp).await {
                tracing::info!(%peer, "connection: {e:#}");
            }
        });
    }
}

async fn connection(agent: Arc<Agent>, jobs: Arc<Jobs>, acceptor: TlsAcceptor, tcp: tokio::net::TcpStream) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake refused")?;
    let role = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(vmove_api::tls::role_of);
    let (rd, mut wr) = tokio::io::split(tls);
    let mut rd = BufReader::new(rd).take(MAX_REQUEST);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(30), rd.read_line(&mut line)).await;
    let reply = match (read, role) {
        (Err(_), _) => Reply::err("no request within 30 s"),
        (Ok(Err(e)), _) => Reply::err(format!("malformed request: {e}")),
        (Ok(Ok(_)), _) if !line.ends_with('\n') => {
            Reply::err(format!("malformed request: not one JSON line ending in a newline (at most {MAX_REQUEST} bytes)"))
        }
        (Ok(Ok(_)), None) => Reply::err("certificate has no vmove role (operator.vmove or host.vmove)"),
        (Ok(Ok(_)), Some(role)) => match vmove_api::decode_request(&line) {
            Err(e) => Reply::err(e.to_string()),
            Ok(req) if !req.allowed_for(&role) => Reply::err(format!("{} is not allowed for a {role:?} certificate", req.op())),
            Ok(Request::JobWatch { id, from_seq }) => match jobs.get(&id) {
                Err(e) => Reply::err(format!("{e:#}")),
                Ok(cell) => {
                    let rec = crate::jobs::watch_events(&cell, from_seq, &mut wr).await?;
                    Reply::ok(rec)
                }
            },
            Ok(req) => {
                let op = req.op();
                let r = handle(&agent, &jobs, req, role).await;
                if let Err(e) = &r {
                    tracing::info!(op, "refused: {e:#}");
                }
                r.unwrap_or_else(|e| Reply::err(format!("{e:#}")))
            }
        },
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    wr.write_all(&out).await?;
    wr.shutdown().await?;
    // Read what the client still sends (its close_notify) before closing, so that the
    // kernel does not answer it with a reset that would destroy the reply in flight.
    let mut sink = [0u8; 4096];
    let rd = rd.get_mut();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}

async fn handle(agent: &Arc<Agent>, jobs: &Arc<Jobs>, req: Request, role: Role) -> Result<Reply> {
    Ok(match req {
        Request::Health => Reply::ok(Health {
            host: agent.cfg.name.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            caller: role,
        }),
        Request::HostInfo => Reply::ok(crate::inventory::host_info(agent).await?),
        Request::GuestDefine { spec } => Reply::ok(agent.define(spec).await?),
        Request::GuestStart { name } => Reply::ok(agent.start(&name).await?),
        Request::GuestStop { name, force, timeout_s } => {
            agent.set_outgoing(&name, Some("a migration target"));
            Reply::ok(agent.stop(&name, force, Duration::from_secs(timeout_s)).await?)
        }
        Request::GuestUndefine { name } => {
            agent.undefine(&name).await?;
            Reply::ok(serde_json::json!({ "undefined": name }))
        }
        Request::GuestList => Reply::ok(agent.list()),
        Request::GuestShow { name } => Reply::ok(agent.show(&name)?),
        Request::GuestLog { name, max_bytes } => Reply::ok(GuestLog { text: agent.log(&name, max_bytes)? }),
        Request::GuestDirtyRate { name, calc_s } => Reply::ok(agent.dirty_rate(&name, calc_s).await?),
        Request::JobSubmit { spec } => {
            if let Some(id) = jobs.running_for(&spec.guest.name) {
                anyhow::bail!("guest {} is already being migrated by job {id}", spec.guest.name);
            }
            Reply::ok(jobs.submit(spec)?)
        }
        Request::JobShow { id } => Reply::ok(jobs.get(&id)?.snapshot()),
        Request::JobList => Reply::ok(jobs.list()),
        Request::JobWatch { .. } => Reply::err("job_watch is a streaming call"),
        Request::JobCancel { id } => Reply::ok(jobs.cancel(&id)?),
        Request::JobRecover { id } => Reply::ok(jobs.recover(&id).await?),
        Request::JobResume { id } => Reply::ok(jobs.resume(&id)?),
        Request::PeerMigrateContinue { name } => {
            crate::live::src_migrate_continue(agent, &name).await?;
            Reply::ok(serde_json::json!({ "continued": name }))
        }
        Request::PeerGuest { name, claim } => {
            let st = agent.show(&name)?;
            if let Some(c) = claim {
                if let Some(other) = agent.outgoing_to(&name).filter(|o| *o != c) {
                    anyhow::bail!("guest {name} is already being migrated away from {} by {other}", agent.cfg.name);
                }
                agent.set_outgoing(&name, Some(&c));
            }
            Reply::ok(st)
        }
        Request::PeerStopGuest { name, force, timeout_s, job } => {
            if let Some(id) = jobs.running_for(&name) {
                anyhow::bail!("guest {name} is itself being migrated to {} by job {id}", agent.cfg.name);
            }
            let job = job.unwrap_or_else(|| "a migration job".into());
            if let Some(other) = agent.outgoing_to(&name).filter(|o| *o != job) {
                anyhow::bail!("guest {name} is already being migrated away from {} by {other}", agent.cfg.name);
            }
            agent.set_outgoing(&name, Some(&job));
            Reply::ok(agent.stop(&name, force, Duration::from_secs(timeout_s)).await?)
        }
        Request::PeerDetachInterfaces { name } => Reply::ok(agent.detach_interfaces(&name).await?),
        Request::PeerDetachVolumes { name } => Reply::ok(agent.detach_volumes(&name)?),
        Request::PeerAttachVolumes { name } => {
            let spec = agent.stopped_spec(&name)?;
            Reply::ok(agent.attach_volumes(&spec, vmove_host::lease::Take::Exclusive)?)
        }
        Request::PeerStartGuest { name } => {
            agent.set_outgoing(&name, None);
            if agent.show(&name)?.pid.is_some() {
                Reply::ok(agent.show(&name)?)
            } else {
                Reply::ok(agent.start(&name).await?)
            }
        }
        Request::PeerUndefine { name } => {
            agent.set_outgoing(&name, None);
            if agent.spec(&name).is_some() {
                agent.undefine(&name).await?;
            }
            Reply::ok(serde_json::json!({ "undefined": name }))
        }
        Request::PeerMigrateOut { name, uri, tls_hostname, params, job } => {
            if let Some(id) = jobs.running_for(&name) {
                anyhow::bail!("guest {name} is itself being migrated to {} by job {id}", agent.cfg.name);
            }
            let job = job.unwrap_or_else(|| uri.clone());
            if let Some(other) = agent.outgoing_to(&name).filter(|o| *o != job) {
                anyhow::bail!("guest {name} is already being migrated away from {} by {other}", agent.cfg.name);
            }
            agent.set_outgoing(&name, Some(&job));
            if let Err(e) = crate::live::src_migrate_out(agent, &name, &uri, tls_hostname, &params).await {
                agent.set_outgoing(&name, None);
                return Err(e);
            }
            Reply::ok(serde_json::json!({ "started": uri }))
        }
        Request::PeerMigrateQuery { name } => Reply::ok(crate::live::src_migrate_query(agent, &name).await?),
        Request::PeerMigrateCancel { name } => {
            let r = crate::live::src_migrate_cancel(agent, &name).await;
            agent.set_outgoing(&name, None);
            Reply::ok(r?)
        }
        Request::PeerMigrateFinish { name } => {
            crate::live::src_migrate_finish(agent, &name).await?;
            agent.set_outgoing(&name, None);
            Reply::ok(serde_json::json!({ "finished": name }))
        }
    })
}
