//! Parsing what the tools print (pure).
use std::collections::BTreeMap;

use serde::Deserialize;
use vmove_api::{EventKind, JobEvent, JobStatus};
use vmove_qmp::MigrationInfo;

use crate::model::{Prediction, Sample};

/// One line of `vmove --json migrate`.
#[derive(Debug, Clone, PartialEq)]
pub enum VmoveLine {
    /// A progress event: unix ms and the sample's figures.
    Progress {
        /// Unix time, ms.
        at_ms: u64,
        /// RAM bytes still to send.
        remaining_bytes: u64,
        /// Bytes sent so far.
        transferred_bytes: u64,
    },
    /// The job ended.
    Ended {
        /// Whether it succeeded.
        succeeded: bool,
        /// Why not.
        error: Option<String>,
        /// Whole job, ms.
        total_ms: u64,
        /// QEMU's total-time, ms.
        migration_ms: Option<u64>,
        /// QEMU's downtime, ms.
        downtime_ms: Option<u64>,
        /// Bytes sent.
        transferred_bytes: Option<u64>,
        /// Passes.
        passes: Option<u64>,
        /// Bytes of local volumes copied.
        disk_bytes: Option<u64>,
        /// How long the copy of the local volumes took, ms.
        disk_copy_ms: Option<u64>,
    },
    /// Anything else (steps, prechecks, info).
    Other,
}

/// The status of vmove's progress events during the copy of local volumes.
const COPYING_VOLUMES: &str = "copying-volumes";

#[derive(Deserialize)]
struct Line {
    event: JobEvent,
}

/// Parses one line of `vmove --json migrate` output; None if it is not a job event.
pub fn vmove_line(line: &str) -> Option<VmoveLine> {
    let l: Line = serde_json::from_str(line.trim()).ok()?;
    Some(match l.event.kind {
        // Before RAM statistics exist (status `setup`) everything is 0: not a sample.
        EventKind::Progress(p) if p.total_bytes == 0 => VmoveLine::Other,
        // The copy of local volumes (COPY_VOLUMES): disk bytes, not a RAM sample.
        EventKind::Progress(p) if p.status == COPYING_VOLUMES => VmoveLine::Other,
        EventKind::Progress(p) => VmoveLine::Progress {
            at_ms: l.event.at_ms,
            remaining_bytes: p.remaining_bytes,
            transferred_bytes: p.transferred_bytes,
        },
        EventKind::JobEnded { status, error, summary } => VmoveLine::Ended {
            succeeded: status == JobStatus::Succeeded,
            error,
            total_ms: summary.total_ms,
            migration_ms: summary.migration_ms,
            downtime_ms: summary.downtime_ms,
            transferred_bytes: summary.transferred_bytes,
            passes: summary.passes,
            disk_bytes: summary.disk_bytes,
            disk_copy_ms: summary.disk_copy_ms,
        },
        _ => VmoveLine::Other,
    })
}

/// The job id a line of `vmove --json migrate` names (`"job": "host2-1"`).
pub fn vmove_job_id(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    v.get("job")?.as_str().map(str::to_string)
}

/// A duration as vmove prints it (`12s`, `3m12s`, `1h5m`, `850ms`, `1.5 s`, `2 min`) at the
/// start of `s`, in seconds.
pub fn duration_words(s: &str) -> Option<f64> {
    let mut rest = s.trim_start();
    let mut total = None;
    loop {
        let n_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let Ok(n) = rest[..n_end].parse::<f64>() else { break };
        let after = rest[n_end..].trim_start();
        let u_end = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let scale = match &after[..u_end] {
            "h" | "hour" | "hours" => 3600.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "ms" => 0.001,
            _ => break,
        };
        total = Some(total.unwrap_or(0.0) + n * scale);
        rest = &after[u_end..];
    }
    total
}

