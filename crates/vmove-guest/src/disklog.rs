//! The data-disk log: an append-only sequence of 512-byte records at consecutive sectors.
//!
//! Record layout (little-endian):
//!
//! | bytes    | content                                   |
//! |----------|-------------------------------------------|
//! | 0..8     | magic `VMVLOG01`                          |
//! | 8..16    | sequence number (== sector index)         |
//! | 16..24   | boot number (1 for the first boot)        |
//! | 24..32   | timestamp, ns since the Unix epoch        |
//! | 32..34   | payload length                            |
//! | 34..508  | payload (zero padded)                     |
//! | 508..512 | CRC-32 of bytes 0..508                    |
//!
//! The log ends at the first all-zero sector (or the end of the device).

use crate::crc32::crc32;
use std::fmt;
use std::io;

/// Sector (and record) size.
pub const SECTOR: usize = 512;
/// Record magic.
pub const MAGIC: [u8; 8] = *b"VMVLOG01";
/// Maximum payload length.
pub const MAX_PAYLOAD: usize = 508 - 34;

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number; record `n` lives in sector `n`.
    pub seq: u64,
    /// Boot number of the boot that wrote it.
    pub boot: u64,
    /// Wall clock time of the write, ns since the Unix epoch.
    pub timestamp_ns: u64,
    /// Free-form payload (truncated to [`MAX_PAYLOAD`] bytes).
    pub payload: Vec<u8>,
}

/// Why a sector is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// All zero: the end of the log.
    Empty,
    /// Wrong magic.
    BadMagic,
    /// CRC mismatch.
    BadCrc { stored: u32, computed: u32 },
    /// Payload length out of range.
    BadLength(usize),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Empty => write!(f, "empty sector"),
            RecordError::BadMagic => write!(f, "bad magic"),
            RecordError::BadCrc { stored, computed } => {
                write!(f, "bad crc stored={stored:08x} computed={computed:08x}")
            }
            RecordError::BadLength(n) => write!(f, "bad payload length {n}"),
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Encode a record into `out` (exactly one sector).
pub fn encode_into(r: &Record, out: &mut [u8]) {
    assert_eq!(out.len(), SECTOR);
    out.fill(0);
    let n = r.payload.len().min(MAX_PAYLOAD);
    out[0..8].copy_from_slice(&MAGIC);
    out[8..16].copy_from_slice(&r.seq.to_le_bytes());
    out[16..24].copy_from_slice(&r.boot.to_le_bytes());
    out[24..32].copy_from_slice(&r.timestamp_ns.to_le_bytes());
    out[32..34].copy_from_slice(&(n as u16).to_le_bytes());
    out[34..34 + n].copy_from_slice(&r.payload[..n]);
    let crc = crc32(&out[..508]);
    out[508..512].copy_from_slice(&crc.to_le_bytes());
}

/// Encode a record.
pub fn encode(r: &Record) -> [u8; SECTOR] {
    let mut out = [0u8; SECTOR];
    encode_into(r, &mut out);
    out
}

/// Whether a sector is all zero.
pub fn is_zero(s: &[u8]) -> bool {
    s.iter().all(|&b| b == 0)
}

/// Decode a sector.
pub fn decode(s: &[u8]) -> Result<Record, RecordError> {
    assert_eq!(s.len(), SECTOR);
    if is_zero(s) {
        return Err(RecordError::Empty);
    }
    if s[0..8] != MAGIC {
        return Err(RecordError::BadMagic);
    }
    let stored = u32::from_le_bytes([s[508], s[509], s[510], s[511]]);
    let computed = crc32(&s[..508]);
    if stored != computed {
        return Err(RecordError::BadCrc { stored, computed });
    }
    let n = u16::from_le_bytes([s[32], s[33]]) as usize;
    if n > MAX_PAYLOAD {
        return Err(RecordError::BadLength(n));
    }
    Ok(Record {
        seq: u64_at(s, 8),
        boot: u64_at(s, 16),
        timestamp_ns: u64_at(s, 24),
        payload: s[34..34 + n].to_vec(),
    })
}

/// The result of reading the log at boot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scan {
    /// Number of valid records (the next record goes to this sector).
    pub records: u64,
    /// Boot number of the last valid record (0 for an empty log).
    pub last_boot: u64,
    /// A torn or garbage last record that will be overwritten.
    pub note: Option<String>,
    /// Corruption before the last record: the log must not be appended to.
    pub fail: Option<String>,
}

