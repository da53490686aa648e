//! A small decoder that collects every error instead of stopping at the first.
//!
//! Contract: each helper either returns the decoded value or records exactly
//! one diagnostic at the offending node and returns `None`; it never panics.
//! Callers decode every field before combining them (`Some(T { a: a?, .. })`),
//! so one bad field does not hide the next. A mapping's keys are judged when
//! it is opened with [`Decoder::map`]: non-name keys, duplicates and unknown
//! keys (with a "did you mean") are reported there, once.
//!
//! A null (`key:` with no value) reads as an empty mapping or list, so an
//! empty section means "defaults"; where a scalar is expected it is an error.

use std::fmt::Display;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use ipnet::IpNet;

use crate::diag::Diagnostic;
use crate::duration::{self, DurationError};
use crate::yaml::{Node, Pos, Value};

pub(crate) struct Decoder {
    file: String,
    found: Vec<Diagnostic>,
}

/// An opened mapping: its known keys, each once, in file order.
pub(crate) struct Map<'n> {
    pub pos: Pos,
    what: &'static str,
    entries: Vec<(&'n str, Pos, &'n Node)>,
    /// Known keys offered as "did you mean" for an unknown one: their absence
    /// is already explained, so `required` stays quiet about them.
    suggested: Vec<&'static str>,
}