/// vmove's prediction: the `predicted-convergence` finding of `vmove --json migrate
/// --precheck`. Its time is the first "about …" of the reason, unless the reason says the
/// move as asked will not converge (a time after that is another policy's).
pub fn prediction(precheck_json: &str) -> Option<Prediction> {
    let v: serde_json::Value = serde_json::from_str(precheck_json.trim()).ok()?;
    let f = v.get("findings")?.as_array()?.iter().find(|f| f.get("id").and_then(|i| i.as_str()) == Some("predicted-convergence"))?;
    let verdict = f.get("verdict").and_then(|x| x.as_str()).unwrap_or("").to_string();
    let reason = f.get("reason").and_then(|x| x.as_str()).unwrap_or("").to_string();
    let predicted_s = if reason.contains("will not converge") {
        None
    } else {
        reason.split("about ").skip(1).find_map(duration_words)
    };
    Some(Prediction { verdict, reason, predicted_s })
}

/// A line of `virsh qemu-monitor-event`: `event RESUME at 1795314877.754321 for domain 'g': <null>`
/// → the event's name and QEMU's timestamp, unix µs.
pub fn monitor_event(line: &str) -> Option<(String, u64)> {
    let rest = line.trim().strip_prefix("event ")?;
    let (name, rest) = rest.split_once(" at ")?;
    let stamp = rest.split_whitespace().next()?;
    let (secs, frac) = stamp.split_once('.').unwrap_or((stamp, "0"));
    let us: u64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    Some((name.to_string(), secs.parse::<u64>().ok()?.checked_mul(1_000_000)?.checked_add(us)?))
}

/// `virsh domjobinfo --rawstats`: `key: value` lines with integer values.
pub fn virsh_rawstats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(k, v)| Some((k.trim().to_string(), v.trim().parse::<u64>().ok()?)))
        .filter(|(k, _)| !k.is_empty() && !k.contains(' '))
        .collect()
}

/// A remaining-bytes sample from libvirt's raw job statistics (None while it has none).
pub fn virsh_sample(stats: &BTreeMap<String, u64>, t_ms: u64) -> Option<Sample> {
    let remaining = *stats.get("memory_remaining")?;
    let transferred = stats.get("memory_processed").copied().unwrap_or(0);
    (stats.get("memory_total").copied().unwrap_or(0) > 0).then_some(Sample {
        t_ms,
        remaining_bytes: remaining,
        transferred_bytes: transferred,
    })
}

/// Touched memory from libvirt's completed job: total − zero ("constant") pages.
pub fn virsh_touched(stats: &BTreeMap<String, u64>) -> Option<u64> {
    let total = *stats.get("memory_total")?;
    let zero = *stats.get("memory_constant")?;
    let page = stats.get("memory_page_size").copied().unwrap_or(4096);
    Some(total.saturating_sub(zero * page))
}

/// The bytes of the storage copy in libvirt's completed job statistics (`disk_processed`,
/// else `disk_total` once nothing remains); None without a storage copy.
pub fn virsh_disk_bytes(stats: &BTreeMap<String, u64>) -> Option<u64> {
    stats.get("disk_processed").copied().or_else(|| {
        let total = *stats.get("disk_total")?;
        (stats.get("disk_remaining").copied() == Some(0)).then_some(total)
    })
}

/// A network interface's byte counter as sysfs prints it (`/sys/class/net/IF/statistics/tx_bytes`).
pub fn link_counter(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A remaining-bytes sample from `query-migrate` (None before RAM statistics exist).
pub fn qmp_sample(info: &MigrationInfo, t_ms: u64) -> Option<Sample> {
    let ram = info.ram.as_ref()?;
    Some(Sample { t_ms, remaining_bytes: ram.remaining?, transferred_bytes: ram.transferred.unwrap_or(0) })
}

/// Touched memory from `query-migrate`: total − zero ("duplicate") pages.
pub fn qmp_touched(info: &MigrationInfo) -> Option<u64> {
    let ram = info.ram.as_ref()?;
    let page = ram.page_size.unwrap_or(4096);
    Some(ram.total?.saturating_sub(ram.duplicate? * page))
}

/// A counter (`pages_dirtied`, `verify_sweeps`, ...) from the lab guest's HTTP status page.
pub fn status_field(page: &str, key: &str) -> Option<u64> {
    page.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.trim().parse().ok())
}

