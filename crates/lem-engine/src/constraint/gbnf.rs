//! llama.cpp GBNF grammars translated to llguidance's Lark dialect.
//!
//! llguidance reads Lark, llama-server's `grammar` field carries GBNF. The translation
//! follows llama.cpp's grammar parser (`llama-grammar.cpp`): a rule is `name ::= body`;
//! newlines end a rule except right after `::=` or `|` and inside parentheses; `#`
//! starts a comment; items are `"strings"`, `[character classes]` (`^` negates), `.`
//! (any character), rule names (letters, digits, `-`), `( groups )`, with `*`, `+`, `?`
//! and `{m}`, `{m,}`, `{m,n}` after them. Every rule becomes a Lark rule `g_<name>`
//! (dashes as `_`, capitals as `__` + the lowercase letter, so no two names meet and none
//! is a Lark keyword), strings become JSON-escaped Lark strings, character classes and
//! `.` become regular expressions, and `start: g_root` opens the grammar.

use std::fmt::Write;

use crate::error::EngineError;

/// Translates a GBNF grammar to llguidance's Lark dialect (see the module documentation).
///
/// # Errors
/// [`EngineError::Grammar`] naming the line for text that is not GBNF, or a grammar
/// without a `root` rule.
pub fn gbnf_to_lark(text: &str) -> Result<String, EngineError> {
    let mut p = Parser { src: text.as_bytes(), pos: 0 };
    let mut out = String::from("start: g_root\n");
    let mut has_root = false;
    loop {
        p.skip(true);
        if p.at_end() {
            break;
        }
        let name = p.name().ok_or_else(|| p.error("expected a rule name"))?;
        has_root |= name == "root";
        p.skip(false);
        if !p.eat("::=") {
            return Err(p.error(&format!("expected ::= after rule name {name}")));
        }
        p.skip(true);
        let body = p.alternatives(false)?;
        let _ = writeln!(out, "{}: {body}", rule_name(&name));
        p.skip(false);
        if !p.at_end() && !p.eat("\n") && !p.eat("\r\n") {
            return Err(p.error("expected the end of the rule"));
        }
    }
    if !has_root {
        return Err(EngineError::Grammar("GBNF grammar has no `root` rule".into()));
    }
    Ok(out)
}

/// The Lark rule name of GBNF rule `name`.
fn rule_name(name: &str) -> String {
    let mut out = String::from("g_");
    for c in name.chars() {
        match c {
            '-' => out.push('_'),
            'A'..='Z' => {
                out.push_str("__");
                out.push(c.to_ascii_lowercase());
            }
            c => out.push(c),
        }
    }
    out
}

