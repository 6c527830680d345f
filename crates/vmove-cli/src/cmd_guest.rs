//! `vmove guest create|list|show|start|stop|destroy|log|console` (console: [`crate::console`]).
use anyhow::{anyhow, bail, Result};
use futures::future::join_all;
use vmove_api::{GuestLog, GuestState, GuestStatus, Request};
use vmove_model::{parse_duration_ms, Cluster, DesiredState};

use crate::args::GuestCmd;
use crate::ctx::Ctx;
use crate::request::CreateCommand;

pub async fn run(ctx: &Ctx, cmd: GuestCmd) -> Result<()> {
    match cmd {
        GuestCmd::Create(a) => {
            let cluster = ctx.cluster().await?;
            let cmd = a.into_command(&cluster)?;
            create(ctx, cluster, cmd).await
        }
        GuestCmd::List { host } => list(ctx, host).await,
        GuestCmd::Show { name } => {
            let (cluster, host) = locate(ctx, &name).await?;
            let mut st: GuestStatus = ctx.client(&cluster, &host)?.call(&Request::GuestShow { name }).await?;
            with_file_group(&cluster, &mut st);
            print_status(ctx, &st);
            Ok(())
        }
        GuestCmd::Start { name } => {
            let (cluster, host) = locate(ctx, &name).await?;
            let st: GuestStatus = ctx.client(&cluster, &host)?.call(&Request::GuestStart { name: name.clone() }).await?;
            set_desired(ctx, &name, DesiredState::Running).await?;
            print_status(ctx, &st);
            Ok(())
        }
        GuestCmd::Stop { name, force, timeout } => {
            let timeout_s = parse_duration_ms(&timeout).map_err(|e| anyhow!(e))?.div_ceil(1000);
            let (cluster, host) = locate(ctx, &name).await?;
            let client = ctx.client(&cluster, &host)?.with_timeout(std::time::Duration::from_secs(timeout_s + 30));
            let st: GuestStatus = client.call(&Request::GuestStop { name: name.clone(), force, timeout_s }).await?;
            set_desired(ctx, &name, DesiredState::Stopped).await?;
            print_status(ctx, &st);
            Ok(())
        }
        GuestCmd::Destroy { name } => {
            let (cluster, host) = locate(ctx, &name).await?;
            let client = ctx.client(&cluster, &host)?;
            let _: GuestStatus = client.call(&Request::GuestStop { name: name.clone(), force: true, timeout_s: 30 }).await?;
            let _: serde_json::Value = client.call(&Request::GuestUndefine { name: name.clone() }).await?;
            ctx.update_cluster(|c| {
                let before = c.guests.len();
                c.guests.retain(|g| g.name != name);
                c.guests.len() != before
            })
            .await?;
            if ctx.json {
                crate::out::json(&serde_json::json!({ "ok": true, "destroyed": name, "host": host }));
            } else {
                println!("guest {name} destroyed on {host} (its volumes are kept)");
            }
            Ok(())
        }
        GuestCmd::Console { name, replay } => crate::console::run(ctx, &name, replay).await,
        GuestCmd::Log { name, bytes } => {
            let (cluster, host) = locate(ctx, &name).await?;
            let log: GuestLog = ctx.client(&cluster, &host)?.call(&Request::GuestLog { name, max_bytes: bytes }).await?;
            if ctx.json {
                crate::out::json(&log);
            } else {
                print!("{}", log.text);
            }
            Ok(())
        }
    }
}

/// The tail of a guest's console.
pub async fn log_text(ctx: &Ctx, name: &str) -> Result<String> {
    let (cluster, host) = locate(ctx, name).await?;
    let log: GuestLog =
        ctx.client(&cluster, &host)?.call(&Request::GuestLog { name: name.into(), max_bytes: 65536 }).await?;
    Ok(log.text)
}

async fn locate(ctx: &Ctx, name: &str) -> Result<(Cluster, String)> {
    let c = ctx.cluster().await?;
    let host = c.guest(name).map(|g| g.host.clone()).ok_or_else(|| anyhow!("no guest named {name} in {}", ctx.truth(&c)))?;
    Ok((c, host))
}

/// The cluster file holds the anti-affinity group: show the file's, whatever the agent kept.
fn with_file_group(c: &Cluster, st: &mut GuestStatus) {
    if let Some(g) = c.guest(&st.spec.name) {
        st.spec.group = g.group.clone();
    }
}

async fn set_desired(ctx: &Ctx, name: &str, d: DesiredState) -> Result<()> {
    ctx.update_cluster(|c| match c.guest_mut(name) {
        Some(g) if g.desired != d => {
            g.desired = d;
            true
        }
        _ => false,
    })
    .await
}

