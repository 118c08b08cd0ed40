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
pub struct HeadVerdict {
    /// Why the head is ambiguous, if it is.
    pub ambiguous: Option<&'static str>,
}

/// A streaming scanner over one HTTP/1 request head.
///
/// Per line it looks only at the first bytes (is it `Content-Length:` or
/// `Transfer-Encoding:`?) and at the byte before the LF (CRLF or bare LF); the rest of a line
/// is skipped with a byte search, so a typical head costs a few hundred instructions.
#[derive(Debug, Default)]
pub struct HeadScanner {
    /// The start of the current line when it arrived split over reads (rare), lower-cased.
    start: [u8; 32],
    start_len: usize,
    /// Bytes of the current line seen so far.
    line_len: usize,
    /// The last byte seen on the current line.
    last: u8,
    /// Whether a split line had a comma past its kept start.
    line_comma: bool,
    /// Whether a non-empty line (the request line) has been seen: empty lines before it are
    /// skipped, as HTTP/1 parsers do, rather than taken for the end of the head.
    seen_line: bool,
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
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Whether the blank line ending the head has been seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Scans the next bytes of the head; bytes after its end are ignored.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !self.done && !bytes.is_empty() {
            let (part, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], Some(i + 1)),
                None => (bytes, None),
            };
            if self.line_len == 0 && ended.is_some() {
                // The whole line is in this read: judge it in place.
                self.judge(part);
            } else {
                self.keep_start(part);
                if ended.is_some() {
                    let kept = self.start;
                    let kept_len = self.start_len.min(kept.len());
                    let full_len = self.line_len;
                    let last = self.last;
                    self.judge_split(&kept[..kept_len], full_len, last);
                }
            }
            match ended {
                Some(n) => {
                    self.line_len = 0;
                    self.start_len = 0;
                    bytes = &bytes[n..];
                }
                None => bytes = &[],
            }
        }
    }

    /// Judges a complete line (without its LF).
    fn judge(&mut self, line: &[u8]) {
        let last = line.last().copied().unwrap_or(0);
        self.judge_split(line, line.len(), last);
    }

    /// Judges a line from its start, its full length and its last byte.
    fn judge_split(&mut self, start: &[u8], len: usize, last: u8) {
        let content_len = if last == b'\r' { len - 1 } else { len };
        if last != b'\r' {
            self.bare_lf = true;
        }
        let comma = std::mem::take(&mut self.line_comma);
        if content_len == 0 {
            self.done = self.seen_line;
            return;
        }
        self.seen_line = true;
        if starts_with_ignore_case(start, CL) {
            self.content_lengths = self.content_lengths.saturating_add(1);
            if comma || start[CL.len()..].contains(&b',') {
                self.content_length_list = true;
            }
        } else if starts_with_ignore_case(start, TE) {
            self.transfer_encoding = true;
        }
    }

    fn keep_start(&mut self, part: &[u8]) {
        let room = self.start.len().saturating_sub(self.start_len);
        let n = part.len().min(room);
        // Past the kept start only a comma can still matter (a Content-Length list).
        if part[n..].contains(&b',') {
            self.line_comma = true;
        }
        self.start[self.start_len..self.start_len + n].copy_from_slice(&part[..n]);
        self.start_len += n;
        self.line_len += part.len();
        if let Some(&b) = part.last() {
            self.last = b;
        }
    }

    /// The verdict on the head scanned so far.
    pub fn verdict(&self) -> HeadVerdict {
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
}

fn starts_with_ignore_case(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
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
    fn leading_empty_lines_do_not_end_the_head() {
        let head =
            b"\r\nPOST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        for split in 0..head.len() {
            let (v, done) = scan(head, split);
            assert!(v.ambiguous.is_some(), "split {split}");
            assert!(done);
        }
    }

    #[test]
    fn a_list_past_the_kept_start_is_seen_at_every_split() {
        let mut head = b"POST / HTTP/1.1\r\nContent-Length: 5".to_vec();
        head.extend(std::iter::repeat_n(b' ', 40));
        head.extend_from_slice(b", 5\r\n\r\n");
        for split in 0..head.len() {
            assert!(scan(&head, split).0.ambiguous.is_some(), "split {split}");
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
