//! Word count on Ringleader: inputs are split into byte ranges, each a
//! [`CountWords`] task; a shard's counts are merged on its worker and the
//! master merges the shards'. An input is a local path (or `file://` URL),
//! read where that path exists, or an object store URL (`s3://bucket/key`,
//! such as what `submit --upload` writes), read by byte ranges.
//!
//! A word is a maximal run of characters that are not Unicode White_Space
//! (`char::is_whitespace`), case-sensitive. With `--normalize` a word is
//! lowercased (`str::to_lowercase`) and stripped of every character that is
//! not `char::is_alphanumeric`; words left empty are dropped. A split owns
//! the words that *start* inside it and reads past its end to finish its
//! last one, so no word is cut or counted twice.

pub mod corpus;
pub mod fuzz;

use std::collections::HashMap;
use std::hash::BuildHasher;

use compact_str::CompactString;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ringleader::store::Store;

use ringleader::cli::{BoxError, CliJob, Output};
use ringleader::{Job, JobReport, Task, TaskContext, TaskError};
use serde::{Deserialize, Serialize};

/// Word -> count. Words up to 24 bytes live inside the table's slots
/// (`CompactString`), so a lookup reads no other cache line and counting or
/// merging a known word allocates nothing; foldhash is several times faster
/// than SipHash on short keys (the seed is still random per map).
pub type Counts = HashMap<CompactString, u64, foldhash::fast::RandomState>;

/// Count the words starting in `input[offset .. offset + len)`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CountWords {
    /// The input: an absolute path (every worker must see it there) or an
    /// object store URL (`s3://bucket/key`).
    pub input: String,
    /// First byte of the split.
    pub offset: u64,
    /// Bytes in the split.
    pub len: u64,
    /// Lowercase and keep only alphanumerics.
    pub normalize: bool,
}

/// Errors of counting.
#[derive(Debug)]
pub enum CountError {
    /// The input cannot be read.
    Io(String, String),
    /// The input is not UTF-8.
    Utf8 {
        /// The input.
        path: String,
        /// Byte offset of the first invalid byte.
        offset: u64,
    },
}

impl std::fmt::Display for CountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CountError::Io(p, e) => write!(f, "cannot read {p}: {e}"),
            CountError::Utf8 { path, offset } => {
                write!(f, "{path} is not valid UTF-8 at byte offset {offset}")
            }
        }
    }
}

/// An input read by byte ranges: a local file or a store object.
pub trait Source {
    /// What to call it in errors.
    fn name(&self) -> &str;
    /// Its length in bytes.
    fn size(&self) -> Result<u64, CountError>;
    /// Bytes `range` (clipped to the end).
    fn read(&self, range: Range<u64>) -> Result<Vec<u8>, CountError>;
}

/// A local file.
pub struct FileSource {
    name: String,
    file: std::fs::File,
}

impl FileSource {
    /// Opens `path`.
    pub fn open(path: &Path) -> Result<Self, CountError> {
        let name = path.display().to_string();
        let file =
            std::fs::File::open(path).map_err(|e| CountError::Io(name.clone(), e.to_string()))?;
        Ok(FileSource { name, file })
    }
}

impl Source for FileSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> Result<u64, CountError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| CountError::Io(self.name.clone(), e.to_string()))
    }
    fn read(&self, range: Range<u64>) -> Result<Vec<u8>, CountError> {
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        let mut done = 0;
        while done < buf.len() {
            match self
                .file
                .read_at(&mut buf[done..], range.start + done as u64)
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CountError::Io(self.name.clone(), e.to_string())),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }
}

/// An object of a store, read with ranged GETs.
pub struct ObjectSource {
    url: String,
    store: Store,
    key: String,
}

impl Source for ObjectSource {
    fn name(&self) -> &str {
        &self.url
    }
    fn size(&self) -> Result<u64, CountError> {
        self.store
            .size_blocking(&self.key)
            .map_err(|e| CountError::Io(self.url.clone(), e.to_string()))
    }
    fn read(&self, range: Range<u64>) -> Result<Vec<u8>, CountError> {
        self.store
            .get_range_blocking(&self.key, range)
            .map(|b| b.to_vec())
            .map_err(|e| CountError::Io(self.url.clone(), e.to_string()))
    }
}

