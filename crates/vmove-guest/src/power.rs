//! The ACPI power button: clean shutdown and power off.

use crate::disk::DiskHandle;
use crate::say;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit Linux: struct timeval (16 bytes), type, code, value.
pub const INPUT_EVENT_SIZE: usize = 24;

/// Decode one `struct input_event`: (type, code, value).
pub fn decode_event(b: &[u8; INPUT_EVENT_SIZE]) -> (u16, u16, i32) {
    (
        u16::from_ne_bytes([b[16], b[17]]),
        u16::from_ne_bytes([b[18], b[19]]),
        i32::from_ne_bytes([b[20], b[21], b[22], b[23]]),
    )
}

/// Whether an event is a press of the power key.
pub fn is_power_press(ev: (u16, u16, i32)) -> bool {
    ev == (EV_KEY, KEY_POWER, 1)
}

type Pending = Arc<Mutex<Option<Option<DiskHandle>>>>;

/// Watch /dev/input/event* (devices appearing later are picked up too).
pub fn start(disk: Option<DiskHandle>) {
    let pending: Pending = Arc::new(Mutex::new(Some(disk)));
    let _ = std::thread::Builder::new()
        .name("input-scan".to_string())
        .spawn(move || {
            let mut seen = BTreeSet::new();
            loop {
                if let Ok(rd) = std::fs::read_dir("/dev/input") {
                    for e in rd.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if !name.starts_with("event") || seen.contains(&name) {
                            continue;
                        }
                        let Ok(f) = File::open(e.path()) else {
                            continue;
                        };
                        seen.insert(name.clone());
                        let p = pending.clone();
                        let _ = std::thread::Builder::new()
                            .name(name)
                            .spawn(move || watch(f, &p));
                    }
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        });
}

fn watch(mut f: File, pending: &Pending) {
    let mut b = [0u8; INPUT_EVENT_SIZE];
    while f.read_exact(&mut b).is_ok() {
        if is_power_press(decode_event(&b)) {
            power_off(pending);
        }
    }
}

fn power_off(pending: &Pending) {
    let disk = match pending.lock() {
        Ok(mut g) => g.take(),
        Err(p) => p.into_inner().take(),
    };
    // Only the first press does anything.
    let Some(disk) = disk else { return };
    say("POWERING OFF");
    if let Some(d) = disk {
        if !d.stop(Duration::from_secs(10)) {
            say("DISK NOTE the writer did not stop in time");
        }
    }
    // SAFETY: sync() has no preconditions.
    unsafe { libc::sync() };
    if crate::is_init() {
        // SAFETY: reboot() with RB_POWER_OFF has no memory-safety preconditions; it does
        // not return on success.
        let r = unsafe { libc::reboot(libc::RB_POWER_OFF) };
        say(&format!(
            "VMOVE WARN reboot(RB_POWER_OFF) failed ({r}): {}",
            std::io::Error::last_os_error()
        ));
    } else {
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_key() {
        let mut b = [0u8; INPUT_EVENT_SIZE];
        b[16..18].copy_from_slice(&1u16.to_ne_bytes());
        b[18..20].copy_from_slice(&116u16.to_ne_bytes());
        b[20..24].copy_from_slice(&1i32.to_ne_bytes());
        assert!(is_power_press(decode_event(&b)));
        b[20..24].copy_from_slice(&0i32.to_ne_bytes());
        assert!(!is_power_press(decode_event(&b)));
        assert_eq!(std::mem::size_of::<libc::input_event>(), INPUT_EVENT_SIZE);
    }
}