impl<'n> Map<'n> {
    /// The value under `key`, if given.
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entry(key).map(|e| e.2)
    }

    /// Where `key` itself is written, if given.
    pub fn key_pos(&self, key: &str) -> Option<Pos> {
        self.entry(key).map(|e| e.1)
    }

    /// Decodes an optional field; `None` if absent or if decoding failed.
    pub fn field<T>(
        &self,
        d: &mut Decoder,
        key: &str,
        decode: impl FnOnce(&mut Decoder, &'n Node) -> Option<T>,
    ) -> Option<T> {
        self.get(key).and_then(|node| decode(d, node))
    }

    /// Decodes a required field, reporting its absence at the mapping.
    pub fn required<T>(
        &self,
        d: &mut Decoder,
        key: &str,
        decode: impl FnOnce(&mut Decoder, &'n Node) -> Option<T>,
    ) -> Option<T> {
        match self.get(key) {
            Some(node) => decode(d, node),
            None if self.suggested.contains(&key) => None,
            None => {
                d.error(self.pos, format!("{} is missing required key \"{key}\"", self.what));
                None
            }
        }
    }

    fn entry(&self, key: &str) -> Option<&(&'n str, Pos, &'n Node)> {
        self.entries.iter().find(|e| e.0 == key)
    }
}

impl Decoder {
    pub fn new(file: &str) -> Self {
        Decoder { file: file.to_owned(), found: Vec::new() }
    }

    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.found.push(Diagnostic {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
        });
    }

    /// How many errors so far; compare before and after a step to learn
    /// whether it was clean (and so whether cross-checks on it make sense).
    pub fn error_count(&self) -> usize {
        self.found.len()
    }

    pub fn into_diagnostics(self) -> Vec<Diagnostic> {
        self.found
    }

    /// Opens a mapping that may hold `keys`, reporting keys that are not
    /// names, duplicates and unknown keys.
    pub fn map<'n>(
        &mut self,
        node: &'n Node,
        what: &'static str,
        keys: &'static [&'static str],
    ) -> Option<Map<'n>> {
        let raw: &[(Node, Node)] = match &node.value {
            _ if node.is_null() => &[],
            Value::Map(entries) => entries,
            _ => {
                let message = format!(
                    "{what}: expected a mapping with keys {}, found {}",
                    keys.join(", "),
                    found(node)
                );
                self.error(node.pos, message);
                return None;
            }
        };
        let mut entries: Vec<(&'n str, Pos, &'n Node)> = Vec::with_capacity(raw.len());
        let mut suggested = Vec::new();
        for (key, value) in raw {
            let name = match &key.value {
                Value::Scalar(s) if !key.is_null() => s.text.as_str(),
                _ => {
                    let message = format!("keys in {what} must be names, found {}", found(key));
                    self.error(key.pos, message);
                    continue;
                }
            };
            if let Some(first) = entries.iter().find(|e| e.0 == name) {
                let message = format!(
                    "duplicate key \"{name}\" in {what}; first given at line {}",
                    first.1.line
                );
                self.error(key.pos, message);
                continue;
            }
            if !keys.contains(&name) {
                let close = suggest(name, keys);
                suggested.extend(close);
                let hint =
                    close.map(|k| format!("; did you mean \"{k}\"?")).unwrap_or_else(|| ";".into());
                let message =
                    format!("unknown key \"{name}\" in {what}{hint} allowed: {}", keys.join(", "));
                self.error(key.pos, message);
            }
            entries.push((name, key.pos, value));
        }
        Some(Map { pos: node.pos, what, entries, suggested })
    }

    /// The items of a list; null reads as an empty list.
    pub fn seq<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [Node]> {
        match &node.value {
            _ if node.is_null() => Some(&[]),
            Value::Seq(items) => Some(items),
            _ => {
                let message = format!("{what}: expected a list, found {}", found(node));
                self.error(node.pos, message);
                None
            }
        }
    }

    /// Decodes each item of a list, keeping the ones that decode.
    pub fn list<'n, T>(
        &mut self,
        node: &'n Node,
        what: &str,
        mut decode: impl FnMut(&mut Self, &'n Node) -> Option<T>,
    ) -> Vec<T> {
        let items = self.seq(node, what).unwrap_or_default();
        items.iter().filter_map(|item| decode(self, item)).collect()
    }

    /// Any scalar but null, as text.
    pub fn string<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n str> {
        match &node.value {
            Value::Scalar(s) if !node.is_null() => Some(s.text.as_str()),
            _ => {
                let message = format!("{what}: expected a string, found {}", found(node));
                self.error(node.pos, message);
                None
            }
        }
    }

    /// An integer within `range`.
    pub fn int<T>(&mut self, node: &Node, what: &str, range: RangeInclusive<T>) -> Option<T>
    where
        T: Copy + Display + Into<i128> + TryFrom<i128>,
    {
        let (lo, hi) = ((*range.start()).into(), (*range.end()).into());
        let allowed = format!("{}..={}", range.start(), range.end());
        let parsed = match &node.value {
            Value::Scalar(s) if !s.is_string => parse_int(&s.text),
            _ => None,
        };
        let Some(value) = parsed else {
            let message = match &node.value {
                Value::Scalar(s) if s.is_string && parse_int(&s.text).is_some() => format!(
                    "{what}: expected an integer {allowed}, found the quoted string \"{}\"; \
                     remove the quotes",
                    s.text
                ),
                _ => format!("{what}: expected an integer {allowed}, found {}", found(node)),
            };
            self.error(node.pos, message);
            return None;
        };
        if value < lo || value > hi {
            let message =
                format!("{what} {} is out of range; allowed {allowed}", scalar_text(node));
            self.error(node.pos, message);
            return None;
        }
        T::try_from(value).ok()
    }

    /// One of a fixed set of words.
    pub fn choice<T: Copy>(
        &mut self,
        node: &Node,
        what: &str,
        options: &[(&'static str, T)],
    ) -> Option<T> {
        let names: Vec<&str> = options.iter().map(|o| o.0).collect();
        let allowed = names.join(", ");
        let text = match &node.value {
            Value::Scalar(s) if !node.is_null() => s.text.as_str(),
            _ => {
                let message = format!("{what}: expected one of {allowed}, found {}", found(node));
                self.error(node.pos, message);
                return None;
            }
        };
        if let Some((_, value)) = options.iter().find(|o| o.0 == text) {
            return Some(*value);
        }
        let hint = suggest(text, &names)
            .map(|k| format!("; did you mean \"{k}\"?"))
            .unwrap_or_else(|| ";".into());
        self.error(node.pos, format!("unknown {what} \"{text}\"{hint} allowed: {allowed}"));
        None
    }

    /// One IPv4 or IPv6 address.
    pub fn ip(&mut self, node: &Node, what: &str) -> Option<IpAddr> {
        let text = self.string(node, what)?;
        match text.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                let hint = if text.contains('/') {
                    " (a single address belongs here, not a CIDR)"
                } else {
                    ""
                };
                let message =
                    format!("{what} \"{text}\" is not a valid IPv4 or IPv6 address{hint}");
                self.error(node.pos, message);
                None
            }
        }
    }

    /// A CIDR such as `192.0.2.0/24`; a bare address means just that host.
    /// Host bits set is an error that suggests the network meant.
    pub fn net(&mut self, node: &Node, what: &str) -> Option<IpNet> {
        let text = self.string(node, what)?;
        let parsed: Option<IpNet> = if text.contains('/') {
            text.parse().ok()
        } else {
            text.parse::<IpAddr>().ok().map(IpNet::from)
        };
        let Some(net) = parsed else {
            let message = format!(
                "{what} \"{text}\" is not a valid CIDR; write it like 192.0.2.0/24 or 2001:db8::/32"
            );
            self.error(node.pos, message);
            return None;
        };
        if net.trunc() != net {
            let message = format!("{what} {text} has host bits set; did you mean {}?", net.trunc());
            self.error(node.pos, message);
            return None;
        }
        Some(net)
    }

    /// A duration of at least one second and at most `max_secs`, written as
    /// integer seconds or as `30s`, `10m`, `2h`, `1h30m`.
    pub fn duration(&mut self, node: &Node, what: &str, max_secs: u64) -> Option<Duration> {
        let allowed = format!("allowed 1s..={max_secs}s");
        let text = match &node.value {
            Value::Scalar(s) if !node.is_null() => s.text.as_str(),
            _ => {
                let message = format!(
                    "{what}: expected a duration such as 30s, 10m, 2h or 1h30m, found {}",
                    found(node)
                );
                self.error(node.pos, message);
                return None;
            }
        };
        let message = match duration::parse(text) {
            Ok(0) => format!("{what} is zero; it must be at least 1s"),
            Ok(secs) if secs <= max_secs => return Some(Duration::from_secs(secs)),
            Ok(_) | Err(DurationError::TooLong) => {
                format!("{what} {text} is out of range; {allowed}")
            }
            Err(DurationError::Invalid) => match parse_int(text) {
                Some(n) if n < 0 => format!("{what} {text} is out of range; {allowed}"),
                _ => format!(
                    "{what} \"{text}\" is not a duration; use integer seconds or a number with \
                     unit d, h, m or s, such as 30s, 10m, 2h or 1h30m"
                ),
            },
        };
        self.error(node.pos, message);
        None
    }
}

