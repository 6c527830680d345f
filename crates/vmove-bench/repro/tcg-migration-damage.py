#!/usr/bin/env python3
"""Reproduces, without vmove, libvirt or the lab, what the benchmark's near-link cells show:
QEMU live migration of a TCG guest that rewrites memory fast, over many pre-copy passes,
leaves a guest whose kernel oopses on the target soon after the switchover.

Two QEMUs (the lab image, 512 MiB, 1 vCPU, no NIC) on this machine, migrating over
127.0.0.1 with plain QMP. Run as root after `cargo build` has built the lab image once:

    python3 crates/vmove-bench/repro/tcg-migration-damage.py [--accel tcg] [--dirty 108]
        [--wss 256] [--bandwidth 120000000] [--runs 2]

Seen on QEMU 7.2.22 (Debian 12), 2 CPUs: dirty 108 MB/s over 256 MiB at a 120 MB/s cap
(38-39 passes): 2 of 2 targets oopsed, also with --accel tcg,thread=single; unlimited
bandwidth (3-4 passes) or an idle guest: 0 of 2.
"""
import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

BAD = ("BUG:", "Oops", "Kernel panic", "VERIFY FAIL", "general protection fault")


class Qmp:
    def __init__(self, path):
        for _ in range(200):
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                time.sleep(0.05)
        self.f = self.sock.makefile("rw")
        self.f.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, name, args=None):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg) + "\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r or "error" in r:
                return r


def qemu(d, role, a, extra):
    image = sorted(glob.glob("/var/cache/vmove/images/guest-*/"))[-1]
    args = [
        "qemu-system-x86_64", "-machine", "pc", "-accel", a.accel, "-cpu", "qemu64", "-smp", "1",
        "-m", "512M", "-nodefaults", "-no-user-config", "-display", "none",
        "-qmp", f"unix:{d}/{role}.qmp,server=on,wait=off",
        "-chardev", f"null,id=con0,logfile={d}/{role}.serial,logappend=on", "-serial", "chardev:con0",
        "-kernel", image + "vmlinuz", "-initrd", image + "initrd.img",
        "-append", f"console=ttyS0 quiet vmove.name=repro vmove.dirty={a.dirty} vmove.wss={a.wss}",
    ] + extra
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def once(a, n):
    d = tempfile.mkdtemp(prefix="bench-tcg-")
    src, dst = qemu(d, "src", a, []), qemu(d, "dst", a, ["-incoming", "defer"])
    qs, qd = Qmp(f"{d}/src.qmp"), Qmp(f"{d}/dst.qmp")
    time.sleep(10)  # boot, fill the working set, start dirtying
    port = 31000 + n
    qd.cmd("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
    qs.cmd("migrate-set-parameters", {"max-bandwidth": a.bandwidth})
    qs.cmd("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    t = time.time()
    while True:
        r = qs.cmd("query-migrate")["return"]
        if r.get("status") in ("completed", "failed") or time.time() - t > 120:
            break
        time.sleep(0.2)
    time.sleep(8)  # let the target run
    for q in (qs, qd):
        try:
            q.cmd("quit")
        except OSError:
            pass
    src.wait()
    dst.wait()
    text = open(f"{d}/dst.serial", errors="replace").read()
    bad = [line for line in text.splitlines() if any(b in line for b in BAD)]
    passes = r.get("ram", {}).get("dirty-sync-count")
    print(f"run {n}: {r.get('status')}, {passes} passes, {r.get('total-time')} ms: "
          + (f"DAMAGED: {bad[0]} (console: {d}/dst.serial)" if bad else f"ok ({text.count('VERIFY OK')} VERIFY OK)"))
    if not bad:
        shutil.rmtree(d, ignore_errors=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--accel", default="tcg")
    p.add_argument("--dirty", type=int, default=108)
    p.add_argument("--wss", type=int, default=256)
    p.add_argument("--bandwidth", type=int, default=120_000_000)
    p.add_argument("--runs", type=int, default=2)
    a = p.parse_args()
    for n in range(1, a.runs + 1):
        once(a, n)


if __name__ == "__main__":
    os.umask(0o022)
    main()
