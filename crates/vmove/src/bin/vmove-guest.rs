//! The lab guest workload (runs inside the guest, as PID 1).
fn main() {
    vmove_guest::run()
}
