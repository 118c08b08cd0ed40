//! The text form of paths, prefixes, name trees and dtabs: a hand-written recursive-descent
//! parser with Finagle's grammar (`NameTreeParsers`), bounded so that hostile input is
//! rejected rather than overflowing the stack.
//!
//! ```text
//! dtab     ::= [dentry (';' dentry)* [';']]
//! dentry   ::= prefix '=>' tree
//! prefix   ::= '/' | ('/' ('*' | label))+
//! path     ::= '/' | ('/' label)+
//! label    ::= (showable | '\x' HEX HEX)+      showable = [0-9A-Za-z_:.#$%-]
//! tree     ::= tree1 ('|' tree1)*               alternation, lowest precedence
//! tree1    ::= weighted ('&' weighted)*         union
//! weighted ::= [number '*'] simple              number ::= [0-9.]+
//! simple   ::= '(' tree ')' | path | '!' | '~' | '$'
//! ```
//!
//! Whitespace and `#` comments (to the end of the line) may appear between tokens, but not
//! inside a label: there `#` is an ordinary byte. Only recursion through parentheses can
//! nest, so [`MAX_NESTING`] bounds the parser's stack; [`MAX_INPUT_BYTES`] bounds its work.
//! Offsets in errors are byte offsets into the input.

use bytes::Bytes;

use super::path::{Elem, Path, Prefix, is_showable};
use super::table::{Dentry, Dtab};
use super::tree::{NameTree, Weighted};
use super::{MAX_INPUT_BYTES, MAX_NESTING, ParseError};

pub(crate) struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