fn check(s: &[u8], i: u64, last_boot: u64) -> Result<Record, String> {
    let r = decode(s).map_err(|e| e.to_string())?;
    if r.seq != i {
        return Err(format!("sequence {} where {} was expected", r.seq, i));
    }
    if r.boot < last_boot {
        return Err(format!("boot number {} after boot {}", r.boot, last_boot));
    }
    Ok(r)
}

/// Read the log. `read_at(offset, buf)` fills as much of `buf` as the device holds at
/// `offset` and returns the byte count (0 at the end). `capacity` is the device size in
/// sectors.
pub fn scan<F>(mut read_at: F, capacity: u64) -> io::Result<Scan>
where
    F: FnMut(u64, &mut [u8]) -> io::Result<usize>,
{
    const CHUNK: usize = 128 * SECTOR;
    let mut buf = vec![0u8; CHUNK];
    let mut buf_first = 0u64; // first sector in buf
    let mut buf_len = 0usize; // sectors in buf
    let mut out = Scan::default();
    // Returns sector i, or None past the end of the device.
    let mut sector = |i: u64, buf: &mut Vec<u8>, first: &mut u64, len: &mut usize| {
        if i >= capacity {
            return Ok::<Option<Vec<u8>>, io::Error>(None);
        }
        if i < *first || i >= *first + *len as u64 {
            let want = ((capacity - i) as usize).min(CHUNK / SECTOR) * SECTOR;
            let mut got = 0;
            while got < want {
                let n = read_at(i * SECTOR as u64 + got as u64, &mut buf[got..want])?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            *first = i;
            *len = got / SECTOR;
            if *len == 0 {
                return Ok(None);
            }
        }
        let at = (i - *first) as usize * SECTOR;
        Ok(Some(buf[at..at + SECTOR].to_vec()))
    };
    let mut i = 0u64;
    while let Some(s) = sector(i, &mut buf, &mut buf_first, &mut buf_len)? {
        if is_zero(&s) {
            break;
        }
        match check(&s, i, out.last_boot) {
            Ok(r) => {
                out.records = i + 1;
                out.last_boot = r.boot;
            }
            Err(what) => {
                let next = sector(i + 1, &mut buf, &mut buf_first, &mut buf_len)?;
                let is_last = next.as_deref().is_none_or(is_zero);
                if is_last {
                    out.note = Some(format!(
                        "torn last record at sector {i} ({what}): treated as the end, will be overwritten"
                    ));
                } else {
                    out.fail = Some(format!("sector {i}: {what}"));
                }
                break;
            }
        }
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, boot: u64) -> Record {
        Record {
            seq,
            boot,
            timestamp_ns: 1_700_000_000_000_000_000 + seq,
            payload: format!("boot={boot} seq={seq}").into_bytes(),
        }
    }

    fn disk(sectors: usize, records: &[Record]) -> Vec<u8> {
        let mut d = vec![0u8; sectors * SECTOR];
        for r in records {
            let at = r.seq as usize * SECTOR;
            d[at..at + SECTOR].copy_from_slice(&encode(r));
        }
        d
    }

    fn scan_vec(d: &[u8]) -> Scan {
        scan(
            |off, buf| {
                let off = off as usize;
                if off >= d.len() {
                    return Ok(0);
                }
                let n = buf.len().min(d.len() - off);
                buf[..n].copy_from_slice(&d[off..off + n]);
                Ok(n)
            },
            (d.len() / SECTOR) as u64,
        )
        .unwrap()
    }

    fn log(n: u64) -> Vec<Record> {
        (0..n).map(|i| rec(i, 1 + i / 100)).collect()
    }

    #[test]
    fn roundtrip() {
        let r = rec(12, 3);
        let s = encode(&r);
        assert_eq!(&s[0..8], b"VMVLOG01");
        assert_eq!(decode(&s), Ok(r));
        let long = Record {
            payload: vec![b'x'; 1000],
            ..rec(0, 1)
        };
        let d = decode(&encode(&long)).unwrap();
        assert_eq!(d.payload.len(), MAX_PAYLOAD);
    }

    #[test]
    fn decode_errors() {
        assert_eq!(decode(&[0u8; SECTOR]), Err(RecordError::Empty));
        let mut s = encode(&rec(1, 1));
        s[100] ^= 0x40;
        assert!(matches!(decode(&s), Err(RecordError::BadCrc { .. })));
        let mut s = encode(&rec(1, 1));
        s[508] ^= 1;
        assert!(matches!(decode(&s), Err(RecordError::BadCrc { .. })));
        let mut s = encode(&rec(1, 1));
        s[0] = b'X';
        assert_eq!(decode(&s), Err(RecordError::BadMagic));
        let mut s = [0xA5u8; SECTOR];
        assert_eq!(decode(&s), Err(RecordError::BadMagic));
        s[0..8].copy_from_slice(&MAGIC);
        assert!(matches!(decode(&s), Err(RecordError::BadCrc { .. })));
    }

    #[test]
    fn scan_empty_and_full() {
        assert_eq!(scan_vec(&disk(16, &[])), Scan::default());
        let s = scan_vec(&disk(16, &log(5)));
        assert_eq!((s.records, s.last_boot, s.note, s.fail), (5, 1, None, None));
        // A completely full device ends the log at the device end.
        let s = scan_vec(&disk(300, &log(300)));
        assert_eq!(
            (s.records, s.last_boot, s.note, s.fail),
            (300, 3, None, None)
        );
        // Zero-length device.
        assert_eq!(scan_vec(&[]), Scan::default());
    }

    #[test]
    fn scan_across_chunks() {
        let s = scan_vec(&disk(1000, &log(517)));
        assert_eq!(s.records, 517);
        assert!(s.note.is_none() && s.fail.is_none());
    }

    #[test]
    fn torn_last_record_is_a_note() {
        let mut d = disk(16, &log(6));
        d[5 * SECTOR + 200] ^= 0xFF;
        let s = scan_vec(&d);
        assert_eq!(s.records, 5);
        assert!(s.fail.is_none());
        assert!(s.note.as_deref().unwrap().contains("sector 5"), "{s:?}");
        // Garbage (not a record at all) as the last sector, also at the device end.
        let mut d = disk(6, &log(5));
        d[5 * SECTOR..].fill(0x5A);
        let s = scan_vec(&d);
        assert_eq!(s.records, 5);
        assert!(s.note.is_some() && s.fail.is_none());
        // A torn first record.
        let mut d = disk(16, &[]);
        d[..100].fill(7);
        let s = scan_vec(&d);
        assert_eq!(s.records, 0);
        assert!(s.note.is_some() && s.fail.is_none());
    }

    #[test]
    fn corruption_before_last_is_a_failure() {
        let mut d = disk(16, &log(6));
        d[2 * SECTOR + 40] ^= 1;
        let s = scan_vec(&d);
        assert_eq!(s.records, 2);
        assert!(
            s.fail.as_deref().unwrap().starts_with("sector 2: bad crc"),
            "{s:?}"
        );
        // Two garbage sectors at the end: the first of them is not the last record.
        let mut d = disk(16, &log(6));
        d[4 * SECTOR..6 * SECTOR].fill(0x33);
        assert!(scan_vec(&d).fail.is_some());
    }

    #[test]
    fn sequence_gaps_and_boot_order() {
        // Record 3 missing, replaced by a valid record with the wrong sequence number.
        let mut recs = log(6);
        recs[3].seq = 4;
        let mut d = disk(16, &[]);
        for (i, r) in recs.iter().enumerate() {
            d[i * SECTOR..(i + 1) * SECTOR].copy_from_slice(&encode(r));
        }
        let s = scan_vec(&d);
        assert!(
            s.fail.as_deref().unwrap().contains("sequence 4 where 3"),
            "{s:?}"
        );
        // Boot numbers must not go backwards.
        let mut recs = log(4);
        recs[1].boot = 2;
        recs[2].boot = 1;
        let s = scan_vec(&disk(16, &recs));
        assert!(
            s.fail
                .as_deref()
                .unwrap()
                .contains("boot number 1 after boot 2"),
            "{s:?}"
        );
        // A hole ends the log (the records after it are not looked at).
        let mut d = disk(16, &log(6));
        d[3 * SECTOR..4 * SECTOR].fill(0);
        let s = scan_vec(&d);
        assert_eq!(s.records, 3);
        assert!(s.note.is_none() && s.fail.is_none());
    }
}
