//! The memory dirtier's page format and the page store.
//!
//! Every 4 KiB page is 512 little-endian u64 words:
//!
//! | word   | content                                                  |
//! |--------|----------------------------------------------------------|
//! | 0      | page index                                               |
//! | 1      | generation number (bumped at every rewrite)              |
//! | 2      | checksum of the body (words 4..512)                      |
//! | 3      | magic `VMVPAGE1`                                         |
//! | 4..7   | `VMOVE-PLAINTEXT-MARKER##` (ASCII, found by stream greps) |
//! | 7..512 | pseudo-random words derived from (index, generation)     |
//!
//! The code is written with plain `while` loops over `u64` words so that it stays fast
//! even in an unoptimised (debug) build running under TCG.

use std::fmt;
use std::sync::Mutex;

/// Page size in bytes.
pub const PAGE_SIZE: usize = 4096;
/// Words per page.
pub const WORDS: usize = PAGE_SIZE / 8;
/// The marker every page contains (in plain text).
pub const MARKER: &[u8; 22] = b"VMOVE-PLAINTEXT-MARKER";

const W_INDEX: usize = 0;
const W_GEN: usize = 1;
const W_SUM: usize = 2;
const W_MAGIC: usize = 3;
const BODY: usize = 4;
const MARKER_WORDS_AT: usize = 4;
const RANDOM_AT: usize = 7;
const PAGE_MAGIC: u64 = u64::from_le_bytes(*b"VMVPAGE1");

const MARKER_BYTES: [u8; 24] = {
    let mut b = [b'#'; 24];
    let mut i = 0;
    while i < MARKER.len() {
        b[i] = MARKER[i];
        i += 1;
    }
    b
};
const MARKER_WORDS: [u64; 3] = [
    word_at(&MARKER_BYTES, 0),
    word_at(&MARKER_BYTES, 8),
    word_at(&MARKER_BYTES, 16),
];

const fn word_at(b: &[u8; 24], at: usize) -> u64 {
    u64::from_le_bytes([
        b[at],
        b[at + 1],
        b[at + 2],
        b[at + 3],
        b[at + 4],
        b[at + 5],
        b[at + 6],
        b[at + 7],
    ])
}

/// One page, aligned to 4 KiB so that it maps exactly onto one guest-physical page.
#[repr(C, align(4096))]
#[derive(Clone)]
pub struct Page(pub [u64; WORDS]);

impl Page {
    /// An all-zero page.
    pub const ZERO: Page = Page([0; WORDS]);

    /// The page as bytes (little-endian words).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(PAGE_SIZE);
        for w in self.0.iter() {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v
    }
}

impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Page {{ index: {}, gen: {}, sum: {:#x}, magic: {:#x} }}",
            self.0[W_INDEX], self.0[W_GEN], self.0[W_SUM], self.0[W_MAGIC]
        )
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn seed(index: u64, gen: u64) -> u64 {
    let s = splitmix64(index ^ splitmix64(gen ^ 0x5641_4D4F_5645_2121));
    if s == 0 {
        0x1234_5678_9ABC_DEF1
    } else {
        s
    }
}

#[inline(always)]
fn xorshift(x: &mut u64) -> u64 {
    let mut v = *x;
    v ^= v >> 12;
    v ^= v << 25;
    v ^= v >> 27;
    *x = v;
    v.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[inline(always)]
fn sum_step(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(0x0000_0100_0000_01B3).rotate_left(23)
}

const SUM_INIT: u64 = 0xCBF2_9CE4_8422_2325;

/// The checksum of a page body as stored.
pub fn body_checksum(p: &Page) -> u64 {
    let mut h = SUM_INIT;
    let mut i = BODY;
    while i < WORDS {
        h = sum_step(h, p.0[i]);
        i += 1;
    }
    h
}

/// Write the content of page `index` at generation `gen` into `p`.
pub fn fill(p: &mut Page, index: u64, gen: u64) {
    let w = &mut p.0;
    let mut h = SUM_INIT;
    let mut i = MARKER_WORDS_AT;
    while i < RANDOM_AT {
        let v = MARKER_WORDS[i - MARKER_WORDS_AT];
        w[i] = v;
        h = sum_step(h, v);
        i += 1;
    }
    let mut x = seed(index, gen);
    while i < WORDS {
        let v = xorshift(&mut x);
        w[i] = v;
        h = sum_step(h, v);
        i += 1;
    }
    w[W_INDEX] = index;
    w[W_GEN] = gen;
    w[W_SUM] = h;
    w[W_MAGIC] = PAGE_MAGIC;
}

/// What is wrong with a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageError {
    /// The magic word is wrong (page never written, or overwritten by something else).
    BadMagic { found: u64 },
    /// The page carries another page's index.
    BadIndex { found: u64 },
    /// The page holds another generation than the one last written (a lost or stale write).
    BadGen { found: u64 },
    /// The body does not match the stored checksum (torn or corrupted page).
    BadChecksum { stored: u64, computed: u64 },
    /// The plaintext marker is missing.
    BadMarker,
    /// A body word differs from what (index, generation) derive.
    BadWord {
        word: usize,
        expected: u64,
        found: u64,
    },
}

/// A page failure: which page, what generation was expected, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageFailure {
    /// The page index.
    pub index: u64,
    /// The generation that was last written.
    pub expected_gen: u64,
    /// The generation found in the page header.
    pub found_gen: u64,
    /// Details.
    pub error: PageError,
}

impl fmt::Display for PageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "page={} expected_gen={} found_gen={} ",
            self.index, self.expected_gen, self.found_gen
        )?;
        match &self.error {
            PageError::BadMagic { found } => write!(f, "bad magic {found:#018x}"),
            PageError::BadIndex { found } => write!(f, "wrong index {found}"),
            PageError::BadGen { found } => write!(f, "wrong generation {found}"),
            PageError::BadChecksum { stored, computed } => {
                write!(
                    f,
                    "checksum mismatch stored={stored:#018x} computed={computed:#018x}"
                )
            }
            PageError::BadMarker => write!(f, "marker missing"),
            PageError::BadWord {
                word,
                expected,
                found,
            } => write!(
                f,
                "word {word} expected {expected:#018x} found {found:#018x}"
            ),
        }
    }
}

fn check_header(p: &Page, index: u64, gen: u64) -> Result<(), PageError> {
    let w = &p.0;
    if w[W_MAGIC] != PAGE_MAGIC {
        return Err(PageError::BadMagic { found: w[W_MAGIC] });
    }
    if w[W_INDEX] != index {
        return Err(PageError::BadIndex { found: w[W_INDEX] });
    }
    if w[W_GEN] != gen {
        return Err(PageError::BadGen { found: w[W_GEN] });
    }
    if w[MARKER_WORDS_AT] != MARKER_WORDS[0]
        || w[MARKER_WORDS_AT + 1] != MARKER_WORDS[1]
        || w[MARKER_WORDS_AT + 2] != MARKER_WORDS[2]
    {
        return Err(PageError::BadMarker);
    }
    Ok(())
}

fn failure(p: &Page, index: u64, gen: u64, error: PageError) -> PageFailure {
    PageFailure {
        index,
        expected_gen: gen,
        found_gen: p.0[W_GEN],
        error,
    }
}

/// Quick check (used by the sweeps): header matches (index, gen) and the body matches the
/// stored checksum.
pub fn verify(p: &Page, index: u64, gen: u64) -> Result<(), PageFailure> {
    check_header(p, index, gen).map_err(|e| failure(p, index, gen, e))?;
    let computed = body_checksum(p);
    if computed != p.0[W_SUM] {
        return Err(failure(
            p,
            index,
            gen,
            PageError::BadChecksum {
                stored: p.0[W_SUM],
                computed,
            },
        ));
    }
    Ok(())
}

