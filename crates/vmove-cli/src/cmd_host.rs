//! `vmove host list|show` (and `add|remove`, in [`crate::cmd_setup`]).
use anyhow::Result;
use futures::future::join_all;
use vmove_api::{HostInfo, Request};

use crate::args::HostCmd;
use crate::ctx::Ctx;

pub async fn run(ctx: &Ctx, cmd: HostCmd) -> Result<()> {
    let cmd = match cmd {
        HostCmd::Add(a) => return crate::cmd_setup::add(ctx, a).await,
        HostCmd::Remove { host } => return crate::cmd_setup::remove(ctx, &host).await,
        HostCmd::Drain(a) => return crate::drain::drain(ctx, a).await,
        HostCmd::Undrain { host } => return crate::drain::undrain(ctx, &host).await,
        HostCmd::Evacuate(a) => return crate::drain::evacuate(ctx, a).await,
        other => other,
    };
    let cluster = ctx.cluster().await?;
    match cmd {
        HostCmd::Add(_) | HostCmd::Remove { .. } | HostCmd::Drain(_) | HostCmd::Undrain { .. } | HostCmd::Evacuate(_) => {}
        HostCmd::List => {
            let clients = ctx.clients(&cluster)?;
            let infos = join_all(clients.iter().map(|(_, c)| c.call::<HostInfo>(&Request::HostInfo))).await;
            let mut rows = Vec::new();
            let mut js = Vec::new();
            for ((name, c), info) in clients.iter().zip(infos) {
                match info {
                    Ok(i) => {
                        rows.push(vec![
                            name.clone(),
                            c.addr().to_string(),
                            "yes".into(),
                            i.accel.clone(),
                            i.cpu_count.to_string(),
                            format!("{}/{}", i.memory_available_mib, i.memory_total_mib),
                            i.guests.len().to_string(),
                            i.qemu_version.clone(),
                            if i.maintenance.is_some() { "yes".into() } else { String::new() },
                        ]);
                        js.push(serde_json::json!({ "name": name, "address": c.addr().to_string(), "reachable": true, "info": i }));
                    }
                    Err(e) => {
                        let msg = crate::out::one_line(e);
                        rows.push(vec![name.clone(), c.addr().to_string(), "NO".into(), msg.clone()]);
                        js.push(serde_json::json!({ "name": name, "address": c.addr().to_string(), "reachable": false, "error": msg }));
                    }
                }
            }
            if ctx.json {
                crate::out::json(&js);
            } else {
                crate::out::table(&["HOST", "ADDRESS", "REACHABLE", "ACCEL", "CPUS", "MEM_AVAIL/TOTAL_MIB", "GUESTS", "QEMU", "MAINTENANCE"], &rows);
            }
        }
        HostCmd::Show { host } => {
            let i: HostInfo = ctx.client(&cluster, &host)?.call(&Request::HostInfo).await?;
            if ctx.json {
                crate::out::json(&i);
            } else {
                println!("host:            {}", i.name);
                println!("agent version:   {}", i.agent_version);
                println!("qemu version:    {} ({})", i.qemu_version, i.qemu.package);
                println!("qemu migration capabilities: {}", i.qemu.migration_capabilities.join(" "));
                let params: Vec<String> = i.qemu.migration_parameters.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("qemu migration parameters:   {}", params.join(" "));
                println!("hardware:        {} (generation {})", i.hardware_model, i.hardware_generation);
                println!("accel:           {}", i.accel);
                println!("cpu:             {} x {} ({} flags)", i.cpu_count, i.cpu_model, i.cpu_flags.len());
                println!(
                    "memory MiB:      total {}, free {}, reserve {}, committed {}, available {}",
                    i.memory_total_mib, i.memory_free_mib, i.memory_reserve_mib, i.memory_committed_mib, i.memory_available_mib
                );
                println!("vcpus committed: {}", i.vcpus_committed);
                match &i.maintenance {
                    Some(m) => println!("maintenance:     since {} (unix ms; `vmove host undrain {}` ends it)", m.since_ms, i.name),
                    None => println!("maintenance:     no"),
                }
                let br: Vec<String> = i.bridges.iter().map(|b| b.name.clone()).collect();
                println!("bridges:         {}", br.join(", "));
                for p in &i.pools {
                    println!("pool:            {} {} ({})", p.name, p.path, if p.writable { "writable" } else { "NOT writable" });
                }
                println!("console ports:   {:?} in use, range {}-{}", i.console_ports_in_use, i.console_port_range.0, i.console_port_range.1);
                for g in &i.guests {
                    println!("guest:           {} {:?}", g.spec.name, g.state);
                }
            }
        }
    }
    Ok(())
}
