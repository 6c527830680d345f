//! Convergence: a guest that dirties memory twice as fast as the (capped) migration link
//! moves with `--converge throttle` and with `--converge postcopy`, its memory verifies
//! after, one QEMU on the target; with `--converge none` it times out and keeps running on
//! the source; post-copy with the link cut mid-way is paused by the target when its bytes
//! stop, recovers when the link is back, and the guest verifies.
mod common;

use std::time::{Duration, Instant};

use common::faults::in_ns;
use common::*;

/// The migration link's cap (tc tbf on the source's management link), Mbit/s.
const LINK_MBIT: u32 = 160;
/// The guest dirties twice the capped link, MB/s.
const DIRTY_2X: u32 = 2 * LINK_MBIT / 8;

fn cap_link(lab: &Lab, host: &str) {
    let rate = format!("{LINK_MBIT}mbit");
    let ok = in_ns(&lab.host_ns(host), &["tc", "qdisc", "replace", "dev", "mgmt0", "root", "tbf", "rate", &rate, "burst", "64kb", "latency", "400ms"]);
    assert!(ok, "tc on {host}");
}

/// A 2-host lab with the link from host1 capped and a guest on host1 dirtying 2× the link.
fn busy_lab(tag: &str, ip: &str) -> Lab {
    let lab = Lab::up(tag, 2);
    cap_link(&lab, "host1");
    lab.boot_guest("vm1", "host1", ip, DIRTY_2X, false);
    lab
}

fn job_id(out: &str) -> String {
    out.split("Action ID : ").nth(1).and_then(|r| r.split_whitespace().next()).expect("job id").to_string()
}

fn escalations(lab: &Lab, id: &str) -> Vec<String> {
    let j = lab.json(&["job", "show", id]);
    j["events"].as_array().unwrap().iter().filter(|e| e["event"] == "escalation").map(|e| e["action"].as_str().unwrap_or("").to_string()).collect()
}

fn moved_and_verifies(lab: &Lab) {
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host2".to_string()], "one QEMU, on the target");
    assert_eq!(lab.cluster_host("vm1"), "host2");
    let log = lab.wait_log("vm1", "VERIFY OK after the move", Duration::from_secs(90), |l| l.contains("VERIFY OK"));
    assert!(!log.contains("VERIFY FAIL"), "{log}");
}

#[test]
fn converge_throttle_moves_a_guest_dirtying_twice_the_link() {
    let lab = busy_lab("cthr", "192.0.2.71");
    // The precheck measures the capped link and the dirty rate and predicts the throttle.
    let f = lab.json(&["migrate", "vm1", "--to", "host2", "--converge", "throttle", "--timeout", "240s", "--precheck"]);
    let conv = f["findings"].as_array().unwrap().iter().find(|x| x["id"] == "predicted-convergence").unwrap()["reason"].as_str().unwrap().to_string();
    // Measured, not guessed. Under TCG QEMU's page sampling reads the guest's rate low
    // (6 MB/s where the migration then sees 19), so the verdict itself is not pinned here:
    // the model's verdicts are the unit tests of vmove-plan.
    assert!(!conv.contains("not measured") && conv.contains("MB/s dirtied") && conv.contains(" at 1"), "{conv}");
    let t = Instant::now();
    let out = lab.ok(&["migrate", "vm1", "--to", "host2", "--converge", "throttle", "--timeout", "240s"]);
    let id = job_id(&out);
    let e = escalations(&lab, &id);
    assert!(e.iter().any(|a| a.starts_with("throttling the guest")), "the throttle rung was used: {e:?}\n{out}");
    eprintln!("throttle: moved in {:.1} s; escalations: {e:?}", t.elapsed().as_secs_f64());
    moved_and_verifies(&lab);
}

#[test]
fn converge_none_times_out_and_leaves_the_guest_on_the_source() {
    let lab = busy_lab("cnone", "192.0.2.72");
    let pid = lab.qemu_pids("vm1");
    let o = lab.vmove(&["migrate", "vm1", "--to", "host2", "--converge", "none", "--timeout", "25s", "--ignore-check", "predicted-convergence"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("timed out after 25 s"), "{err}");
    assert_eq!(lab.qemu_pids("vm1"), pid, "the same QEMU still runs on host1, untouched");
    assert_eq!(lab.cluster_host("vm1"), "host1");
    assert_eq!(lab.json(&["guest", "show", "vm1"])["state"], "running");
    let log = lab.wait_log("vm1", "VERIFY OK on the source", Duration::from_secs(60), |l| l.contains("VERIFY OK"));
    assert!(!log.contains("VERIFY FAIL"), "{log}");
}

/// Allows post-copy in the lab's cluster policy.
fn allow_postcopy(lab: &Lab) {
    let text = std::fs::read_to_string(&lab.cluster).unwrap();
    let text = text.replace("allow_postcopy = false", "allow_postcopy = true");
    assert!(text.contains("allow_postcopy = true"), "{text}");
    std::fs::write(&lab.cluster, text).unwrap();
}

#[test]
fn converge_postcopy_moves_the_guest() {
    let lab = busy_lab("cpost", "192.0.2.73");
    allow_postcopy(&lab);
    let out = lab.ok(&["migrate", "vm1", "--to", "host2", "--converge", "postcopy", "--timeout", "240s"]);
    let e = escalations(&lab, &job_id(&out));
    assert!(e.iter().any(|a| a.starts_with("switching to post-copy")), "{e:?}\n{out}");
    moved_and_verifies(&lab);
}

#[test]
fn postcopy_survives_a_cut_link() {
    let lab = busy_lab("ccut", "192.0.2.74");
    allow_postcopy(&lab);
    let id = lab
        .ok(&["migrate", "vm1", "--to", "host2", "--converge", "postcopy", "--timeout", "240s", "--detach"])
        .trim()
        .to_string();
    wait_for("post-copy", Duration::from_secs(180), || {
        let j = lab.json(&["job", "show", &id]);
        assert_eq!(j["status"], "running", "{}", j["error"]);
        escalations(&lab, &id).iter().any(|a| a.starts_with("switching to post-copy")).then_some(())
    });
    // The target is in post-copy: the guest runs there, its pages still come from host1.
    wait_for("the guest to run on the target", Duration::from_secs(60), || {
        let j = lab.json(&["job", "show", &id]);
        j["events"].as_array().unwrap().iter().any(|e| e["message"].as_str().is_some_and(|m| m.starts_with("post-copy: the guest runs on host2"))).then_some(())
    });
    // Cut the migration link in the middle of post-copy: nothing errors (a link that goes
    // down sends no reset), bytes stop; the target pauses the hung post-copy.
    let ns = lab.host_ns("host1");
    assert!(in_ns(&ns, &["ip", "link", "set", "mgmt0", "down"]));
    wait_for("the hung post-copy paused", Duration::from_secs(60), || {
        escalations(&lab, &id).iter().any(|a| a.starts_with("pausing post-copy")).then_some(())
    });
    // The link comes back: the target listens again, the source resumes to it.
    assert!(in_ns(&ns, &["ip", "link", "set", "mgmt0", "up"]));
    cap_link(&lab, "host1");
    let o = lab.vmove(&["job", "watch", &id]);
    assert!(o.status.success(), "job {id}: {}", String::from_utf8_lossy(&o.stderr));
    let j = lab.json(&["job", "show", &id]);
    let events = j["events"].to_string();
    assert!(events.contains("recovering post-copy"), "the recovery ran: {events}");
    moved_and_verifies(&lab);
}
