//! LIVE: QEMU migration capabilities on both sides.
use super::*;

const ID: CheckId = CheckId::QemuCapabilities;

/// QEMU 7.2.22's migration capabilities (Debian bookworm), as its agent reports them.
fn qemu72() -> QemuFeatures {
    qemu_features(
        "7.2.22",
        &[
            "auto-converge", "background-snapshot", "block", "compress", "dirty-bitmaps", "events",
            "late-block-activate", "multifd", "pause-before-switchover", "postcopy-blocktime",
            "postcopy-preempt", "postcopy-ram", "rdma-pin-all", "release-ram", "return-path",
            "validate-uuid", "x-colo", "x-ignore-shared", "xbzrle", "zero-blocks", "zero-copy-send",
        ],
    )
}

#[test]
fn passes_and_says_what_is_used() {
    let fx = Fx::new(Mode::Live);
    assert_eq!(
        fx.check(ID),
        f(
            ID,
            Verdict::Pass,
            "QEMU 8.2.2 and 8.2.2 have events, multifd, tls-creds; return-path used, switchover-ack used"
        )
    );
}

#[test]
fn an_optional_capability_one_side_lacks_is_not_used() {
    let mut fx = Fx::new(Mode::Live);
    fx.src.qemu = qemu72();
    assert_eq!(
        fx.check(ID),
        f(
            ID,
            Verdict::Pass,
            "QEMU 7.2.22 and 8.2.2 have events, multifd, tls-creds; return-path used, switchover-ack not used (host1 lacks it)"
        )
    );
}

#[test]
fn fails_when_a_needed_capability_is_missing() {
    let mut fx = Fx::new(Mode::Live);
    fx.tgt.qemu.migration_capabilities.retain(|c| c != "multifd");
    assert_eq!(
        fx.check(ID),
        f(ID, Verdict::Fail, "host2's QEMU 8.2.2 lacks migration capability multifd (parallel channels)")
    );
    // A single stream does not need it.
    fx.req.params.multifd_channels = 0;
    assert_eq!(fx.check(ID).verdict, Verdict::Pass);
}

#[test]
fn post_copy_needs_postcopy_ram_on_both_sides() {
    let mut fx = Fx::new(Mode::Live);
    fx.req.params.allow_postcopy = true;
    fx.req.params.converge = vmove_model::Converge::Postcopy;
    assert_eq!(fx.check(ID).verdict, Verdict::Pass);
    fx.src.qemu.migration_capabilities.retain(|c| c != "postcopy-ram");
    fx.tgt.qemu.migration_capabilities.retain(|c| c != "postcopy-ram");
    assert_eq!(
        fx.check(ID),
        f(
            ID,
            Verdict::Fail,
            "host1's QEMU 8.2.2 lacks migration capability postcopy-ram (post-copy); host2's QEMU 8.2.2 lacks migration capability postcopy-ram (post-copy)"
        )
    );
}

#[test]
fn tls_needs_the_tls_creds_parameter_unless_insecure() {
    let mut fx = Fx::new(Mode::Live);
    fx.tgt.qemu.migration_parameters.clear();
    assert_eq!(
        fx.check(ID),
        f(ID, Verdict::Fail, "host2's QEMU 8.2.2 lacks migration parameter tls-creds (TLS)")
    );
    fx.req.params.insecure_transport = true;
    assert_eq!(fx.check(ID).verdict, Verdict::Pass);
}

#[test]
fn an_agent_that_does_not_report_capabilities_warns() {
    let mut fx = Fx::new(Mode::Live);
    fx.src.qemu = QemuFeatures::default();
    assert_eq!(
        fx.check(ID),
        f(ID, Verdict::Warn, "not evaluated: host1 did not report its QEMU's migration capabilities")
    );
}

#[test]
fn needs_follow_the_parameters() {
    let p = MigrationParams::default();
    let names: Vec<&str> = crate::checks::qemu::needs(&p).iter().filter(|n| n.required).map(|n| n.name).collect();
    assert_eq!(names, ["events", "multifd", "tls-creds"]);
    let p = MigrationParams { multifd_channels: 0, insecure_transport: true, allow_postcopy: true, ..p };
    let names: Vec<&str> = crate::checks::qemu::needs(&p).iter().filter(|n| n.required).map(|n| n.name).collect();
    // converge=none never starts post-copy, allowed or not.
    assert_eq!(names, ["events"]);
    let p = MigrationParams { converge: vmove_model::Converge::Postcopy, ..p };
    let names: Vec<&str> = crate::checks::qemu::needs(&p).iter().filter(|n| n.required).map(|n| n.name).collect();
    assert_eq!(names, ["events", "postcopy-ram"]);
    // converge=auto uses post-copy where both QEMUs have it.
    let p = MigrationParams { converge: vmove_model::Converge::Auto, ..p };
    let needs = crate::checks::qemu::needs(&p);
    let optional: Vec<&str> = needs.iter().filter(|n| !n.required).map(|n| n.name).collect();
    assert_eq!(optional, ["postcopy-ram", "postcopy-preempt", "return-path", "switchover-ack"]);
}

#[test]
fn offline_modes_skip_it() {
    assert!(!CheckId::for_mode(Mode::Offline).contains(&ID));
    assert!(CheckId::for_mode(Mode::Live).contains(&ID));
}
