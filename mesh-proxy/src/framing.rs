//! Spotting ambiguous HTTP/1 request framing that hyper would quietly resolve.
//!
//! hyper's parser already rejects conflicting `Content-Length` values and bad chunk sizes.
//! For a request with both `Content-Length` and `Transfer-Encoding`, or with a repeated or
//! list-valued `Content-Length`, it picks one framing, drops the other header and forwards
//! the request re-framed. That is safe for the next hop, but DESIGN.md §5 asks the proxy to
//! refuse such requests (400 and close): a client sending them is confused or probing for
//! request smuggling. The parsed header map no longer shows the conflict, so this scanner
//! looks at the raw request head as it is read and records what it saw.
//!
//! It also rejects bare LF line endings in the head (DESIGN.md §5): httparse accepts them,
//! but a downstream parser that does not is a classic smuggling split.
//!
//! It only looks at header names at line starts, only within the head, and stops at the
//! blank line; body bytes are never examined.

/// What the scanner concluded about one request head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HeadVerdict {
    pub(crate) ambiguous: Option<&'static str>,
}

/// A streaming scanner over one HTTP/1 request head.
#[derive(Debug, Default)]
pub(crate) struct HeadScanner {
    /// The start of the current line, lower-cased; enough to match a header name and a
    /// short `Content-Length` value.
    line: [u8; 32],
    line_len: usize,
    bare_lf: bool,
    content_lengths: u8,
    content_length_list: bool,
    transfer_encoding: bool,
    done: bool,
}

const CL: &[u8] = b"content-length:";
const TE: &[u8] = b"transfer-encoding:";

impl HeadScanner {
    /// Starts on a new request head.
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }

    /// Whether the blank line ending the head has been seen.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Scans the next bytes of the head; bytes after its end are ignored.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !self.done && !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.push(&bytes[..i]);
                    self.end_line();
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.push(bytes);
                    bytes = &[];
                }
            }
        }
    }

    /// The verdict on the head scanned so far.
    pub(crate) fn verdict(&self) -> HeadVerdict {
        let ambiguous = if self.transfer_encoding && self.content_lengths > 0 {
            Some("request has both content-length and transfer-encoding")
        } else if self.content_lengths > 1 {
            Some("request has more than one content-length")
        } else if self.content_length_list {
            Some("request content-length is a list")
        } else if self.bare_lf {
            Some("request head uses a bare LF line ending")
        } else {
            None
        };
        HeadVerdict { ambiguous }
    }

    fn push(&mut self, part: &[u8]) {
        // Only the last byte before the LF matters for the line ending; keep it even when the
        // line is longer than the kept prefix.
        if self.line_len == self.line.len() {
            if let Some(&last) = part.last() {
                self.line[self.line.len() - 1] = last;
            }
            return;
        }
        let room = self.line.len() - self.line_len;
        let n = part.len().min(room);
        for (dst, src) in self.line[self.line_len..self.line_len + n]
            .iter_mut()
            .zip(part)
        {
            *dst = src.to_ascii_lowercase();
        }
        self.line_len += n;
        // A line longer than the kept prefix keeps its true last byte in the final slot.
        if part.len() > n {
            self.line_len = self.line.len();
            if let Some(&last) = part.last() {
                self.line[self.line.len() - 1] = last;
            }
        }
    }

    fn end_line(&mut self) {
        let mut line = &self.line[..self.line_len];
        match line.strip_suffix(b"\r") {
            Some(stripped) => line = stripped,
            None => self.bare_lf = true,
        }
        if line.is_empty() {
            self.done = true;
        } else if let Some(value) = line.strip_prefix(CL) {
            self.content_lengths = self.content_lengths.saturating_add(1);
            if value.contains(&b',') {
                self.content_length_list = true;
            }
        } else if line.starts_with(TE) {
            self.transfer_encoding = true;
        }
        self.line_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(head: &[u8], split: usize) -> (HeadVerdict, bool) {
        let mut s = HeadScanner::default();
        let split = split.min(head.len());
        s.feed(&head[..split]);
        s.feed(&head[split..]);
        (s.verdict(), s.is_done())
    }

    #[test]
    fn plain_requests_pass_at_every_split() {
        let head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        for split in 0..head.len() {
            let (v, done) = scan(head, split);
            assert_eq!(v.ambiguous, None, "split {split}");
            assert!(done);
        }
    }

    #[test]
    fn ambiguous_heads_are_flagged_at_every_split() {
        let cases: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\nContent-Length: 5\nTransfer-Encoding: chunked\n\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        ];
        for head in cases {
            for split in 0..head.len() {
                assert!(
                    scan(head, split).0.ambiguous.is_some(),
                    "{:?} split {split}",
                    String::from_utf8_lossy(head)
                );
            }
        }
    }

    #[test]
    fn body_bytes_are_not_scanned() {
        let head =
            b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(scan(head, 0).0.ambiguous, None);
    }

    #[test]
    fn long_lines_do_not_end_the_head() {
        let mut head = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 500));
        head.extend_from_slice(b"\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(scan(&head, 30).0.ambiguous.is_some());
    }
}