/// A GBNF cursor.
struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn eat(&mut self, s: &str) -> bool {
        if self.src[self.pos..].starts_with(s.as_bytes()) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    /// An error at the current position (1-based line).
    fn error(&self, what: &str) -> EngineError {
        let line = self.src[..self.pos.min(self.src.len())].iter().filter(|&&b| b == b'\n').count() + 1;
        EngineError::Grammar(format!("GBNF line {line}: {what}"))
    }

    /// Skips spaces, tabs and comments, and newlines when `newlines` (llama.cpp's
    /// `parse_space`).
    fn skip(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' => self.pos += 1,
                b'#' => {
                    while self.peek().is_some_and(|c| c != b'\n') {
                        self.pos += 1;
                    }
                }
                b'\r' | b'\n' if newlines => self.pos += 1,
                _ => break,
            }
        }
    }

    /// A rule name (`[A-Za-z0-9-]+`).
    fn name(&mut self) -> Option<String> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'-') {
            self.pos += 1;
        }
        (self.pos > start).then(|| String::from_utf8_lossy(&self.src[start..self.pos]).into_owned())
    }

    /// `seq | seq | ...`; `nested` inside parentheses (newlines are spaces there).
    fn alternatives(&mut self, nested: bool) -> Result<String, EngineError> {
        let mut out = self.sequence(nested)?;
        while self.peek() == Some(b'|') {
            self.pos += 1;
            self.skip(true);
            out.push_str(" | ");
            out.push_str(&self.sequence(nested)?);
        }
        Ok(out)
    }

    /// Items up to `|`, `)`, the end of the rule or of the text.
    fn sequence(&mut self, nested: bool) -> Result<String, EngineError> {
        let mut items: Vec<String> = Vec::new();
        loop {
            let item = match self.peek() {
                None | Some(b'|' | b')' | b'\n' | b'\r') => break,
                Some(b'"') => self.string()?,
                Some(b'[') => self.class()?,
                Some(b'.') => {
                    self.pos += 1;
                    "/(?s:.)/".to_owned()
                }
                Some(b'(') => {
                    self.pos += 1;
                    self.skip(true);
                    let inner = self.alternatives(true)?;
                    self.skip(true);
                    if !self.eat(")") {
                        return Err(self.error("expected )"));
                    }
                    format!("({inner})")
                }
                Some(c) if c.is_ascii_alphanumeric() || c == b'-' => {
                    let name = self.name().unwrap_or_default();
                    rule_name(&name)
                }
                Some(c) => return Err(self.error(&format!("unexpected character {:?}", c as char))),
            };
            let suffix = self.repetition()?;
            items.push(item + &suffix);
            self.skip(nested);
        }
        Ok(if items.is_empty() { "\"\"".to_owned() } else { items.join(" ") })
    }

    /// `*`, `+`, `?` or `{m}`, `{m,}`, `{m,n}` after an item (as Lark writes them).
    fn repetition(&mut self) -> Result<String, EngineError> {
        match self.peek() {
            Some(c @ (b'*' | b'+' | b'?')) => {
                self.pos += 1;
                Ok((c as char).to_string())
            }
            Some(b'{') => {
                self.pos += 1;
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_ascii_digit() || c == b',' || c == b' ') {
                    self.pos += 1;
                }
                let body: String = String::from_utf8_lossy(&self.src[start..self.pos]).split_whitespace().collect();
                if !self.eat("}") {
                    return Err(self.error("expected } after a repetition count"));
                }
                let (min, max) = match body.split_once(',') {
                    Some((a, b)) => (a, Some(b)),
                    None => (body.as_str(), None),
                };
                let num = |s: &str| s.parse::<u32>().map_err(|_| self.error(&format!("bad repetition {{{body}}}")));
                let min = if min.is_empty() { 0 } else { num(min)? };
                Ok(match max {
                    None => format!("{{{min}}}"),
                    Some("") => format!("{{{min},}}"),
                    Some(m) => {
                        let m = num(m)?;
                        if m < min {
                            return Err(self.error(&format!("bad repetition {{{body}}}")));
                        }
                        format!("{{{min},{m}}}")
                    }
                })
            }
            _ => Ok(String::new()),
        }
    }

    /// One character of a string or class, with llama.cpp's escapes.
    fn char(&mut self) -> Result<char, EngineError> {
        let rest = std::str::from_utf8(&self.src[self.pos..]).map_err(|_| self.error("invalid UTF-8"))?;
        let mut chars = rest.chars();
        let c = chars.next().ok_or_else(|| self.error("unexpected end of grammar"))?;
        self.pos += c.len_utf8();
        if c != '\\' {
            return Ok(c);
        }
        let e = chars.next().ok_or_else(|| self.error("unexpected end after \\"))?;
        self.pos += e.len_utf8();
        let hex = |p: &mut Self, n: usize| -> Result<char, EngineError> {
            let digits = p.src.get(p.pos..p.pos + n).and_then(|d| std::str::from_utf8(d).ok());
            let v = digits.and_then(|d| u32::from_str_radix(d, 16).ok()).and_then(char::from_u32);
            p.pos += n;
            v.ok_or_else(|| p.error("bad hex escape"))
        };
        Ok(match e {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'x' => hex(self, 2)?,
            'u' => hex(self, 4)?,
            'U' => hex(self, 8)?,
            other => other,
        })
    }

    /// `"..."` as a Lark string.
    fn string(&mut self) -> Result<String, EngineError> {
        self.pos += 1;
        let mut s = String::new();
        loop {
            match self.peek() {
                None | Some(b'\n') => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                _ => s.push(self.char()?),
            }
        }
        if s.is_empty() {
            return Ok("\"\"".to_owned());
        }
        Ok(serde_json::to_string(&s).unwrap_or_default())
    }

    /// `[...]` as a Lark regular expression.
    fn class(&mut self) -> Result<String, EngineError> {
        self.pos += 1;
        let mut out = String::from("/[");
        if self.eat("^") {
            out.push('^');
        }
        let mut any = false;
        loop {
            match self.peek() {
                None | Some(b'\n') => return Err(self.error("unterminated character class")),
                Some(b']') => {
                    self.pos += 1;
                    break;
                }
                _ => {
                    let c = self.char()?;
                    push_class_char(&mut out, c);
                    if self.peek() == Some(b'-') && self.src.get(self.pos + 1).is_some_and(|&b| b != b']' && b != b'\n')
                    {
                        self.pos += 1;
                        let hi = self.char()?;
                        if hi < c {
                            return Err(self.error(&format!("bad range {c:?}-{hi:?} in a character class")));
                        }
                        out.push('-');
                        push_class_char(&mut out, hi);
                    }
                    any = true;
                }
            }
        }
        if !any {
            return Err(self.error("empty character class"));
        }
        out.push_str("]/");
        Ok(out)
    }
}