/// Opens an input: a path or `file://` URL, or an object URL, read through
/// `cluster` (the cluster's store) when it lies inside it, else through a
/// store opened for its bucket (credentials from the environment).
pub fn open_input(input: &str, cluster: Option<&Store>) -> Result<Box<dyn Source>, CountError> {
    let io = |e: String| CountError::Io(input.to_string(), e);
    if let Some(path) = input.strip_prefix("file://") {
        return Ok(Box::new(FileSource::open(Path::new(path))?));
    }
    let Some((scheme, rest)) = input.split_once("://") else {
        return Ok(Box::new(FileSource::open(Path::new(input))?));
    };
    if let Some(store) = cluster {
        let inside = input
            .strip_prefix(store.url().trim_end_matches('/'))
            .and_then(|r| r.strip_prefix('/'));
        if let Some(key) = inside {
            return Ok(Box::new(ObjectSource {
                url: input.to_string(),
                store: store.clone(),
                key: key.to_string(),
            }));
        }
    }
    let (bucket, key) = rest
        .split_once('/')
        .ok_or_else(|| io("an object URL needs a bucket and a key".into()))?;
    let store = Store::open(&format!("{scheme}://{bucket}")).map_err(|e| io(e.to_string()))?;
    Ok(Box::new(ObjectSource {
        url: input.to_string(),
        store,
        key: key.to_string(),
    }))
}

impl std::error::Error for CountError {}

fn is_boundary(b: u8) -> bool {
    (b & 0xC0) != 0x80
}

/// Adds a token to the counts, normalized if asked.
pub fn add_word(counts: &mut Counts, word: &str, normalize: bool) {
    if normalize {
        let w: String = word
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric())
            .collect();
        if !w.is_empty() {
            *counts.entry(CompactString::from(w)).or_insert(0) += 1;
        }
    } else if let Some(c) = counts.get_mut(word) {
        *c += 1;
    } else {
        counts.insert(CompactString::from(word), 1);
    }
}

/// Byte classes of UTF-8 text: 0 is never the start of whitespace, 1 is
/// ASCII whitespace, 2 may start a multi-byte White_Space character.
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b' ' as usize] = 1;
    let mut b = b'\t';
    while b <= b'\r' {
        t[b as usize] = 1;
        b += 1;
    }
    t[0xC2] = 2;
    t[0xE1] = 2;
    t[0xE2] = 2;
    t[0xE3] = 2;
    t
};

/// Length of the White_Space character at `b[i]`, or 0 if there is none
/// there. Exactly `char::is_whitespace` on valid UTF-8: U+0009-U+000D,
/// U+0020, U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F,
/// U+205F and U+3000.
#[inline]
fn whitespace_len(b: &[u8], i: usize) -> usize {
    match CLASS[b[i] as usize] {
        0 => 0,
        1 => 1,
        _ => match (b[i], b.get(i + 1), b.get(i + 2)) {
            (0xC2, Some(0x85 | 0xA0), _) => 2,
            (0xE1, Some(0x9A), Some(0x80)) => 3,
            (0xE2, Some(0x80), Some(0x80..=0x8A | 0xA8 | 0xA9 | 0xAF)) => 3,
            (0xE2, Some(0x81), Some(0x9F)) => 3,
            (0xE3, Some(0x80), Some(0x80)) => 3,
            _ => 0,
        },
    }
}

/// Counts every word of a string: the words of
/// `text.split(char::is_whitespace)`, found by scanning bytes instead of
/// decoding characters.
pub fn count_str(text: &str, normalize: bool, counts: &mut Counts) {
    let b = text.as_bytes();
    let n = b.len();
    let mut i = 0;
    while i < n {
        // Skip whitespace.
        let w = whitespace_len(b, i);
        if w > 0 {
            i += w;
            continue;
        }
        let start = i;
        i += 1;
        while i < n && (CLASS[b[i] as usize] == 0 || whitespace_len(b, i) == 0) {
            i += 1;
        }
        // `start` and `i` are character boundaries: the start of the text
        // or the end of a whitespace character, and the start of one or the end.
        if let Some(word) = text.get(start..i) {
            add_word(counts, word, normalize);
        }
    }
}