/// Reads a YAML 1.2 core-schema integer (decimal, `0x`, `0o`), also allowing
/// `_` between decimal digits. Values beyond `i128` saturate: they are out of
/// every range anyway.
pub(crate) fn parse_int(text: &str) -> Option<i128> {
    let (negative, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(hex) = body.strip_prefix("0x") {
        (16, hex)
    } else if let Some(oct) = body.strip_prefix("0o") {
        (8, oct)
    } else {
        (10, body)
    };
    let bytes = digits.as_bytes();
    let separators_ok = radix == 10
        && bytes.first() != Some(&b'_')
        && bytes.last() != Some(&b'_')
        && !digits.contains("__");
    if digits.is_empty() || (digits.contains('_') && !separators_ok) {
        return None;
    }
    let mut value: i128 = 0;
    for c in digits.chars().filter(|c| *c != '_') {
        let digit = i128::from(c.to_digit(radix)?);
        value = value.saturating_mul(radix.into()).saturating_add(digit);
    }
    Some(if negative { -value } else { value })
}

/// How a node reads in "found ..." messages.
pub(crate) fn found(node: &Node) -> String {
    match &node.value {
        _ if node.is_null() => "an empty value".into(),
        Value::Scalar(s) => format!("{:?}", s.text),
        Value::Seq(_) => "a list".into(),
        Value::Map(_) => "a mapping".into(),
    }
}

fn scalar_text(node: &Node) -> &str {
    match &node.value {
        Value::Scalar(s) => &s.text,
        _ => "",
    }
}

/// The option closest to `word`, if it is close enough to be a likely typo.
/// Case, `_` and `-` are ignored, so `sourceRanges` finds `source_ranges`.
pub(crate) fn suggest<'a>(word: &str, options: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| -> Vec<char> {
        s.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect()
    };
    let w = norm(word);
    let limit = match w.len() {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    options
        .iter()
        .map(|o| (edit_distance(&w, &norm(o)), *o))
        // A distance as long as the word means nothing of it survived.
        .filter(|(d, _)| *d <= limit && *d < w.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o)
}

