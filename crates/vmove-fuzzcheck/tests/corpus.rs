//! The fuzz smoke run of the default suite: every committed seed and crash input of every
//! fuzz target goes through the target's checks (`fuzz/corpus/TARGET/`), and a few thousand
//! mutations of them (bytes flipped, cut, repeated: a deterministic, seeded stand-in for the
//! fuzzer, seconds instead of hours). The coverage-guided runs are `scripts/fuzz`.
use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())).collect()
}

/// xorshift64: a fixed sequence, so a failure here reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.truncate(i);
            }
            2 if !v.is_empty() => {
                let (a, b) = (rng.below(v.len()), rng.below(v.len()));
                let (a, b) = (a.min(b), a.max(b));
                let piece = v[a..b].to_vec();
                v.splice(a..a, piece);
            }
            3 => {
                let i = rng.below(v.len() + 1);
                let tokens: [&[u8]; 8] = [b"\"", b"'", b"\n", b"=", b"99999999999999999999", b"-1", b"{", b"]"];
                let t = tokens[rng.below(tokens.len())];
                v.splice(i..i, t.iter().copied());
            }
            _ if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            _ => {}
        }
    }
    v
}

#[test]
fn every_fuzz_target_passes_its_corpus_and_mutations_of_it() {
    for (target, check) in vmove_fuzzcheck::TARGETS {
        let inputs = corpus(target);
        assert!(inputs.len() >= 5, "{target}: a seed corpus of {} inputs", inputs.len());
        for (name, data) in &inputs {
            let r = std::panic::catch_unwind(|| check(data));
            assert!(r.is_ok(), "{target}: corpus input {name} is a finding");
        }
        let mut rng = Rng(0x5eed_0000 ^ target.len() as u64);
        for i in 0..2000 {
            let (name, data) = &inputs[i % inputs.len()];
            let m = mutate(&mut rng, data);
            let r = std::panic::catch_unwind(|| check(&m));
            assert!(r.is_ok(), "{target}: mutation {i} of {name} is a finding: {:?}", String::from_utf8_lossy(&m));
        }
    }
}

#[test]
fn the_kept_crash_inputs_are_in_the_corpus() {
    // Each finding's input stays in the corpus, replayed above.
    for (target, file) in [("cluster_file", "crash-newline-in-name.toml"), ("oedacli", "crash-both-quotes.oeda")] {
        assert!(corpus(target).iter().any(|(n, _)| n == file), "{target}/{file}");
    }
}