/// Counts the words starting in `[offset, offset + len)` of a file.
pub fn count_split(
    path: &Path,
    offset: u64,
    len: u64,
    normalize: bool,
) -> Result<Counts, CountError> {
    count_range(&FileSource::open(path)?, offset, len, normalize)
}

/// Counts the words starting in `[offset, offset + len)` of an input.
pub fn count_range(
    src: &dyn Source,
    offset: u64,
    len: u64,
    normalize: bool,
) -> Result<Counts, CountError> {
    let path = src.name().to_string();
    let file_len = src.size()?;
    let end = (offset + len).min(file_len);
    let mut counts = Counts::default();
    if offset >= end {
        return Ok(counts);
    }
    // Read 4 bytes before (to see the previous character), the split, and
    // 4 bytes after (where the split's last character may end).
    let read_from = offset.saturating_sub(4);
    let read_to = (end + 4).min(file_len);
    let whole = src.read(read_from..read_to)?;
    let base = read_from;
    // Both neighbours cut at the first character boundary at or after the nominal offset.
    let boundary_at_or_after = |from: usize| {
        (from..whole.len())
            .find(|&i| is_boundary(whole[i]))
            .unwrap_or(whole.len())
    };
    let s = boundary_at_or_after((offset - base) as usize);
    let e = if end >= file_len {
        whole.len()
    } else {
        boundary_at_or_after((end - base) as usize)
    };
    // Continuation bytes at the split's start belong to a character of
    // the split before, which checks them; at the input's start there is
    // none, so they are not UTF-8.
    if s > e || s - (offset - base) as usize > 3 || (offset == 0 && s > 0) {
        return Err(CountError::Utf8 {
            path: path.clone(),
            offset,
        });
    }
    let text = std::str::from_utf8(&whole[s..e]).map_err(|err| CountError::Utf8 {
        path: path.clone(),
        offset: base + s as u64 + err.valid_up_to() as u64,
    })?;
    // Does a word run into the split from before?
    let prev_is_word = s > 0 && {
        let lead = (0..s).rev().find(|&i| is_boundary(whole[i])).unwrap_or(0);
        match std::str::from_utf8(&whole[lead..s]) {
            Ok(p) => p.chars().next_back().is_some_and(|c| !c.is_whitespace()),
            Err(_) => true,
        }
    };
    let mut body = text;
    if prev_is_word {
        body = match body.find(char::is_whitespace) {
            Some(i) => &body[i..],
            None => "",
        };
    }
    // Does the last word run past the split's end?
    let ends_in_word = e < whole.len() || (e as u64 + base) < file_len;
    let last_word_open =
        ends_in_word && body.chars().next_back().is_some_and(|c| !c.is_whitespace());
    if !last_word_open {
        count_str(body, normalize, &mut counts);
        return Ok(counts);
    }
    let cut = body.rfind(char::is_whitespace).map_or(0, |i| {
        i + body[i..].chars().next().map_or(1, char::len_utf8)
    });
    count_str(&body[..cut], normalize, &mut counts);
    let mut last = body[cut..].to_string();
    // Read on until whitespace or the end of the file.
    let mut pos = base + e as u64;
    let mut read_at = pos;
    let mut pending: Vec<u8> = Vec::new();
    'outer: loop {
        let chunk = if read_at < file_len {
            src.read(read_at..(read_at + 4096).min(file_len))?
        } else {
            Vec::new()
        };
        read_at += chunk.len() as u64;
        let n = chunk.len();
        if n == 0 {
            if !pending.is_empty() {
                return Err(CountError::Utf8 {
                    path: path.clone(),
                    offset: pos,
                });
            }
            break;
        }
        pending.extend_from_slice(&chunk[..n]);
        let valid = match std::str::from_utf8(&pending) {
            Ok(t) => t.len(),
            Err(err) if err.error_len().is_some() => {
                return Err(CountError::Utf8 {
                    path: path.clone(),
                    offset: pos + err.valid_up_to() as u64,
                })
            }
            Err(err) => err.valid_up_to(),
        };
        let t = std::str::from_utf8(&pending[..valid]).unwrap_or_default();
        if let Some(i) = t.find(char::is_whitespace) {
            last.push_str(&t[..i]);
            break 'outer;
        }
        last.push_str(t);
        pos += valid as u64;
        pending.drain(..valid);
    }
    add_word(&mut counts, &last, normalize);
    Ok(counts)
}

