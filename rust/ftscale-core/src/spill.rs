//! Spilled documents: the out-of-core engine's view of the signatures and texts that the map
//! step wrote to its work directory, read back by global document index.
//!
//! Files, little-endian, one set per unit of work `u` (units in their global order):
//! - signatures: `count_u × num_perm` `u32`, row-major (`4·num_perm` bytes per document);
//! - texts, only when verification reads texts (`Verify::Exact` / `Verify::Auto`): the
//!   concatenated UTF-8 texts, and `count_u + 1` `u64` offsets into them (`offsets[0] = 0`).
//!
//! The global index of a unit's document `i` is the number of documents in the units before
//! it, plus `i`. Nothing read from these files is trusted: sizes are checked against the
//! document counts when the set is opened, offsets against the text file's length when read,
//! and texts are validated as UTF-8.
//!
//! Memory: 16 bytes per unit; `SigTable` holds `4·num_perm` bytes per requested document;
//! texts are read one pair at a time into per-thread buffers (file handles are cached per
//! thread, `FILE_CACHE` of them).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::error::{io_error, Result};
use crate::neardup::DocSource;
use crate::shingle::{jaccard_sorted, shingle_set, ShingleScratch, Shingling};

/// Open file handles each thread keeps (texts of a bucket usually sit in a few units).
const FILE_CACHE: usize = 16;

pub struct SpillUnit {
    pub signatures: PathBuf,
    /// (texts, offsets), when spilled.
    pub texts: Option<(PathBuf, PathBuf)>,
    pub count: u32,
}

pub struct SpillFiles {
    units: Vec<SpillUnit>,
    /// starts[u] = global index of unit u's first document; the last entry is the total.
    starts: Vec<u64>,
    pub num_perm: usize,
    pub shingling: Shingling,
}

fn file_len(path: &PathBuf) -> Result<u64> {
    std::fs::metadata(path).map(|m| m.len()).map_err(|e| io_error(format!("cannot read {}: {e}", path.display())))
}

impl SpillFiles {
    pub fn new(units: Vec<SpillUnit>, num_perm: usize, shingling: Shingling) -> Result<Self> {
        let mut starts = Vec::with_capacity(units.len() + 1);
        let mut total = 0u64;
        for unit in &units {
            starts.push(total);
            total += unit.count as u64;
            if unit.count == 0 {
                continue;
            }
            let expected = unit.count as u64 * num_perm as u64 * 4;
            let found = file_len(&unit.signatures)?;
            if found != expected {
                return Err(io_error(format!(
                    "{} holds {found} bytes, expected {expected} ({} signatures of {num_perm} permutations)",
                    unit.signatures.display(),
                    unit.count
                )));
            }
            if let Some((_, offsets)) = &unit.texts {
                let found = file_len(offsets)?;
                if found != (unit.count as u64 + 1) * 8 {
                    return Err(io_error(format!("{} holds {found} bytes, expected {} offsets", offsets.display(), unit.count + 1)));
                }
            }
        }
        starts.push(total);
        if total > u32::MAX as u64 {
            return Err(io_error(format!("{total} documents: at most {} per run", u32::MAX)));
        }
        Ok(Self { units, starts, num_perm, shingling })
    }

    pub fn num_docs(&self) -> u32 {
        *self.starts.last().unwrap_or(&0) as u32
    }

    /// (unit, position in the unit) of a global document index.
    fn locate(&self, doc: u32) -> Result<(usize, u64)> {
        if doc >= self.num_docs() {
            return Err(io_error(format!("document {doc} is beyond the {} spilled documents", self.num_docs())));
        }
        let u = self.starts.partition_point(|&s| s <= doc as u64) - 1;
        Ok((u, doc as u64 - self.starts[u]))
    }

    fn open(path: &PathBuf) -> Result<File> {
        File::open(path).map_err(|e| io_error(format!("cannot open {}: {e}", path.display())))
    }

