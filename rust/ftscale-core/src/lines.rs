//! Cutting a plain JSONL file into units of work at line starts, with each unit's first row.
//!
//! A record is a line with at least one byte that is not ASCII whitespace (space, \t, \n,
//! \v, \f, \r: what Python's `bytes.isspace` accepts); a UTF-8 BOM opening the file is not
//! content. Rows are numbered over records only, so a unit starting mid-file needs the count
//! of records before it: one sequential pass over the file finds both (memchr-speed; the
//! reader `ftscale.data.io.jsonl` applies the same rules line by line).

use std::io::{ErrorKind, Read};

const BLOCK: usize = 8 << 20;
const BOM: &[u8] = b"\xef\xbb\xbf";

#[inline]
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// One unit: the byte offset where it starts (a line start) and the records before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub start: u64,
    pub first_row: u64,
}

/// Scan state: position, records so far, and the chunks found.
struct Scan {
    target: u64,
    next_cut: u64,
    pos: u64,
    rows: u64,
    content: bool,    // the current line has a non-whitespace byte
    line_start: bool, // `pos` is the first byte of a line
    chunks: Vec<Chunk>,
}

impl Scan {
    fn feed(&mut self, bytes: &[u8], is_content: impl Fn(u8) -> bool) {
        for &b in bytes {
            if self.line_start && self.pos >= self.next_cut {
                self.chunks.push(Chunk { start: self.pos, first_row: self.rows });
                self.next_cut = (self.pos / self.target + 1) * self.target;
            }
            self.line_start = b == b'\n';
            if b == b'\n' {
                self.rows += self.content as u64;
                self.content = false;
            } else if is_content(b) {
                self.content = true;
            }
            self.pos += 1;
        }
    }
}

fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Chunks starting at the first line start at or after every multiple of `target` bytes
/// (the first chunk starts at 0), plus the total number of records.
pub fn plan_chunks(mut input: impl Read, target: u64) -> std::io::Result<(Vec<Chunk>, u64)> {
    let target = target.max(1);
    let mut scan = Scan { target, next_cut: target, pos: 0, rows: 0, content: false, line_start: false,
                          chunks: vec![Chunk { start: 0, first_row: 0 }] };
    let content = |b: u8| !is_space(b);
    let mut head = [0u8; 3];
    let n = read_full(&mut input, &mut head)?;
    if head[..n] == *BOM {
        scan.feed(&head[..n], |_| false); // a BOM opening the file is not content
    } else {
        scan.feed(&head[..n], content);
    }
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = read_full(&mut input, &mut buf)?;
        if n == 0 {
            break;
        }
        scan.feed(&buf[..n], content);
    }
    let rows = scan.rows + scan.content as u64; // a last line without a newline
    Ok((scan.chunks, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &[u8], target: u64) -> (Vec<(u64, u64)>, u64) {
        let (chunks, rows) = plan_chunks(text, target).unwrap();
        (chunks.iter().map(|c| (c.start, c.first_row)).collect(), rows)
    }

    #[test]
    fn records_are_non_blank_lines_and_cuts_fall_on_line_starts() {
        let text = b"{\"a\":1}\n\n  \t\r\n{\"b\":2}\r\n \x0b\n{\"c\":3}";
        assert_eq!(plan(text, 1 << 20), (vec![(0, 0)], 3));
        // Cut at >= 5 bytes: the next line start after byte 5 is 8 (a blank line), then 14.
        let (chunks, rows) = plan(text, 5);
        assert_eq!(rows, 3);
        assert_eq!(chunks[..3], [(0, 0), (8, 1), (14, 1)]);
        for (start, _) in &chunks[1..] {
            assert_eq!(text[*start as usize - 1], b'\n');
        }
    }

    #[test]
    fn a_bom_alone_is_blank_but_a_broken_bom_is_content() {
        assert_eq!(plan(b"\xef\xbb\xbf\n{}\n", 100).1, 1);
        assert_eq!(plan(b"\xef\xbb\xbf{}\n{}\n", 100).1, 2);
        assert_eq!(plan(b"\xef\xbb\n{}\n", 100).1, 2);
        assert_eq!(plan(b"", 100), (vec![(0, 0)], 0));
    }
}
