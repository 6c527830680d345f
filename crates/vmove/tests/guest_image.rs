//! End to end test of the lab guest image: build it, boot it under QEMU (TCG), talk to its
//! services through slirp port forwards on 127.0.0.1, power it off with the ACPI button
//! over QMP, and boot it again from the same data disk.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use vmove_lab::image::{self, BootOpts, GuestImage};

const GUEST_NAME: &str = "imgtest";

/// A running QEMU, killed when dropped (also when the test fails).
struct Qemu {
    child: Child,
    log: PathBuf,
    qmp: PathBuf,
    started: Instant,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Ports {
    tcp_echo: u16,
    udp_echo: u16,
    http: u16,
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free tcp port")
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free udp port")
}

fn boot(img: &GuestImage, disk: &Path, dir: &Path, tag: &str, ports: &Ports) -> Result<Qemu> {
    let log = dir.join(format!("serial-{tag}.log"));
    let qmp = dir.join(format!("qmp-{tag}.sock"));
    let append = image::cmdline(&BootOpts {
        name: GUEST_NAME.to_string(),
        ip: Some("10.0.2.15/24".to_string()),
        dirty_mb_s: 5,
        wss_mib: 64,
        disk_mb_s: 0,
    });
    // No `restrict=on`: libslirp then drops the guest's UDP replies to forwarded
    // datagrams. The guest never opens connections of its own.
    let nic = format!(
        "user,model=virtio-net-pci,\
         hostfwd=tcp:127.0.0.1:{}-:7,hostfwd=udp:127.0.0.1:{}-:7,hostfwd=tcp:127.0.0.1:{}-:80",
        ports.tcp_echo, ports.udp_echo, ports.http
    );
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "512", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .arg("-kernel")
        .arg(&img.kernel)
        .arg("-initrd")
        .arg(&img.initrd)
        .arg("-append")
        .arg(&append)
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .arg("-nic")
        .arg(nic)
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start qemu-system-x86_64 (run scripts/install-deps)")?;
    Ok(Qemu {
        child,
        log,
        qmp,
        started: Instant::now(),
    })
}

fn read_log(q: &Qemu) -> String {
    std::fs::read(&q.log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Poll the serial log until `pred` finds something, QEMU exits, or the deadline passes.
fn wait_log<T>(
    q: &mut Qemu,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&str) -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = read_log(q);
        if let Some(v) = pred(&text) {
            return Ok(v);
        }
        if let Some(st) = q.child.try_wait()? {
            bail!("QEMU exited ({st}) while waiting for {what}; serial log:\n{text}");
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}; serial log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Numbers of all `<prefix> <n>` lines.
fn numbers(text: &str, prefix: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(prefix))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The guest's own lines (not the kernel's).
fn status_lines(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('['))
        .collect::<Vec<_>>()
        .join("\n")
}

fn has_line(text: &str, prefix: &str) -> bool {
    text.lines().any(|l| l.trim().starts_with(prefix))
}

fn check_tcp_echo(port: u16) -> Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let msg: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&msg)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    if back != msg {
        bail!("tcp echo returned {} bytes, sent {}", back.len(), msg.len());
    }
    Ok(())
}

fn check_udp_echo(port: u16) -> Result<()> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 2048];
    for attempt in 0..10 {
        let msg = format!("vmove udp echo {attempt}");
        s.send_to(msg.as_bytes(), ("127.0.0.1", port))?;
        match s.recv_from(&mut buf) {
            Ok((n, _)) if &buf[..n] == msg.as_bytes() => return Ok(()),
            Ok((n, _)) => bail!("udp echo returned {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => continue,
        }
    }
    bail!("no udp echo answer")
}

fn check_http(port: u16) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: guest\r\nUser-Agent: vmove-test\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    if !resp.starts_with("HTTP/1.1 200") || !resp.contains(GUEST_NAME) || !resp.contains("uptime") {
        bail!("unexpected HTTP answer: {resp:?}");
    }
    Ok(resp)
}

/// Send one QMP command and wait for its `return` (skipping events).
fn qmp_command(
    w: &mut UnixStream,
    r: &mut BufReader<UnixStream>,
    cmd: &str,
) -> Result<serde_json::Value> {
    writeln!(w, "{}", serde_json::json!({ "execute": cmd }))?;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            bail!("QMP closed while waiting for the answer to {cmd}");
        }
        let v: serde_json::Value = serde_json::from_str(line.trim())?;
        if v.get("return").is_some() {
            return Ok(v);
        }
        if let Some(e) = v.get("error") {
            bail!("QMP {cmd} failed: {e}");
        }
    }
}

fn qmp_powerdown(q: &Qemu) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        match UnixStream::connect(&q.qmp) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(e).context("cannot connect to the QMP socket")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut greeting = String::new();
    r.read_line(&mut greeting)?;
    if !greeting.contains("QMP") {
        bail!("unexpected QMP greeting {greeting:?}");
    }
    qmp_command(&mut w, &mut r, "qmp_capabilities")?;
    qmp_command(&mut w, &mut r, "system_powerdown")?;
    Ok(())
}