    /// Signatures of `docs` (any order, repeats allowed), read unit by unit.
    pub fn signatures(&self, docs: &[u32]) -> Result<SigTable> {
        let mut wanted = docs.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let k = self.num_perm;
        let mut sigs = vec![0u32; wanted.len() * k];
        let mut bytes = vec![0u8; 4 * k];
        let mut open: Option<(usize, File)> = None;
        for (slot, &doc) in wanted.iter().enumerate() {
            let (u, local) = self.locate(doc)?;
            if open.as_ref().is_none_or(|(ou, _)| *ou != u) {
                open = Some((u, Self::open(&self.units[u].signatures)?));
            }
            let file = &open.as_ref().expect("opened above").1;
            file.read_exact_at(&mut bytes, local * 4 * k as u64)
                .map_err(|e| io_error(format!("cannot read {}: {e}", self.units[u].signatures.display())))?;
            for (dst, src) in sigs[slot * k..(slot + 1) * k].iter_mut().zip(bytes.chunks_exact(4)) {
                *dst = u32::from_le_bytes([src[0], src[1], src[2], src[3]]);
            }
        }
        Ok(SigTable { docs: wanted, sigs, num_perm: k })
    }

    /// Read the spilled text of `doc` into `buf`, as UTF-8.
    fn read_text<'b>(&self, doc: u32, cache: &mut FileCache, buf: &'b mut Vec<u8>) -> Result<&'b str> {
        let (u, local) = self.locate(doc)?;
        let Some((text_path, offsets_path)) = &self.units[u].texts else {
            return Err(io_error(format!("no texts were spilled for document {doc}; verification needs them")));
        };
        let offsets = cache.get(u, 1, offsets_path)?;
        let mut pair = [0u8; 16];
        offsets.file.read_exact_at(&mut pair, local * 8)
            .map_err(|e| io_error(format!("cannot read {}: {e}", offsets_path.display())))?;
        let start = u64::from_le_bytes(pair[..8].try_into().expect("8 bytes"));
        let end = u64::from_le_bytes(pair[8..].try_into().expect("8 bytes"));
        let texts = cache.get(u, 0, text_path)?;
        if start > end || end > texts.len {
            return Err(io_error(format!("{} has offsets {start}..{end} beyond its texts ({} bytes)", offsets_path.display(), texts.len)));
        }
        buf.resize((end - start) as usize, 0);
        texts.file.read_exact_at(buf, start).map_err(|e| io_error(format!("cannot read {}: {e}", text_path.display())))?;
        std::str::from_utf8(buf).map_err(|_| io_error(format!("the spilled text of document {doc} in {} is not UTF-8", text_path.display())))
    }
}

/// Signatures of a set of documents, held in memory while their buckets are verified.
pub struct SigTable {
    docs: Vec<u32>,
    sigs: Vec<u32>,
    num_perm: usize,
}

impl SigTable {
    pub fn get(&self, doc: u32) -> &[u32] {
        let slot = self.docs.binary_search(&doc).unwrap_or_else(|_| panic!("signature of document {doc} was not loaded"));
        &self.sigs[slot * self.num_perm..(slot + 1) * self.num_perm]
    }
}

struct CachedFile {
    key: (usize, u8),
    file: File,
    len: u64,
}

/// A thread's few open files, most recently used last.
#[derive(Default)]
pub struct FileCache {
    open: Vec<CachedFile>,
}

impl FileCache {
    fn get(&mut self, unit: usize, kind: u8, path: &PathBuf) -> Result<&CachedFile> {
        if let Some(i) = self.open.iter().position(|f| f.key == (unit, kind)) {
            let hit = self.open.remove(i);
            self.open.push(hit);
        } else {
            if self.open.len() == FILE_CACHE {
                self.open.remove(0);
            }
            let file = SpillFiles::open(path)?;
            let len = file.metadata().map_err(|e| io_error(format!("cannot read {}: {e}", path.display())))?.len();
            self.open.push(CachedFile { key: (unit, kind), file, len });
        }
        Ok(self.open.last().expect("just pushed"))
    }
}