/// Counts one task's split, reading through `cluster` where its input is
/// an object of the cluster's store.
pub fn count_task(t: &CountWords, cluster: Option<&Store>) -> Result<Counts, CountError> {
    count_range(
        &*open_input(&t.input, cluster)?,
        t.offset,
        t.len,
        t.normalize,
    )
}

impl Task for CountWords {
    type Output = Counts;
    const NAME: &'static str = "count-words";
    fn run(self, ctx: &TaskContext) -> Result<Counts, TaskError> {
        count_task(&self, ctx.store.as_ref()).map_err(|e| match e {
            CountError::Io(..) => TaskError::retryable(e),
            CountError::Utf8 { .. } => TaskError::permanent(e),
        })
    }
}

/// Merges `other` into `acc`.
pub fn merge(acc: &mut Counts, other: Counts) {
    if acc.len() < other.len() {
        let small = std::mem::replace(acc, other);
        return merge(acc, small);
    }
    for (w, c) in other {
        *acc.entry(w).or_insert(0) += c;
    }
}

/// The most words a partial's header makes a merge reserve room for
/// (32 MiB of table); bigger partials grow the table as they are read.
const MAX_RESERVED_WORDS: usize = 1 << 20;

/// Puts `items` roughly in the order of the slots they take in `acc`'s
/// table, so that adding them walks the table from one end to the other.
///
/// A partial arrives in its own map's order, which is random against the
/// accumulator's (every map has its own hash seed), and 100,000 words fill
/// a table of about 4 MiB: in that order nearly every lookup misses the
/// core's cache. On the master of a busy two-core machine, where the
/// workers' counting evicts that cache between its time slices, the merges
/// took 10.5% of a core during back-to-back word counts; in this order,
/// 7.1% (`benches/cpu-share.sh 8` beside `cluster-bench --only wordcount
/// --wc-secs 25`). On an idle core, where the table stays in the shared
/// L3, it costs more than it saves: 5.9 against 4.9 ms a partial
/// (`hot_paths -- partial`), about the same beside one counting process.
///
/// One counting-sort pass by the top 12 bits of a word's slot: 4,096
/// groups, each a few cache lines of the table, whose write heads fit the
/// core's cache. Words are hashed twice (here and in the lookup), which is
/// cheap beside a miss. Only the speed depends on the table's layout
/// (hashbrown's slot is the hash's low bits), never the result.
fn in_table_order<'a>(acc: &Counts, items: Vec<(&'a str, u64)>) -> Vec<(&'a str, u64)> {
    const GROUPS_LOG2: u32 = 12;
    let slots = (acc.capacity() * 8 / 7).next_power_of_two();
    let bits = slots.trailing_zeros();
    if bits <= GROUPS_LOG2 + 2 || items.len() < 1 << GROUPS_LOG2 {
        return items;
    }
    let shift = bits - GROUPS_LOG2;
    let mask = slots as u64 - 1;
    let hasher = acc.hasher();
    let groups: Vec<u16> = items
        .iter()
        .map(|(w, _)| ((hasher.hash_one(w) & mask) >> shift) as u16)
        .collect();
    let mut next = vec![0usize; 1 << GROUPS_LOG2];
    for &g in &groups {
        next[g as usize] += 1;
    }
    let mut start = 0;
    for n in next.iter_mut() {
        let len = *n;
        *n = start;
        start += len;
    }
    let mut out: Vec<Option<(&str, u64)>> =
        std::iter::repeat_with(|| None).take(items.len()).collect();
    for (item, g) in items.into_iter().zip(groups) {
        let at = &mut next[g as usize];
        out[*at] = Some(item);
        *at += 1;
    }
    out.into_iter().flatten().collect()
}

/// The word-count job.
pub struct WordCount;