fn wait_exit(q: &mut Qemu, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = q.child.try_wait()? {
            return Ok(st);
        }
        if Instant::now() > deadline {
            bail!(
                "QEMU did not exit within {timeout:?} after system_powerdown; serial log:\n{}",
                read_log(q)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn guest_image_boots_serves_and_survives_a_reboot() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let guest_bin = Path::new(env!("CARGO_BIN_EXE_vmove-guest"));
    let t = Instant::now();
    let img = image::ensure(
        guest_bin,
        &image::default_kernel_root(),
        &tmp.path().join("cache"),
    )?;
    eprintln!(
        "image built in {:?}: kernel {} ({}), initrd {} ({} bytes)",
        t.elapsed(),
        img.kernel.display(),
        img.kernel_version,
        img.initrd.display(),
        std::fs::metadata(&img.initrd)?.len()
    );
    let disk = tmp.path().join("data.raw");
    std::fs::File::create(&disk)?.set_len(16 << 20)?;

    // First boot.
    let ports = Ports {
        tcp_echo: free_tcp_port(),
        udp_echo: free_udp_port(),
        http: free_tcp_port(),
    };
    let mut q = boot(&img, &disk, tmp.path(), "1", &ports)?;
    let ready = format!("VMOVE READY {GUEST_NAME}");
    wait_log(&mut q, "VMOVE READY", Duration::from_secs(90), |t| {
        t.contains(&ready).then_some(())
    })?;
    eprintln!("first boot: READY after {:?}", q.started.elapsed());
    check_tcp_echo(ports.tcp_echo).context("tcp echo")?;
    check_udp_echo(ports.udp_echo).context("udp echo")?;
    let page = check_http(ports.http).context("http")?;
    eprintln!("http answer:\n{page}");
    wait_log(&mut q, "VERIFY OK", Duration::from_secs(30), |t| {
        has_line(t, "VERIFY OK ").then_some(())
    })?;
    // A periodic DISK OK that counts records written during this boot.
    wait_log(
        &mut q,
        "DISK OK <n> with n > 0",
        Duration::from_secs(30),
        |t| {
            numbers(t, "DISK OK ")
                .into_iter()
                .any(|n| n > 0)
                .then_some(())
        },
    )?;

    let t = Instant::now();
    qmp_powerdown(&q).context("QMP system_powerdown")?;
    let st = wait_exit(&mut q, Duration::from_secs(60))?;
    let log1 = read_log(&q);
    eprintln!(
        "first boot: QEMU exited ({st}) {:?} after system_powerdown; guest lines:\n{}",
        t.elapsed(),
        status_lines(&log1)
    );
    assert!(st.success(), "QEMU exit status {st}");
    assert!(
        has_line(&log1, "POWERING OFF"),
        "no POWERING OFF in:\n{log1}"
    );
    assert!(
        !log1.contains("VERIFY FAIL"),
        "verification failed:\n{log1}"
    );
    assert!(!log1.contains("DISK FAIL"), "disk log failed:\n{log1}");
    let first = numbers(&log1, "DISK OK ");
    assert_eq!(
        first.first(),
        Some(&0),
        "fresh disk must hold 0 records:\n{log1}"
    );
    let n1 = *first.iter().max().unwrap_or(&0);
    drop(q);

    // Second boot from the same disk.
    let ports = Ports {
        tcp_echo: free_tcp_port(),
        udp_echo: free_udp_port(),
        http: free_tcp_port(),
    };
    let mut q = boot(&img, &disk, tmp.path(), "2", &ports)?;
    let n2 = wait_log(
        &mut q,
        "DISK OK at the second boot",
        Duration::from_secs(90),
        |t| {
            if t.contains("DISK FAIL") {
                return Some(Err(t.to_string()));
            }
            numbers(t, "DISK OK ").first().copied().map(Ok)
        },
    )?;
    let n2 = match n2 {
        Ok(n) => n,
        Err(log) => panic!("DISK FAIL at the second boot:\n{log}"),
    };
    wait_log(
        &mut q,
        "VMOVE READY (second boot)",
        Duration::from_secs(60),
        |t| t.contains(&ready).then_some(()),
    )?;
    eprintln!(
        "second boot: READY after {:?}; disk records: {n1} (last seen at boot 1) -> {n2}",
        q.started.elapsed()
    );
    assert!(
        n2 > n1,
        "records at second boot {n2} <= {n1} seen at the first boot"
    );
    check_http(ports.http).context("http after reboot")?;
    let log2 = read_log(&q);
    eprintln!("second boot, guest lines:\n{}", status_lines(&log2));
    assert!(!log2.contains("DISK FAIL"), "{log2}");
    assert!(
        !log2.contains("DISK NOTE"),
        "a clean power-off must not leave a torn record:\n{log2}"
    );
    Ok(())
}