/// Exact check: every word is what (index, gen) derive.
pub fn verify_exact(p: &Page, index: u64, gen: u64) -> Result<(), PageFailure> {
    check_header(p, index, gen).map_err(|e| failure(p, index, gen, e))?;
    let w = &p.0;
    let mut h = SUM_INIT;
    let mut i = MARKER_WORDS_AT;
    while i < RANDOM_AT {
        h = sum_step(h, w[i]);
        i += 1;
    }
    let mut x = seed(index, gen);
    while i < WORDS {
        let v = xorshift(&mut x);
        if w[i] != v {
            return Err(failure(
                p,
                index,
                gen,
                PageError::BadWord {
                    word: i,
                    expected: v,
                    found: w[i],
                },
            ));
        }
        h = sum_step(h, v);
        i += 1;
    }
    if h != w[W_SUM] {
        return Err(failure(
            p,
            index,
            gen,
            PageError::BadChecksum {
                stored: w[W_SUM],
                computed: h,
            },
        ));
    }
    Ok(())
}

/// Pages per lock region (1 MiB).
pub const REGION_PAGES: usize = 256;

/// A lock region: pages and the generation last written to each.
pub struct Region {
    /// Index of the first page of the region.
    pub first: u64,
    /// The pages.
    pub pages: Vec<Page>,
    /// Expected generation of each page (kept apart from the pages themselves).
    pub gens: Vec<u64>,
}

/// The whole working set, split into independently locked regions so that the dirtier
/// and the verifier can run in parallel.
pub struct Store {
    regions: Vec<Mutex<Region>>,
    npages: u64,
}

impl Store {
    /// Allocate and fill `npages` pages at generation 1.
    pub fn new(npages: u64) -> Store {
        let mut regions = Vec::new();
        let mut first = 0u64;
        while first < npages {
            let n = (npages - first).min(REGION_PAGES as u64) as usize;
            let mut pages = vec![Page::ZERO; n];
            let mut i = 0;
            while i < n {
                fill(&mut pages[i], first + i as u64, 1);
                i += 1;
            }
            regions.push(Mutex::new(Region {
                first,
                pages,
                gens: vec![1; n],
            }));
            first += n as u64;
        }
        Store { regions, npages }
    }

    /// Number of pages.
    pub fn npages(&self) -> u64 {
        self.npages
    }

    /// Number of lock regions.
    pub fn nregions(&self) -> usize {
        self.regions.len()
    }

    /// Lock region `r`.
    pub fn region(&self, r: usize) -> std::sync::MutexGuard<'_, Region> {
        // A panic while holding the lock leaves the data usable; keep going.
        self.regions[r]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Rewrite page `index` with the next generation, after checking it still holds exactly
    /// what was last written. The page is rewritten even when the check fails.
    pub fn rewrite(&self, index: u64) -> Result<(), PageFailure> {
        let r = (index / REGION_PAGES as u64) as usize;
        let mut g = self.region(r);
        let i = (index - g.first) as usize;
        let gen = g.gens[i];
        let res = verify_exact(&g.pages[i], index, gen);
        let next = gen + 1;
        fill(&mut g.pages[i], index, next);
        g.gens[i] = next;
        res
    }

    /// Verify region `r` (quick check of every page); returns failures (at most `max`
    /// reported, the count is the second element).
    pub fn verify_region(&self, r: usize, max: usize) -> (Vec<PageFailure>, u64) {
        let g = self.region(r);
        let mut out = Vec::new();
        let mut bad = 0;
        let mut i = 0;
        while i < g.pages.len() {
            if let Err(f) = verify(&g.pages[i], g.first + i as u64, g.gens[i]) {
                bad += 1;
                if out.len() < max {
                    out.push(f);
                }
            }
            i += 1;
        }
        (out, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(index: u64, gen: u64) -> Page {
        let mut p = Page::ZERO;
        fill(&mut p, index, gen);
        p
    }

    #[test]
    fn layout_and_marker() {
        assert_eq!(std::mem::size_of::<Page>(), PAGE_SIZE);
        assert_eq!(std::mem::align_of::<Page>(), PAGE_SIZE);
        let p = page(42, 7);
        let b = p.to_bytes();
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 42);
        assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 7);
        assert_eq!(&b[24..32], b"VMVPAGE1");
        assert_eq!(&b[32..54], MARKER);
        let found = b.windows(MARKER.len()).filter(|w| w == MARKER).count();
        assert!(found >= 1);
    }