/// `c` inside a regex character class: letters and digits as they are, anything else as
/// `\x{..}` (never special, never a `/`).
fn push_class_char(out: &mut String, c: char) {
    if c.is_ascii_alphanumeric() {
        out.push(c);
    } else {
        let _ = write!(out, "\\x{{{:x}}}", c as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's grammars/json.gbnf.
    const JSON: &str = r#"
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
"#;

    #[test]
    fn translates_json_gbnf() {
        let lark = gbnf_to_lark(JSON).unwrap();
        assert!(lark.starts_with("start: g_root\n"), "{lark}");
        assert!(lark.contains("g_root: g_object\n"), "{lark}");
        assert!(
            lark.contains(r#"g_value: g_object | g_array | g_string | g_number | ("true" | "false" | "null") g_ws"#)
        );
        assert!(lark.contains(r#"/[0-9a-fA-F]/{4}"#), "{lark}");
        assert!(lark.contains(r#"g_ws: "" | " " | "\n" /[\x{20}\x{9}]/{0,20}"#), "{lark}");
        assert!(lark.contains(r#"/[^\x{22}\x{5c}\x{7f}\x{0}-\x{1f}]/"#), "{lark}");
        // Seven rules and the start rule, one line each: the multi-line rules were joined.
        assert_eq!(lark.lines().count(), 8, "{lark}");
    }

    /// Whether llguidance, given the translation of `gbnf` over a one-byte-per-token
    /// vocabulary, accepts exactly `text`.
    fn accepts(gbnf: &str, text: &str) -> bool {
        use llguidance::api::TopLevelGrammar;
        use llguidance::toktrie::ApproximateTokEnv;
        let mut factory = llguidance::ParserFactory::new_simple(&ApproximateTokEnv::single_byte_env()).unwrap();
        factory.quiet();
        let lark = gbnf_to_lark(gbnf).unwrap();
        let parser =
            factory.create_parser(TopLevelGrammar::from_lark(lark.clone())).unwrap_or_else(|e| panic!("{e}\n{lark}"));
        let mut m = llguidance::Matcher::new(Ok(parser));
        text.bytes().all(|b| m.consume_token(u32::from(b)).is_ok()) && m.is_accepting().unwrap_or(false)
    }

    #[test]
    fn translations_accept_what_the_gbnf_accepts() {
        for ok in [r#"{"a": [1, -2.5, "x\n\u00e9"], "b": {"c": null}}"#, "{}", "{\"k\":true}"] {
            assert!(accepts(JSON, ok), "{ok}");
        }
        for bad in [r#"{"a" 1}"#, "[1, 2]", r#"{"a": 01}"#, r#"{"a": "unterminated}"#] {
            assert!(!accepts(JSON, bad), "{bad}");
        }
        let list = "root ::= item{1,3}\nitem ::= \"- \" [a-z]+ \"\\n\"";
        assert!(accepts(list, "- tea\n- milk\n"));
        assert!(!accepts(list, "- a\n- b\n- c\n- d\n"));
        assert!(!accepts(list, "- Tea\n"));
        let arith = "root ::= expr\nexpr ::= term ((\"+\" | \"-\") term)*\nterm ::= [0-9]+ | \"(\" expr \")\"";
        assert!(accepts(arith, "(1+2)-30"));
        assert!(!accepts(arith, "(1+2"));
    }

    #[test]
    fn names_dashes_and_case() {
        let lark = gbnf_to_lark("root ::= my-rule Other\nmy-rule ::= \"a\"\nOther ::= [b]?").unwrap();
        assert_eq!(lark, "start: g_root\ng_root: g_my_rule g___other\ng_my_rule: \"a\"\ng___other: /[b]/?\n");
    }

    #[test]
    fn arithmetic_and_list() {
        let arith = "root ::= (expr \"=\" term \"\\n\")+\nexpr ::= term ([-+*/] term)*\nterm ::= [0-9]+";
        let lark = gbnf_to_lark(arith).unwrap();
        assert!(lark.contains(r#"g_root: (g_expr "=" g_term "\n")+"#), "{lark}");
        assert!(lark.contains(r#"g_expr: g_term (/[\x{2d}\x{2b}\x{2a}\x{2f}]/ g_term)*"#), "{lark}");
        let list = "root ::= item{1,3}\nitem ::= \"- \" [a-z]+ \"\\n\"";
        assert!(gbnf_to_lark(list).unwrap().contains("g_root: g_item{1,3}"));
        assert!(gbnf_to_lark("root ::= \"a\"{2,}").unwrap().contains("\"a\"{2,}"));
        assert!(gbnf_to_lark("root ::= \"\\u00e9\" .").unwrap().contains("\"é\" /(?s:.)/"));
    }

    #[test]
    fn bad_grammars_are_errors() {
        for (text, what) in [
            ("item ::= \"a\"", "no `root` rule"),
            ("root ::= \"a", "line 1: unterminated string"),
            ("root ::= [a-\nz]", "unterminated character class"),
            ("root ::= (\"a\"", "expected )"),
            ("root = \"a\"", "expected ::="),
            ("root ::= \"a\"{3,1}", "bad repetition"),
            ("root ::= \"a\"\nx ::= @", "line 2: unexpected character '@'"),
        ] {
            let err = gbnf_to_lark(text).unwrap_err().to_string();
            assert!(err.contains(what), "{text:?}: {err}");
        }
    }
}