/// Arguments of `submit` and `local`.
#[derive(Debug, Clone, clap::Args)]
pub struct WordCountArgs {
    /// Inputs (UTF-8): paths every worker sees at the same place, or object
    /// store URLs (s3://bucket/key); with `submit --upload`, local files
    /// are first copied into the cluster's store.
    pub files: Vec<String>,
    /// Lowercase and keep only alphanumeric characters.
    #[arg(long)]
    pub normalize: bool,
    /// Split size in MiB (0: about a twelfth of the input, 1 to 64 MiB;
    /// each shard's counts are merged on the master, so shards much smaller
    /// than the vocabulary's size cost more in merging than in counting).
    #[arg(long, default_value_t = 0)]
    pub split_mib: u64,
}

impl Job for WordCount {
    type Task = CountWords;
    type Result = Counts;
    const NAME: &'static str = "word-count";
    fn fold(acc: &mut Counts, _index: u64, output: Counts) {
        merge(acc, output);
    }
    fn merge(acc: &mut Counts, other: Counts) {
        merge(acc, other);
    }
    /// Adds each (word, count) as it is decoded: a 100,000-word partial is
    /// never built as a map of its own on the master.
    fn merge_from<'de, D: serde::Deserializer<'de>>(
        acc: &mut Counts,
        decoder: D,
    ) -> Result<(), D::Error> {
        struct Into<'a>(&'a mut Counts);
        impl<'de> serde::de::Visitor<'de> for Into<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of words to counts")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
                // The size a partial's header claims, believed up to a
                // bound: a garbage header of four billion entries asked
                // for 128 GiB of table before its first missing entry
                // could be noticed.
                let hint = map.size_hint().unwrap_or(0).min(MAX_RESERVED_WORDS);
                self.0.reserve(hint.saturating_sub(self.0.len()));
                // Borrowed from the frame: 24 bytes a word, never copied.
                let mut items = Vec::with_capacity(hint);
                while let Some(entry) = map.next_entry::<&'de str, u64>()? {
                    items.push(entry);
                }
                for (word, n) in in_table_order(self.0, items) {
                    match self.0.get_mut(word) {
                        Some(c) => *c += n,
                        None => {
                            self.0.insert(CompactString::from(word), n);
                        }
                    }
                }
                Ok(())
            }
        }
        decoder.deserialize_map(Into(acc))
    }
    // The shard size is the master's choice (`Job::default_shard_size`):
    // a few shards per slot, each merging its splits' counts on its worker
    // before one partial travels. One split per shard sent the master
    // twelve 100,000-word partials per job to merge while the workers
    // counted, and on two cores that time came out of theirs: 0.80-0.86 of
    // two plain threads against 0.90-0.92 at the master's two splits per
    // shard (`cluster-bench --only wordcount --wc-shard 1|2`, three runs each).
}

/// Cuts inputs into splits of `split` bytes, checking each is readable:
/// a missing input is refused here, naming it, before anything runs.
pub fn plan(inputs: &[String], split: u64, normalize: bool) -> Result<Vec<CountWords>, BoxError> {
    if inputs.is_empty() {
        return Err("no input files given".into());
    }
    let mut tasks = Vec::new();
    for input in inputs {
        let local = !input.contains("://") || input.starts_with("file://");
        let input = if local {
            let path = input.strip_prefix("file://").unwrap_or(input);
            std::fs::canonicalize(path)
                .map_err(|e| format!("cannot read input {input}: {e}"))?
                .display()
                .to_string()
        } else {
            input.clone()
        };
        let len = open_input(&input, None)
            .and_then(|src| src.size())
            .map_err(|e| format!("cannot read input {e}"))?;
        let mut offset = 0;
        while offset < len {
            let n = split.min(len - offset);
            tasks.push(CountWords {
                input: input.clone(),
                offset,
                len: n,
                normalize,
            });
            offset += n;
        }
    }
    Ok(tasks)
}

/// Sorted by count descending, then by the word's bytes ascending.
pub fn sorted(counts: &Counts) -> Vec<(&str, u64)> {
    let mut v: Vec<(&str, u64)> = counts.iter().map(|(w, c)| (w.as_str(), *c)).collect();
    v.sort_unstable_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
    });
    v
}

/// Writes `word<TAB>count` lines.
pub fn write_counts(path: &Path, counts: &Counts) -> std::io::Result<()> {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (word, c) in sorted(counts) {
        writeln!(w, "{word}\t{c}")?;
    }
    w.flush()
}