    #[test]
    fn deterministic_and_distinct() {
        assert_eq!(page(3, 9).0, page(3, 9).0);
        assert_ne!(page(3, 9).0[RANDOM_AT..], page(3, 10).0[RANDOM_AT..]);
        assert_ne!(page(3, 9).0[RANDOM_AT..], page(4, 9).0[RANDOM_AT..]);
        // Not trivially compressible: most words differ.
        let p = page(0, 1);
        let distinct: std::collections::BTreeSet<u64> = p.0[RANDOM_AT..].iter().copied().collect();
        assert!(distinct.len() > 500);
    }

    #[test]
    fn verify_good_page() {
        let p = page(5, 3);
        assert_eq!(verify(&p, 5, 3), Ok(()));
        assert_eq!(verify_exact(&p, 5, 3), Ok(()));
    }

    #[test]
    fn verify_detects_stale_generation() {
        let p = page(5, 3);
        let e = verify(&p, 5, 4).unwrap_err();
        assert_eq!(e.error, PageError::BadGen { found: 3 });
        assert_eq!((e.index, e.expected_gen, e.found_gen), (5, 4, 3));
        assert!(
            e.to_string().contains("page=5 expected_gen=4 found_gen=3"),
            "{e}"
        );
    }

    #[test]
    fn verify_detects_wrong_index_and_magic() {
        let p = page(5, 3);
        assert_eq!(
            verify(&p, 6, 3).unwrap_err().error,
            PageError::BadIndex { found: 5 }
        );
        let z = Page::ZERO;
        assert!(matches!(
            verify(&z, 0, 1).unwrap_err().error,
            PageError::BadMagic { .. }
        ));
    }

    #[test]
    fn verify_detects_body_corruption() {
        for word in [RANDOM_AT, 100, WORDS - 1] {
            let mut p = page(9, 2);
            p.0[word] ^= 1 << 17;
            assert!(matches!(
                verify(&p, 9, 2).unwrap_err().error,
                PageError::BadChecksum { .. }
            ));
            assert!(matches!(
                verify_exact(&p, 9, 2).unwrap_err().error,
                PageError::BadWord { word: w, .. } if w == word
            ));
        }
        let mut p = page(9, 2);
        p.0[MARKER_WORDS_AT] = 0;
        assert_eq!(verify(&p, 9, 2).unwrap_err().error, PageError::BadMarker);
    }

    #[test]
    fn verify_exact_detects_consistent_forgery() {
        // A body of another generation with a recomputed checksum and a patched header
        // passes the quick check but not the exact one.
        let mut p = page(9, 2);
        p.0[W_GEN] = 3;
        assert_eq!(verify(&p, 9, 3), Ok(()));
        assert!(matches!(
            verify_exact(&p, 9, 3).unwrap_err().error,
            PageError::BadWord { .. }
        ));
    }

    #[test]
    fn store_rewrite_and_verify() {
        let s = Store::new(600);
        assert_eq!(s.npages(), 600);
        assert_eq!(s.nregions(), 3);
        for r in 0..s.nregions() {
            assert_eq!(s.verify_region(r, 10).1, 0);
        }
        for i in 0..600 {
            s.rewrite(i).unwrap();
        }
        s.rewrite(599).unwrap();
        {
            let g = s.region(2);
            assert_eq!(g.gens[599 - 512], 3);
            assert_eq!(g.gens[0], 2);
        }
        // Simulate a lost write: the page goes back to an older generation.
        {
            let mut g = s.region(1);
            let old = page(300, 1);
            g.pages[300 - 256] = old;
        }
        let (fails, n) = s.verify_region(1, 10);
        assert_eq!(n, 1);
        assert_eq!(fails[0].index, 300);
        assert_eq!(fails[0].expected_gen, 2);
        assert_eq!(fails[0].found_gen, 1);
        // The dirtier notices too, and repairs the page by rewriting it.
        assert!(s.rewrite(300).is_err());
        assert_eq!(s.verify_region(1, 10).1, 0);
    }
}