/// `vmove guest create`: defines the guest on its host, records it in the cluster file,
/// and starts it if asked.
pub async fn create(ctx: &Ctx, cluster: Cluster, cmd: CreateCommand) -> Result<()> {
    let (name, host, start) = (cmd.spec.name.clone(), cmd.spec.host.clone(), cmd.start());
    let client = ctx.client(&cluster, &host)?;
    let st: GuestStatus = client.call(&Request::GuestDefine { spec: cmd.spec }).await?;
    ctx.update_cluster(|c| {
        c.upsert_guest(st.spec.clone());
        true
    })
    .await
    .map_err(|e| e.context(format!("record the guest in {}", ctx.truth(&cluster))))?;
    let st = if start { client.call(&Request::GuestStart { name }).await? } else { st };
    print_status(ctx, &st);
    Ok(())
}
async fn list(ctx: &Ctx, only: Option<String>) -> Result<()> {
    let cluster = ctx.cluster().await?;
    let clients: Vec<_> =
        ctx.clients(&cluster)?.into_iter().filter(|(n, _)| only.as_ref().is_none_or(|o| o == n)).collect();
    if let Some(o) = &only {
        if clients.is_empty() {
            bail!("no host named {o} in {}", ctx.truth(&cluster));
        }
    }
    let answers = join_all(clients.iter().map(|(_, c)| c.call::<Vec<GuestStatus>>(&Request::GuestList))).await;
    let mut rows = Vec::new();
    let mut js = Vec::new();
    for ((host, _), r) in clients.iter().zip(answers) {
        match r {
            Ok(list) => {
                for mut g in list {
                    with_file_group(&cluster, &mut g);
                    rows.push(row(&g));
                    js.push(serde_json::json!({ "host": host, "guest": g }));
                }
            }
            Err(e) => {
                let msg = crate::out::one_line(e);
                rows.push(vec!["?".into(), host.clone(), format!("unreachable: {msg}")]);
                js.push(serde_json::json!({ "host": host, "error": msg }));
            }
        }
    }
    if ctx.json {
        crate::out::json(&js);
    } else {
        crate::out::table(&HEADER, &rows);
    }
    Ok(())
}

fn state_str(s: GuestState) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

const HEADER: [&str; 8] = ["GUEST", "HOST", "STATE", "VCPUS", "MEM_MIB", "IP", "PID", "GROUP"];

fn row(g: &GuestStatus) -> Vec<String> {
    vec![
        g.spec.name.clone(),
        g.spec.host.clone(),
        state_str(g.state),
        g.spec.vcpus.to_string(),
        g.spec.memory_mib.to_string(),
        g.spec.nics.first().and_then(|n| n.ip.clone()).unwrap_or_default(),
        g.pid.map(|p| p.to_string()).unwrap_or_default(),
        g.spec.group.clone().unwrap_or_default(),
    ]
}

fn print_status(ctx: &Ctx, st: &GuestStatus) {
    if ctx.json {
        crate::out::json(st);
    } else {
        crate::out::table(&HEADER, &[row(st)]);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;
    use vmove_api::GuestState;

    use super::*;
    use crate::args::{Cli, Command};

    #[test]
    fn create_takes_a_group() {
        let cli = Cli::try_parse_from(["vmove", "guest", "create", "db1", "--host", "host1", "--group", "db"]).unwrap();
        let Command::Guest(GuestCmd::Create(a)) = cli.command else { panic!("not guest create: {:?}", cli.command) };
        assert_eq!(a.group.as_deref(), Some("db"));
        let cli = Cli::try_parse_from(["vmove", "guest", "create", "db1", "--host", "host1"]).unwrap();
        let Command::Guest(GuestCmd::Create(a)) = cli.command else { panic!("not guest create: {:?}", cli.command) };
        assert_eq!(a.group, None);
    }

    #[test]
    fn show_and_list_use_the_file_group() {
        let text = r#"
[cluster]
name = "c"
[tls]
ca = "ca.pem"
cert = "op.pem"
key = "op.key"
[[hosts]]
name = "host1"
address = "198.51.100.2:7450"
[[guests]]
name = "db1"
host = "host1"
vcpus = 2
memory_mib = 1024
group = "db"
boot = { kind = "lab" }
"#;
        let c = Cluster::parse(text, Path::new("c.toml")).unwrap();
        let mut spec = c.guests[0].clone();
        spec.group = None;
        let mut st = GuestStatus { spec, state: GuestState::Running, pid: Some(7), uptime_s: None };
        with_file_group(&c, &mut st);
        assert_eq!(st.spec.group.as_deref(), Some("db"));
        assert_eq!(row(&st), ["db1", "host1", "running", "2", "1024", "", "7", "db"]);
        assert_eq!(serde_json::to_value(&st).unwrap()["spec"]["group"], "db");
        assert_eq!(HEADER.len(), row(&st).len());
    }
}