impl CliJob for WordCount {
    type Args = WordCountArgs;
    fn inputs(args: &mut WordCountArgs) -> Vec<&mut String> {
        args.files.iter_mut().collect()
    }
    fn tasks(args: &WordCountArgs) -> Result<Vec<CountWords>, BoxError> {
        let split = if args.split_mib > 0 {
            args.split_mib << 20
        } else {
            let total: u64 = args
                .files
                .iter()
                .filter_map(|f| open_input(f, None).and_then(|s| s.size()).ok())
                .sum();
            total.div_ceil(12).clamp(1 << 20, 64 << 20)
        };
        plan(&args.files, split, args.normalize)
    }
    /// The top ten words on stdout; with `--output FILE`, every word's
    /// count there as `word<TAB>count` lines.
    fn output(counts: Counts, _report: &JobReport, out: &Output) -> Result<(), BoxError> {
        if let Some(path) = out.path() {
            write_counts(path, &counts)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!(
                "wrote {} distinct words to {}",
                counts.len(),
                path.display()
            );
        }
        let total: u64 = counts.values().sum();
        println!("{total} words, {} distinct; top 10:", counts.len());
        for (w, c) in sorted(&counts).into_iter().take(10) {
            println!("{c:>12}  {w}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        f
    }

    fn by_splits(path: &Path, split: u64, normalize: bool) -> Result<Counts, CountError> {
        let len = std::fs::metadata(path).unwrap().len();
        let mut all = Counts::default();
        let mut off = 0;
        while off < len {
            merge(&mut all, count_split(path, off, split, normalize)?);
            off += split;
        }
        Ok(all)
    }

    #[test]
    fn every_split_size_gives_the_single_pass_count() {
        let text = "héllo wörld\u{a0}héllo\u{3000}日本語 日本語\n\ttabs  and\u{2028}lines x y z 🦀🦀 🦀🦀 end";
        let f = file(text.as_bytes());
        let mut want = Counts::default();
        count_str(text, false, &mut want);
        assert_eq!(want.get("héllo"), Some(&2));
        assert_eq!(want.get("🦀🦀"), Some(&2));
        for split in 1..=text.len() as u64 + 1 {
            assert_eq!(
                by_splits(f.path(), split, false).unwrap(),
                want,
                "split {split}"
            );
        }
        let mut norm = Counts::default();
        count_str(text, true, &mut norm);
        assert_eq!(by_splits(f.path(), 3, true).unwrap(), norm);
        assert!(
            !norm.contains_key("🦀🦀"),
            "emoji-only tokens vanish under normalize"
        );
    }

    #[test]
    fn byte_scanner_splits_exactly_like_char_is_whitespace() {
        // Every White_Space character, lookalikes that are not (U+200B,
        // U+180E, U+FEFF, U+2060), their neighbours in the same UTF-8 lead
        // ranges, and ordinary text.
        let alphabet: Vec<char> = (0u32..0x3100)
            .filter_map(char::from_u32)
            .filter(|c| c.is_whitespace() || (*c as u32) < 0x100 || matches!(*c as u32, 0x1680..=0x1690 | 0x2000..=0x2070 | 0x3000..=0x3010 | 0x180E))
            .chain(['\u{FEFF}', 'a', 'é', '日', '🦀'])
            .collect();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..2000 {
            let len = (next() % 40) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let mut want = Counts::default();
            for w in text.split(char::is_whitespace).filter(|w| !w.is_empty()) {
                *want.entry(w.into()).or_insert(0) += 1;
            }
            let mut got = Counts::default();
            count_str(&text, false, &mut got);
            assert_eq!(got, want, "round {round}: {text:?}");
        }
        for c in alphabet {
            let text = format!("a{c}b");
            let mut got = Counts::default();
            count_str(&text, false, &mut got);
            let words = if c.is_whitespace() { 2 } else { 1 };
            assert_eq!(got.len(), words, "{:?} (U+{:04X})", c, c as u32);
        }
    }

    #[test]
    fn streamed_merge_equals_decode_then_merge() {
        let mut a = Counts::default();
        count_str("x y y z", false, &mut a);
        let mut b = Counts::default();
        count_str("y z z w", false, &mut b);
        let bytes = rmp_serde::to_vec(&b).unwrap();
        let mut streamed = a.clone();
        <WordCount as Job>::merge_from(
            &mut streamed,
            &mut rmp_serde::Deserializer::from_read_ref(&bytes),
        )
        .unwrap();
        merge(&mut a, b);
        assert_eq!(streamed, a);
        let garbage = <WordCount as Job>::merge_from(
            &mut a,
            &mut rmp_serde::Deserializer::from_read_ref(&[0xc1u8][..]),
        );
        assert!(garbage.is_err());
        // A map header claiming u32::MAX entries, and none after it: an
        // error, after reserving a bounded table.
        let mut empty = Counts::default();
        let lying = <WordCount as Job>::merge_from(
            &mut empty,
            &mut rmp_serde::Deserializer::from_read_ref(&[0xdfu8, 0xff, 0xff, 0xff, 0xff][..]),
        );
        assert!(lying.is_err());
        assert!(empty.is_empty());
        assert!(
            empty.capacity() <= 2 * MAX_RESERVED_WORDS,
            "{}",
            empty.capacity()
        );
    }

    /// Partials large enough to be put in table order: into an empty
    /// accumulator, then into one that holds half their words, then one
    /// that must grow past what it reserved.
    #[test]
    fn large_partials_merge_in_table_order_to_the_same_counts() {
        let partial = |from: usize, to: usize, seed: u64| {
            let mut c = Counts::default();
            for i in from..to {
                c.insert(corpus::word(i).into(), i as u64 ^ seed);
            }
            c
        };
        let parts = [
            partial(0, 50_000, 1),
            partial(25_000, 75_000, 2),
            partial(0, 200_000, 3),
        ];
        let mut streamed = Counts::default();
        let mut want = Counts::default();
        for p in parts {
            assert!(p.len() >= 1 << 12, "too small to be ordered");
            let bytes = rmp_serde::to_vec(&p).unwrap();
            <WordCount as Job>::merge_from(
                &mut streamed,
                &mut rmp_serde::Deserializer::from_read_ref(&bytes),
            )
            .unwrap();
            for (w, c) in p {
                *want.entry(w).or_insert(0) += c;
            }
            assert_eq!(streamed, want);
        }
        assert_eq!(want.len(), 200_000);
    }

    #[test]
    fn splits_read_from_a_store_object_count_as_from_the_file() {
        let text = "día noche día\u{3000}夜 夜 x y\nz día ".repeat(40);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store").display().to_string()).unwrap();
        futures_block_on(store.put_new("inputs/u/t.txt", text.clone().into_bytes())).unwrap();
        let url = store.url_of("inputs/u/t.txt");
        let mut want = Counts::default();
        count_str(&text, false, &mut want);
        for cluster in [Some(&store), None] {
            let src = open_input(&url, cluster).unwrap();
            assert_eq!(src.size().unwrap(), text.len() as u64);
            for split in [1u64, 7, 64, 4096] {
                let mut all = Counts::default();
                let mut off = 0;
                while off < text.len() as u64 {
                    merge(&mut all, count_range(&*src, off, split, false).unwrap());
                    off += split;
                }
                assert_eq!(all, want, "split {split}");
            }
        }
        let tasks = plan(std::slice::from_ref(&url), 100, false).unwrap();
        assert_eq!(tasks.iter().map(|t| t.len).sum::<u64>(), text.len() as u64);
        let missing = plan(&[store.url_of("inputs/u/none.txt")], 100, false).unwrap_err();
        assert!(missing.to_string().contains("none.txt"), "{missing}");
    }

    fn futures_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn invalid_utf8_names_the_offset() {
        let f = file(b"good words \xff\xfe bad");
        let err = by_splits(f.path(), 100, false).unwrap_err();
        assert!(matches!(err, CountError::Utf8 { offset: 11, .. }), "{err}");
        assert!(err.to_string().contains("byte offset 11"));
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = plan(&["/no/such/file".to_string()], 10, false).unwrap_err();
        assert!(err.to_string().contains("/no/such/file"), "{err}");
    }
}
