//! The word-count tokenizer as a fuzz target: any bytes, cut into splits
//! anywhere, count as `str::split(char::is_whitespace)` counts the whole
//! (each word once, in the split where it starts), or fail with an error
//! for text that is not UTF-8. Run by `framework/fuzz` (target
//! `tokenizer`) and by this crate's tests.

use std::ops::Range;

use crate::{add_word, count_range, count_str, merge, CountError, Counts, Source};

/// Bytes in memory as an input.
struct Bytes<'a>(&'a [u8]);

impl Source for Bytes<'_> {
    fn name(&self) -> &str {
        "fuzz"
    }

    fn size(&self) -> Result<u64, CountError> {
        Ok(self.0.len() as u64)
    }

    fn read(&self, range: Range<u64>) -> Result<Vec<u8>, CountError> {
        let len = self.0.len() as u64;
        let (start, end) = (range.start.min(len), range.end.min(len));
        Ok(self.0[start as usize..end.max(start) as usize].to_vec())
    }
}

/// The first byte picks the split size (1 to 64 bytes) and whether words
/// are normalized; the rest is the input.
pub fn tokenizer(data: &[u8]) {
    let Some((&control, text)) = data.split_first() else {
        return;
    };
    let split = u64::from(control & 0x3f) + 1;
    let normalize = control & 0x40 != 0;
    let src = Bytes(text);
    let mut pieces = Counts::default();
    let mut failed = false;
    let mut offset = 0;
    while offset < text.len() as u64 {
        match count_range(&src, offset, split, normalize) {
            Ok(c) => merge(&mut pieces, c),
            Err(CountError::Utf8 { .. }) => failed = true,
            Err(e) => panic!("not a UTF-8 error on bytes in memory: {e}"),
        }
        offset += split;
    }
    let Ok(whole) = std::str::from_utf8(text) else {
        // Some split must say the text is not UTF-8 (one may not see it:
        // the bad bytes can sit inside another split's word).
        assert!(failed, "invalid UTF-8 counted without an error");
        return;
    };
    assert!(!failed, "valid UTF-8 refused");
    let mut expected = Counts::default();
    for word in whole.split(char::is_whitespace).filter(|w| !w.is_empty()) {
        add_word(&mut expected, word, normalize);
    }
    let mut scanned = Counts::default();
    count_str(whole, normalize, &mut scanned);
    assert_eq!(
        scanned, expected,
        "count_str differs from split(char::is_whitespace)"
    );
    assert_eq!(
        pieces, expected,
        "splits of {split} bytes count differently from the whole"
    );
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Pieces of text that meet at split boundaries in every way: ASCII
    /// and multi-byte words, every kind of whitespace (one to three
    /// bytes), and bytes that are not UTF-8.
    const PIECES: &[&[u8]] = &[
        b"a",
        b"Word",
        "\u{e9}t\u{e9}".as_bytes(),
        "\u{65e5}\u{672c}".as_bytes(),
        "\u{1f600}".as_bytes(),
        b" ",
        b"\t",
        b"\r\n",
        "\u{85}".as_bytes(),
        "\u{a0}".as_bytes(),
        "\u{1680}".as_bytes(),
        "\u{2003}".as_bytes(),
        "\u{2028}".as_bytes(),
        "\u{3000}".as_bytes(),
        b"\x80",
        b"\xe2\x80",
        b"\xff",
    ];

    /// Generated texts (mostly valid UTF-8) with every split size.
    #[test]
    fn splits_count_as_the_whole_on_generated_text() {
        let mut rng = StdRng::seed_from_u64(13);
        for round in 0..20_000 {
            let mut data = vec![rng.gen::<u8>()];
            let valid_only = round % 4 != 0;
            for _ in 0..rng.gen_range(0..40) {
                let piece = PIECES[rng.gen_range(0..PIECES.len())];
                if valid_only && std::str::from_utf8(piece).is_err() {
                    continue;
                }
                data.extend_from_slice(piece);
            }
            let outcome = std::panic::catch_unwind(|| super::tokenizer(&data));
            assert!(outcome.is_ok(), "tokenizer failed on {data:02x?}");
        }
    }

    /// The seed corpus of the libFuzzer target (`framework/fuzz/seeds/
    /// tokenizer`: what its long runs found, minimized), replayed.
    #[test]
    fn the_seed_corpus_counts_as_the_whole() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../framework/fuzz/seeds/tokenizer");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("the tokenizer's seed corpus") {
            let path = entry.expect("a seed").path();
            let data = std::fs::read(&path).expect("a readable seed");
            let outcome = std::panic::catch_unwind(|| super::tokenizer(&data));
            assert!(
                outcome.is_ok(),
                "tokenizer failed on seed {}",
                path.display()
            );
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }

    /// Stray continuation bytes at the very start are not UTF-8, and say so.
    #[test]
    fn a_text_that_starts_inside_a_character_is_refused() {
        super::tokenizer(b"\x05\x80abc def");
        super::tokenizer(b"\x05\x80\x80\x80\x80abc");
    }
}
