//! A deterministic corpus generator: Zipf-distributed words over a
//! generated vocabulary (with some non-ASCII words), for demos and benches.
//! The same seed and size always give the same bytes.

use std::io::Write;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "de", "an", "er", "qu", "zo", "vi", "bel",
    "gar", "tor", "ün", "é", "ñа",
];

/// The `n`-th word of the vocabulary.
pub fn word(n: usize) -> String {
    let mut w = String::new();
    let mut x = n + 1;
    while x > 0 {
        w.push_str(SYLLABLES[x % SYLLABLES.len()]);
        x /= SYLLABLES.len();
    }
    if n.is_multiple_of(7) {
        let mut chars = w.chars();
        chars
            .next()
            .map_or(String::new(), |c| c.to_uppercase().chain(chars).collect())
    } else {
        w
    }
}

/// Writes about `bytes` bytes of Zipf(s = 1.0) text over `vocabulary` words.
pub fn generate(
    out: &mut impl Write,
    bytes: u64,
    vocabulary: usize,
    seed: u64,
) -> std::io::Result<()> {
    let words: Vec<String> = (0..vocabulary.max(1)).map(word).collect();
    let mut cdf = Vec::with_capacity(words.len());
    let mut acc = 0.0;
    for k in 1..=words.len() {
        acc += 1.0 / k as f64;
        cdf.push(acc);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut written = 0u64;
    let mut line = 0u64;
    let mut buf = Vec::with_capacity(1 << 16);
    while written < bytes {
        let r = rng.gen::<f64>() * acc;
        let i = cdf.partition_point(|&c| c < r).min(words.len() - 1);
        buf.extend_from_slice(words[i].as_bytes());
        line += 1;
        buf.push(if line.is_multiple_of(12) { b'\n' } else { b' ' });
        if buf.len() >= 1 << 16 {
            out.write_all(&buf)?;
            written += buf.len() as u64;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    Ok(())
}
