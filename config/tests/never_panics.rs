//! `parse` is total: arbitrary text and small YAML-shaped mutations of the
//! full example never panic, and every failure carries in-bounds positions.

use proptest::prelude::*;
use vipr_config::parse;

const FULL: &str = include_str!("../examples/full.yaml");

/// Pieces that stress the parser and decoder when spliced into YAML.
const FRAGMENTS: &[&str] = &[
    ":",
    ": ",
    "- ",
    "-",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\"",
    "'",
    "&a ",
    "*a",
    "!!str ",
    "? ",
    "---\n",
    "...\n",
    "#",
    "\t",
    "\n",
    "\n  ",
    "    ",
    "0",
    "-1",
    "65536",
    "0x1F",
    "1_0",
    "1h30m",
    "0s",
    "~",
    "null",
    "true",
    "2001:db8::1",
    "192.0.2.300",
    "/24",
    "/33",
    "|\n  x\n",
    ">\n  y\n",
    "é",
    "\u{feff}",
    "\r\n",
    "vips:",
    "port:",
    "address:",
    "backends: []",
    "{}",
    "[[[[",
    "]]]]",
];

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, &'static str),
    Delete(usize, usize),
    DuplicateLine(usize),
    DeleteLine(usize),
    SwapLines(usize, usize),
    Indent(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<usize>();
    prop_oneof![
        (at, prop::sample::select(FRAGMENTS)).prop_map(|(a, f)| Edit::Insert(a, f)),
        (at, 1usize..12).prop_map(|(a, n)| Edit::Delete(a, n)),
        at.prop_map(Edit::DuplicateLine),
        at.prop_map(Edit::DeleteLine),
        (at, at).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        at.prop_map(Edit::Indent),
    ]
}

/// The nearest char boundary at or below `at % (len + 1)`.
fn boundary(text: &str, at: usize) -> usize {
    let mut i = at % (text.len() + 1);
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &str, edit: &Edit) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    match edit {
        Edit::Insert(at, fragment) => {
            let i = boundary(text, *at);
            return format!("{}{fragment}{}", &text[..i], &text[i..]);
        }
        Edit::Delete(at, n) => {
            let i = boundary(text, *at);
            let j = boundary(text, i + n);
            if j <= i {
                return text.to_owned();
            }
            return format!("{}{}", &text[..i], &text[j..]);
        }
        Edit::DuplicateLine(at) if !lines.is_empty() => {
            let i = at % lines.len();
            lines.insert(i, lines[i].clone());
        }
        Edit::DeleteLine(at) if !lines.is_empty() => {
            lines.remove(at % lines.len());
        }
        Edit::SwapLines(a, b) if !lines.is_empty() => {
            let n = lines.len();
            lines.swap(a % n, b % n);
        }
        Edit::Indent(at) if !lines.is_empty() => {
            let i = at % lines.len();
            lines[i].insert_str(0, "  ");
        }
        _ => {}
    }
    lines.join("\n")
}

fn check(text: &str) {
    match parse("p.yaml", text) {
        Ok(_) => {}
        Err(diags) => {
            assert!(!diags.0.is_empty(), "an error must carry at least one diagnostic");
            let line_count = text.split('\n').count();
            for d in &diags.0 {
                assert!(d.line >= 1 && d.column >= 1, "{d}");
                assert!(d.line <= line_count + 1, "{d} is past the end of the text");
                assert!(!d.message.is_empty());
            }
            let positions: Vec<(usize, usize)> =
                diags.0.iter().map(|d| (d.line, d.column)).collect();
            let mut sorted = positions.clone();
            sorted.sort();
            assert_eq!(positions, sorted, "diagnostics must be in position order");
        }
    }
}

/// 512 by default; `PROPTEST_CASES` raises it for a longer hunt.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        check(&text);
    }

    #[test]
    fn parse_never_panics_on_yaml_shaped_text(text in "[-a-z0-9:\\[\\]{},&*!'\"#|>?. \n]{0,200}") {
        check(&text);
    }

    #[test]
    fn parse_never_panics_on_mutations_of_the_full_example(
        edits in prop::collection::vec(edit(), 1..6)
    ) {
        let mut text = FULL.to_owned();
        for e in &edits {
            text = apply(&text, e);
        }
        check(&text);
    }
}

#[test]
fn the_unmutated_full_example_passes_the_same_checks() {
    check(FULL);
    assert!(parse("full.yaml", FULL).is_ok());
}