/// Java's `Character.isWhitespace`, which Finagle's parser uses: Unicode space separators
/// except the non-breaking ones, and the ASCII controls `\t`..`\r`, `\x1c`..`\x1f`.
fn is_whitespace(c: char) -> bool {
    matches!(c, '\t'..='\r' | '\x1c'..='\x1f' | ' ' | '\u{1680}' | '\u{2000}'..='\u{2006}'
        | '\u{2008}'..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{205f}' | '\u{3000}')
}

fn is_label_char(c: Option<char>) -> bool {
    match c {
        Some(c) if c.is_ascii() => is_showable(c as u8) || c == '\\',
        _ => false,
    }
}

fn is_number_char(c: Option<char>) -> bool {
    matches!(c, Some('0'..='9' | '.'))
}

impl<'a> Parser<'a> {
    pub(crate) fn new(src: &'a str) -> Result<Self, ParseError> {
        if src.len() > MAX_INPUT_BYTES {
            return Err(ParseError {
                offset: MAX_INPUT_BYTES,
                expected: format!("at most {MAX_INPUT_BYTES} bytes"),
                found: format!("{} bytes", src.len()),
            });
        }
        Ok(Parser { src, pos: 0 })
    }

    /// Runs `f`, then requires that only whitespace and comments remain.
    pub(crate) fn all<T>(
        mut self,
        f: impl FnOnce(&mut Self) -> Result<T, ParseError>,
    ) -> Result<T, ParseError> {
        let value = f(&mut self)?;
        self.eat_whitespace();
        if self.peek().is_some() {
            return Err(self.error("end of input"));
        }
        Ok(value)
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.pos += c.len_utf8();
        }
    }

    fn error(&self, expected: &str) -> ParseError {
        self.error_at(self.pos, expected)
    }

    fn error_at(&self, offset: usize, expected: &str) -> ParseError {
        let found = match self.src[offset..].chars().next() {
            Some(c) => format!("'{}'", c.escape_debug()),
            None => "end of input".to_owned(),
        };
        ParseError {
            offset,
            expected: expected.to_owned(),
            found,
        }
    }

    fn maybe_eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn eat(&mut self, c: char, expected: &str) -> Result<(), ParseError> {
        if self.maybe_eat(c) {
            Ok(())
        } else {
            Err(self.error(expected))
        }
    }

    fn eat_whitespace(&mut self) {
        while let Some(c) = self.peek() {
            if c == '#' {
                // A comment runs to the end of the line (the newline included).
                match self.src[self.pos..].find('\n') {
                    Some(i) => self.pos += i + 1,
                    None => self.pos = self.src.len(),
                }
            } else if is_whitespace(c) {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn hex(&mut self) -> Result<u8, ParseError> {
        let digit = self.peek().and_then(|c| c.to_digit(16));
        match digit {
            Some(d) => {
                self.bump();
                // `to_digit(16)` is below 16.
                Ok(d as u8)
            }
            None => Err(self.error("hex char")),
        }
    }

    fn label(&mut self) -> Result<Bytes, ParseError> {
        let mut bytes = Vec::new();
        loop {
            match self.peek() {
                Some('\\') => {
                    self.bump();
                    self.eat('x', "'x'")?;
                    let hi = self.hex()?;
                    let lo = self.hex()?;
                    bytes.push(hi << 4 | lo);
                }
                Some(c) if c.is_ascii() && is_showable(c as u8) => {
                    self.bump();
                    bytes.push(c as u8);
                }
                _ => return Err(self.error("label char")),
            }
            if !is_label_char(self.peek()) {
                return Ok(Bytes::from(bytes));
            }
        }
    }

    pub(crate) fn path(&mut self) -> Result<Path, ParseError> {
        self.eat_whitespace();
        self.eat('/', "'/'")?;
        let mut labels = Vec::new();
        if is_label_char(self.peek()) {
            loop {
                labels.push(self.label()?);
                if !self.maybe_eat('/') {
                    break;
                }
            }
        }
        Ok(Path::from_bytes_vec(labels))
    }

    pub(crate) fn prefix(&mut self) -> Result<Prefix, ParseError> {
        self.eat_whitespace();
        self.eat('/', "'/'")?;
        let mut elems = Vec::new();
        if is_label_char(self.peek()) || self.peek() == Some('*') {
            loop {
                if self.maybe_eat('*') {
                    elems.push(Elem::Any);
                } else {
                    elems.push(Elem::Label(self.label()?));
                }
                if !self.maybe_eat('/') {
                    break;
                }
            }
        }
        Ok(Prefix::new(elems))
    }

    fn number(&mut self) -> Result<f64, ParseError> {
        let start = self.pos;
        let mut seen_dot = false;
        while is_number_char(self.peek()) {
            if self.peek() == Some('.') {
                if seen_dot {
                    return Err(self.error("number char"));
                }
                seen_dot = true;
            }
            self.bump();
        }
        let text = &self.src[start..self.pos];
        match text.parse::<f64>() {
            Ok(w) if w.is_finite() => Ok(w),
            _ => Err(self.error_at(start, "weight")),
        }
    }

    fn simple(&mut self, depth: usize) -> Result<NameTree<Path>, ParseError> {
        self.eat_whitespace();
        match self.peek() {
            Some('(') => {
                if depth >= MAX_NESTING {
                    return Err(self.error(&format!("at most {MAX_NESTING} nested parentheses")));
                }
                self.bump();
                let tree = self.tree_at(depth + 1)?;
                self.eat_whitespace();
                self.eat(')', "')'")?;
                Ok(tree)
            }
            Some('/') => Ok(NameTree::Leaf(self.path()?)),
            Some('!') => {
                self.bump();
                Ok(NameTree::Fail)
            }
            Some('~') => {
                self.bump();
                Ok(NameTree::Neg)
            }
            Some('$') => {
                self.bump();
                Ok(NameTree::Empty)
            }
            _ => Err(self.error("a path, '(', '!', '~' or '$'")),
        }
    }

    fn weighted(&mut self, depth: usize) -> Result<(Option<f64>, NameTree<Path>), ParseError> {
        self.eat_whitespace();
        let weight = if is_number_char(self.peek()) {
            let w = self.number()?;
            self.eat_whitespace();
            self.eat('*', "'*'")?;
            Some(w)
        } else {
            None
        };
        Ok((weight, self.simple(depth)?))
    }

    fn tree1(&mut self, depth: usize) -> Result<NameTree<Path>, ParseError> {
        let mut members = Vec::new();
        loop {
            members.push(self.weighted(depth)?);
            self.eat_whitespace();
            if !self.maybe_eat('&') {
                break;
            }
        }
        if members.len() == 1 {
            // A lone member is just its tree, unless an explicit weight other than 1 makes
            // it a one-member union (its weight then reaches the addresses it binds to).
            let (weight, tree) = members.remove(0);
            return Ok(match weight {
                Some(weight) if weight != Weighted::<Path>::DEFAULT_WEIGHT => {
                    NameTree::Union(vec![Weighted { weight, tree }])
                }
                _ => tree,
            });
        }
        Ok(NameTree::Union(
            members
                .into_iter()
                .map(|(w, tree)| Weighted {
                    weight: w.unwrap_or(Weighted::<Path>::DEFAULT_WEIGHT),
                    tree,
                })
                .collect(),
        ))
    }

    fn tree_at(&mut self, depth: usize) -> Result<NameTree<Path>, ParseError> {
        let mut alts = Vec::new();
        loop {
            alts.push(self.tree1(depth)?);
            self.eat_whitespace();
            if !self.maybe_eat('|') {
                break;
            }
        }
        if alts.len() == 1 {
            return Ok(alts.remove(0));
        }
        Ok(NameTree::Alt(alts))
    }

    pub(crate) fn tree(&mut self) -> Result<NameTree<Path>, ParseError> {
        self.tree_at(0)
    }

    pub(crate) fn dentry(&mut self) -> Result<Dentry, ParseError> {
        let prefix = self.prefix()?;
        self.eat_whitespace();
        let arrow = self.pos;
        if !self.src[self.pos..].starts_with("=>") {
            // Point at the character that is not part of `=>`.
            let bad = if self.maybe_eat('=') { self.pos } else { arrow };
            return Err(self.error_at(bad, "'=>'"));
        }
        self.pos += 2;
        let dst = self.tree()?;
        Ok(Dentry { prefix, dst })
    }

    pub(crate) fn dtab(&mut self) -> Result<Dtab, ParseError> {
        let mut dentries = Vec::new();
        loop {
            self.eat_whitespace();
            if self.peek().is_some() {
                dentries.push(self.dentry()?);
                self.eat_whitespace();
            }
            if !self.maybe_eat(';') {
                break;
            }
        }
        Ok(Dtab::new(dentries))
    }
}