/// Optimal string alignment distance: Levenshtein plus adjacent swaps.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, row) in d.chunks_mut(width).enumerate() {
        row[0] = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse_tree;

    fn messages(d: Decoder) -> Vec<String> {
        d.into_diagnostics()
            .into_iter()
            .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
            .collect()
    }

    #[test]
    fn integers_follow_the_yaml_core_schema_with_digit_separators() {
        assert_eq!(parse_int("8080"), Some(8080));
        assert_eq!(parse_int("-3"), Some(-3));
        assert_eq!(parse_int("0x1F"), Some(31));
        assert_eq!(parse_int("0o17"), Some(15));
        assert_eq!(parse_int("100_000_000"), Some(100_000_000));
        assert_eq!(parse_int("_1"), None);
        assert_eq!(parse_int("1__0"), None);
        assert_eq!(parse_int("eighty"), None);
        assert_eq!(parse_int("8.5"), None);
        assert_eq!(parse_int(""), None);
        assert_eq!(parse_int("-"), None);
        assert_eq!(parse_int("9".repeat(60).as_str()), Some(i128::MAX));
    }

    #[test]
    fn suggestions_catch_typos_case_and_separators_but_not_strangers() {
        let keys = ["address", "port", "protocol", "source_ranges"];
        assert_eq!(suggest("adress", &keys), Some("address"));
        assert_eq!(suggest("prot", &keys), Some("port"));
        assert_eq!(suggest("Port", &keys), Some("port"));
        assert_eq!(suggest("sourceRanges", &keys), Some("source_ranges"));
        assert_eq!(suggest("protcool", &keys), Some("protocol"));
        assert_eq!(suggest("weight", &keys), None);
    }

    #[test]
    fn every_bad_field_is_reported_not_just_the_first() {
        let root = parse_tree("a: x\nb: 70000\nc: [1]\nd: 5\n").unwrap();
        let mut d = Decoder::new("t.yaml");
        let m = d.map(&root, "thing", &["a", "b", "c"]).unwrap();
        let a = m.field(&mut d, "a", |d, n| d.int(n, "a", 1u16..=9));
        let b = m.field(&mut d, "b", |d, n| d.int(n, "b", 1u16..=65535));
        let c = m.field(&mut d, "c", |d, n| d.string(n, "c").map(str::to_owned));
        assert_eq!((a, b, c), (None, None, None));
        assert_eq!(
            messages(d),
            [
                "4:1: unknown key \"d\" in thing; allowed: a, b, c",
                "1:4: a: expected an integer 1..=9, found \"x\"",
                "2:4: b 70000 is out of range; allowed 1..=65535",
                "3:4: c: expected a string, found a list",
            ]
        );
    }

    #[test]
    fn quoted_numbers_are_strings_and_the_message_says_so() {
        let root = parse_tree("p: \"80\"\n").unwrap();
        let mut d = Decoder::new("t.yaml");
        let m = d.map(&root, "thing", &["p"]).unwrap();
        assert_eq!(m.field(&mut d, "p", |d, n| d.int(n, "p", 1u16..=9)), None);
        let got = messages(d);
        assert!(got[0].contains("quoted string \"80\"; remove the quotes"), "{got:?}");
    }

    #[test]
    fn a_null_section_reads_as_empty_and_a_missing_key_is_reported_at_the_mapping() {
        let root = parse_tree("s:\n").unwrap();
        let mut d = Decoder::new("t.yaml");
        let top = d.map(&root, "config", &["s"]).unwrap();
        let inner = top.get("s").unwrap();
        let m = d.map(inner, "section", &["x"]).unwrap();
        assert_eq!(m.required(&mut d, "x", |d, n| d.ip(n, "x")), None);
        assert_eq!(d.seq(inner, "list").map(<[Node]>::len), Some(0));
        assert_eq!(messages(d), ["1:1: section is missing required key \"x\""]);
    }
}