#[derive(Default)]
pub struct SpillScratch {
    shingles: ShingleScratch,
    files: FileCache,
    text: Vec<u8>,
}

/// Loaded signatures + the spilled texts: a `DocSource` over global document indices.
pub struct SpillDocs<'a> {
    pub files: &'a SpillFiles,
    pub sigs: SigTable,
}

impl SpillDocs<'_> {
    fn shingles(&self, doc: u32, scratch: &mut SpillScratch) -> Result<Vec<u64>> {
        let SpillScratch { shingles, files, text } = scratch;
        let t = self.files.read_text(doc, files, text)?;
        Ok(shingle_set(t, &self.files.shingling, shingles))
    }
}

impl DocSource for SpillDocs<'_> {
    type Scratch = SpillScratch;

    fn num_perm(&self) -> usize {
        self.files.num_perm
    }

    fn sig(&self, doc: u32) -> &[u32] {
        self.sigs.get(doc)
    }

    fn exact_jaccard(&self, a: u32, b: u32, scratch: &mut SpillScratch) -> Result<f64> {
        let sa = self.shingles(a, scratch)?;
        let sb = self.shingles(b, scratch)?;
        Ok(jaccard_sorted(&sa, &sb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minhash::MinHasher;
    use crate::neardup::{InMemoryDocs, NearDupParams, Verifier, Verify};

    fn write(path: &PathBuf, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn spilled_units_give_the_in_memory_similarities() {
        let dir = std::env::temp_dir().join(format!("ftscale-spill-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let texts: Vec<String> = (0..7).map(|i| (0..40).map(|w| format!("w{} ", (w * 7 + i / 2) % 50)).collect()).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let hasher = MinHasher::new(64, Shingling::words(3, 0)).unwrap();
        let (sigs, _) = hasher.signatures(&refs);
        // Units of 3, 0 and 4 documents.
        let mut units = Vec::new();
        for (u, range) in [(0usize, 0..3usize), (1, 3..3), (2, 3..7)] {
            let sig_path = dir.join(format!("u{u}.sig"));
            let bytes: Vec<u8> = sigs[range.start * 64..range.end * 64].iter().flat_map(|v| v.to_le_bytes()).collect();
            write(&sig_path, &bytes);
            let (tp, op) = (dir.join(format!("u{u}.txt")), dir.join(format!("u{u}.off")));
            let mut offsets = vec![0u64];
            let mut data = Vec::new();
            for t in &refs[range.clone()] {
                data.extend_from_slice(t.as_bytes());
                offsets.push(data.len() as u64);
            }
            write(&tp, &data);
            write(&op, &offsets.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
            units.push(SpillUnit { signatures: sig_path, texts: Some((tp, op)), count: range.len() as u32 });
        }
        let files = SpillFiles::new(units, 64, hasher.shingling).unwrap();
        assert_eq!(files.num_docs(), 7);
        let pairs: Vec<(u32, u32)> = (0..7).flat_map(|a| (0..7).map(move |b| (a, b))).collect();
        let docs: Vec<u32> = (0..7).collect();
        let spilled = SpillDocs { files: &files, sigs: files.signatures(&docs).unwrap() };
        let memory = InMemoryDocs { texts: &refs, shingling: &hasher.shingling, sigs: &sigs, num_perm: 64 };
        for verify in [Verify::Exact, Verify::Estimate] {
            let params = NearDupParams { threshold: 0.5, bands: 8, rows: 8, verify };
            let a = Verifier { docs: &spilled, params }.pair_similarities(&pairs).unwrap();
            let b = Verifier { docs: &memory, params }.pair_similarities(&pairs).unwrap();
            assert_eq!(a, b);
        }
        // A signature file of the wrong size is refused when the set is opened.
        write(&dir.join("u0.sig"), &[0u8; 12]);
        let bad = vec![SpillUnit { signatures: dir.join("u0.sig"), texts: None, count: 3 }];
        assert!(SpillFiles::new(bad, 64, hasher.shingling).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