/// A field of the lab guest's HTTP status page as text (`disk_records: none`).
pub fn status_text(page: &str, key: &str) -> Option<String> {
    page.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':'))).map(|v| v.trim().to_string())
}

/// The body of an HTTP/1.x response with status 200.
pub fn http_ok_body(resp: &str) -> Option<&str> {
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.lines().next().filter(|l| l.starts_with("HTTP/1.") && l.split_whitespace().nth(1) == Some("200"))?;
    Some(body)
}

/// The first console line that shows the guest was damaged: a failed memory verification,
/// a data disk's log that does not verify, a kernel oops or panic, a crashed workload.
pub fn damage(console: &str) -> Option<String> {
    const BAD: [&str; 9] = [
        "VERIFY FAIL",
        "DISK FAIL",
        "VMOVE PANIC",
        "VMOVE FATAL",
        "BUG:",
        "Oops",
        "Kernel panic",
        "general protection fault",
        "segfault",
    ];
    console.lines().find(|l| BAD.iter().any(|b| l.contains(b))).map(|l| l.trim().to_string())
}

/// `model name` from /proc/cpuinfo.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// MemTotal from /proc/meminfo, GiB.
pub fn mem_total_gib(meminfo: &str) -> Option<f64> {
    let kb: f64 = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmove_progress_and_end() {
        let p = r#"{"event":{"at_ms":1795314877754,"dirty_rate_bytes_per_s":0,"elapsed_ms":512,"eta_s":2,"event":"progress","expected_downtime_ms":300,"pass":1,"rate_bytes_per_s":191232769,"remaining_bytes":451149824,"seq":8,"status":"active","total_bytes":537665536,"transferred_bytes":74523609},"job":"host2-1"}"#;
        assert_eq!(
            vmove_line(p),
            Some(VmoveLine::Progress { at_ms: 1795314877754, remaining_bytes: 451149824, transferred_bytes: 74523609 })
        );
        let e = r#"{"event":{"at_ms":1795314878897,"event":"job_ended","seq":13,"status":"succeeded","summary":{"downtime_ms":92,"migration_ms":1229,"passes":4,"total_ms":1930,"transferred_bytes":180699400}},"job":"host2-1"}"#;
        assert_eq!(
            vmove_line(e),
            Some(VmoveLine::Ended {
                succeeded: true,
                error: None,
                total_ms: 1930,
                migration_ms: Some(1229),
                downtime_ms: Some(92),
                transferred_bytes: Some(180699400),
                passes: Some(4),
                disk_bytes: None,
                disk_copy_ms: None,
            })
        );
        let d = r#"{"event":{"at_ms":2,"event":"job_ended","seq":30,"status":"succeeded","summary":{"disk_bytes":268435456,"disk_copy_ms":5120,"downtime_ms":40,"migration_ms":1500,"passes":3,"total_ms":9000,"transferred_bytes":190000000}},"job":"host2-2"}"#;
        match vmove_line(d) {
            Some(VmoveLine::Ended { succeeded: true, disk_bytes: Some(268435456), disk_copy_ms: Some(5120), transferred_bytes: Some(190000000), .. }) => {}
            other => panic!("{other:?}"),
        }
        let copy = r#"{"event":{"at_ms":1795314877754,"dirty_rate_bytes_per_s":0,"elapsed_ms":500,"eta_s":3,"event":"progress","expected_downtime_ms":0,"pass":0,"rate_bytes_per_s":80000000,"remaining_bytes":200000000,"seq":9,"status":"copying-volumes","total_bytes":268435456,"transferred_bytes":68435456},"job":"host2-2"}"#;
        assert_eq!(vmove_line(copy), Some(VmoveLine::Other), "the disk copy's progress is not a RAM sample");
        let f = r#"{"event":{"at_ms":1,"event":"job_ended","seq":9,"status":"cancelled","error":"timed out after 6 s","summary":{"total_ms":6100}},"job":"host2-3"}"#;
        match vmove_line(f) {
            Some(VmoveLine::Ended { succeeded: false, error: Some(e), migration_ms: None, .. }) => assert!(e.contains("timed out")),
            other => panic!("{other:?}"),
        }
        let setup = r#"{"event":{"at_ms":1795314877247,"dirty_rate_bytes_per_s":0,"elapsed_ms":0,"event":"progress","expected_downtime_ms":0,"pass":0,"rate_bytes_per_s":0,"remaining_bytes":0,"seq":7,"status":"setup","total_bytes":0,"transferred_bytes":0},"job":"host2-1"}"#;
        assert_eq!(vmove_line(setup), Some(VmoveLine::Other), "no statistics yet");
        let s = r#"{"event":{"at_ms":1,"event":"step_started","seq":11,"step":"DETACH_VOLUMES"},"job":"host2-1"}"#;
        assert_eq!(vmove_line(s), Some(VmoveLine::Other));
        assert_eq!(vmove_line("not json"), None);
        assert_eq!(vmove_line(r#"{"guest":"vm1","passed":true}"#), None);
    }

    #[test]
    fn predictions() {
        for (text, secs) in [
            ("about 12s in 5 passes to copy 512 MiB", Some(12.0)),
            ("about 1m12s in 17 passes", Some(72.0)),
            ("about 1h5m", Some(3900.0)),
            ("about 850ms", Some(0.85)),
            ("about 1.5 s", Some(1.5)),
            ("about 2 min", Some(120.0)),
            ("about eleven", None),
        ] {
            assert_eq!(text.split("about ").nth(1).and_then(duration_words), secs, "{text}");
        }
        let j = r#"{"guest":"bv-1","passed":true,"findings":[{"id":"ram","verdict":"pass","reason":"about 9s"},{"id":"predicted-convergence","verdict":"pass","reason":"about 3s to copy 512 MiB at 200 MB/s with 20 MB/s dirtied, within the timeout of 2m30s"}]}"#;
        let p = prediction(j).unwrap();
        assert_eq!((p.verdict.as_str(), p.predicted_s), ("pass", Some(3.0)));
        let post = r#"{"findings":[{"id":"predicted-convergence","verdict":"warn","reason":"converges only in post-copy, after 1 pass of pre-copy: about 1m5s to copy 2048 MiB"}]}"#;
        assert_eq!(prediction(post).unwrap().predicted_s, Some(65.0));
        let no = r#"{"findings":[{"id":"predicted-convergence","verdict":"fail","reason":"will not converge under converge=none: x; it would time out after 2m30s; converge=auto would (about 38s in 17 passes)"}]}"#;
        let p = prediction(no).unwrap();
        assert_eq!((p.verdict.as_str(), p.predicted_s), ("fail", None));
        assert_eq!(prediction(r#"{"findings":[]}"#), None);
        assert_eq!(prediction("garbage"), None);
    }

    #[test]
    fn monitor_events_and_job_ids() {
        assert_eq!(
            monitor_event("event RESUME at 1795314877.754321 for domain 'bl-5': <null>"),
            Some(("RESUME".to_string(), 1_795_314_877_754_321))
        );
        assert_eq!(monitor_event("event STOP at 17.5 for domain 'x': <null>"), Some(("STOP".to_string(), 17_500_000)));
        assert_eq!(monitor_event("events: none"), None);
        assert_eq!(vmove_job_id(r#"{"event":{"event":"progress"},"job":"host2-7"}"#).as_deref(), Some("host2-7"));
        assert_eq!(vmove_job_id("x"), None);
    }

    #[test]
    fn virsh_raw_statistics() {
        let t = "Job type: 3\n\noperation: 4\ntime_elapsed: 1126\ndowntime: 135\ndata_processed: 163379100\nmemory_total: 537526272\nmemory_processed: 163379100\nmemory_remaining: 0\nmemory_constant: 95159\nmemory_page_size: 4096\nmemory_iteration: 3\n";
        let s = virsh_rawstats(t);
        assert_eq!(s.get("downtime"), Some(&135));
        assert_eq!(s.get("memory_iteration"), Some(&3));
        assert!(!s.contains_key("Job type"), "the header line is not a statistic");
        assert_eq!(virsh_touched(&s), Some(537526272 - 95159 * 4096));
        assert_eq!(virsh_sample(&s, 7), Some(Sample { t_ms: 7, remaining_bytes: 0, transferred_bytes: 163379100 }));
        assert_eq!(virsh_sample(&virsh_rawstats("Job type: 2\n"), 7), None);
    }

    #[test]
    fn virsh_disk_statistics() {
        let t = "Job type: 3\ntime_elapsed: 9000\ndisk_total: 2147483648\ndisk_processed: 2147483648\ndisk_remaining: 0\nmemory_processed: 100\n";
        assert_eq!(virsh_disk_bytes(&virsh_rawstats(t)), Some(2147483648));
        assert_eq!(virsh_disk_bytes(&virsh_rawstats("memory_processed: 100\n")), None, "no storage copy");
        assert_eq!(link_counter("123456\n"), Some(123456));
        assert_eq!(link_counter("nope"), None);
    }

    #[test]
    fn qmp_figures() {
        let info: MigrationInfo = serde_json::from_str(
            r#"{"status":"active","ram":{"transferred":100,"remaining":4096000,"total":8192000,"duplicate":1000,"page-size":4096,"mbps":12.5}}"#,
        )
        .unwrap();
        assert_eq!(qmp_sample(&info, 5), Some(Sample { t_ms: 5, remaining_bytes: 4096000, transferred_bytes: 100 }));
        assert_eq!(qmp_touched(&info), Some(8192000 - 4096000));
        assert_eq!(qmp_sample(&MigrationInfo::default(), 5), None);
    }

    #[test]
    fn guest_page_and_http() {
        let resp = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nname: vm1\nverify_sweeps: 5\npages_dirtied: 52734\n";
        let body = http_ok_body(resp).unwrap();
        assert_eq!(status_field(body, "pages_dirtied"), Some(52734));
        assert_eq!(status_field(body, "verify_sweeps"), Some(5));
        assert_eq!(status_field(body, "pages"), None);
        assert_eq!(status_text("a: 1\ndisk_records: none\n", "disk_records").as_deref(), Some("none"));
        assert_eq!(status_text("a: 1\n", "disk_records"), None);
        assert_eq!(http_ok_body("HTTP/1.1 405 Method Not Allowed\r\n\r\nno"), None);
        assert_eq!(http_ok_body("garbage"), None);
    }

    #[test]
    fn damaged_consoles() {
        assert_eq!(damage("VMOVE READY x\nVERIFY OK 1\nVERIFY OK 2\n"), None);
        assert_eq!(
            damage("VERIFY OK 1\n[   11.573032] BUG: kernel NULL pointer dereference, address: 0000000000000000\n[ 11.6] Oops: 0010\n").as_deref(),
            Some("[   11.573032] BUG: kernel NULL pointer dereference, address: 0000000000000000")
        );
        assert_eq!(damage("VERIFY FAIL page 7: crc\n").as_deref(), Some("VERIFY FAIL page 7: crc"));
        assert_eq!(damage("DISK OK 12\nDISK FAIL record 13: bad crc\n").as_deref(), Some("DISK FAIL record 13: bad crc"));
        assert_eq!(damage("VMOVE DISK none\nDISK OK 3\nDISK NOTE O_DIRECT\n"), None);
    }

    #[test]
    fn machine_files() {
        assert_eq!(cpu_model("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t: x\n").as_deref(), Some("AMD EPYC"));
        let g = mem_total_gib("MemTotal:       24634568 kB\nMemFree: 1 kB\n").unwrap();
        assert!((g - 23.49).abs() < 0.01, "{g}");
    }
}
