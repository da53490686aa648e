//! A position-marked YAML tree, built from `yaml-rust2` parser events.
//!
//! Contract: [`parse_tree`] turns text into one [`Node`] per YAML value, each
//! carrying the 1-based line and column where it starts, or returns the single
//! error at which reading had to stop (syntax error, a second document, nesting
//! or alias expansion past the limits below). Mapping entries keep their order
//! and their duplicates: judging keys is the decoder's job, not this module's.
//!
//! The parser is driven event by event with an explicit stack rather than
//! through `Parser::load`, which recurses once per nesting level; that way no
//! input can exhaust the stack here, and the depth limit bounds the recursion
//! of everything that walks or drops the tree afterwards.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Deeper than any config needs; keeps the tree's recursive `Drop` and the
/// decoder far from the stack limit.
const MAX_DEPTH: usize = 64;

/// Nodes that aliases may copy in, in total, before the file is refused
/// (a "billion laughs" document would otherwise expand exponentially).
const MAX_ALIAS_NODES: usize = 100_000;

/// A 1-based position in the source text; columns count characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_marker(mark: &Marker) -> Self {
        // yaml-rust2 marks lines from 1 and columns from 0.
        Pos { line: mark.line().max(1), column: mark.col() + 1 }
    }
}

/// A scalar as written: its text and whether quoting (or a `!!str` tag) made
/// it a string no matter what it looks like.
#[derive(Debug, Clone)]
pub(crate) struct Scalar {
    pub text: String,
    pub is_string: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub pos: Pos,
    pub value: Value,
}

impl Node {
    /// True for `~`, `null` and an empty value (`key:` with nothing after it).
    pub fn is_null(&self) -> bool {
        match &self.value {
            Value::Scalar(s) => {
                !s.is_string && matches!(s.text.as_str(), "" | "~" | "null" | "Null" | "NULL")
            }
            _ => false,
        }
    }

    /// The value of the first entry whose key is `key`, if this is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.value, Value::Scalar(s) if s.text == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// The one error that stopped reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TreeError {
    pub pos: Pos,
    pub message: String,
}

enum FrameKind {
    Seq(Vec<Node>),
    Map { entries: Vec<(Node, Node)>, key: Option<Node> },
}

struct Frame {
    pos: Pos,
    anchor: usize,
    kind: FrameKind,
    /// `nodes` when the frame opened; the difference at close is its size.
    first_node: usize,
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    anchors: HashMap<usize, (Node, usize)>,
    /// Nodes built so far, counting alias copies.
    nodes: usize,
    alias_nodes: usize,
}

impl Builder {
    fn open(&mut self, pos: Pos, anchor: usize, kind: FrameKind) -> Result<(), TreeError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(TreeError {
                pos,
                message: format!("nesting is deeper than {MAX_DEPTH} levels"),
            });
        }
        self.stack.push(Frame { pos, anchor, kind, first_node: self.nodes });
        Ok(())
    }

    fn close(&mut self) {
        let Some(frame) = self.stack.pop() else {
            return;
        };
        let value = match frame.kind {
            FrameKind::Seq(items) => Value::Seq(items),
            FrameKind::Map { entries, .. } => Value::Map(entries),
        };
        // A block mapping's start mark lands after its first key; the first
        // key is where a reader sees the mapping begin.
        let pos = match &value {
            Value::Map(entries) => entries.first().map_or(frame.pos, |(k, _)| k.pos),
            _ => frame.pos,
        };
        let size = self.nodes - frame.first_node + 1;
        self.finish(Node { pos, value }, frame.anchor, size);
    }

    fn finish(&mut self, node: Node, anchor: usize, size: usize) {
        self.nodes += 1;
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), size));
        }
        self.attach(node);
    }

    fn alias(&mut self, id: usize, pos: Pos) -> Result<(), TreeError> {
        let Some((node, size)) = self.anchors.get(&id).cloned() else {
            return Err(TreeError {
                pos,
                message: "alias refers to an anchor that is not complete yet".into(),
            });
        };
        self.alias_nodes += size;
        if self.alias_nodes > MAX_ALIAS_NODES {
            return Err(TreeError {
                pos,
                message: format!(
                    "aliases expand to more than {MAX_ALIAS_NODES} values; write the values out"
                ),
            });
        }
        self.nodes += size;
        self.attach(node);
        Ok(())
    }

    fn attach(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame { kind: FrameKind::Seq(items), .. }) => items.push(node),
            Some(Frame { kind: FrameKind::Map { entries, key }, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    let mut node = node;
                    // An empty value (`port:`) is marked where the next
                    // token starts, often the next line; its key is where a
                    // reader looks.
                    if matches!(&node.value, Value::Scalar(s) if s.text.is_empty() && !s.is_string)
                    {
                        node.pos = k.pos;
                    }
                    entries.push((k, node));
                }
            },
        }
    }
}

/// Reads one YAML document. An empty stream reads as a null scalar.
pub(crate) fn parse_tree(text: &str) -> Result<Node, TreeError> {
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder::default();
    let mut documents = 0usize;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| TreeError {
            pos: Pos::from_marker(e.marker()),
            message: format!("YAML syntax error: {}", e.info()),
        })?;
        let pos = Pos::from_marker(&mark);
        match event {
            Event::StreamEnd => break,
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(TreeError {
                        pos,
                        message: "a config file holds one YAML document; remove this `---` \
                                  and everything after it, or merge the documents"
                            .into(),
                    });
                }
            }
            Event::Alias(id) => builder.alias(id, pos)?,
            Event::Scalar(text, style, anchor, tag) => {
                let is_string = style != TScalarStyle::Plain
                    || tag.is_some_and(|t| t.handle == "tag:yaml.org,2002:" && t.suffix == "str");
                let node = Node { pos, value: Value::Scalar(Scalar { text, is_string }) };
                builder.finish(node, anchor, 1);
            }
            Event::SequenceStart(anchor, _) => {
                builder.open(pos, anchor, FrameKind::Seq(Vec::new()))?;
            }
            Event::MappingStart(anchor, _) => {
                let kind = FrameKind::Map { entries: Vec::new(), key: None };
                builder.open(pos, anchor, kind)?;
            }
            Event::SequenceEnd | Event::MappingEnd => builder.close(),
        }
    }
    Ok(builder.root.unwrap_or(Node {
        pos: Pos { line: 1, column: 1 },
        value: Value::Scalar(Scalar { text: String::new(), is_string: false }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_entries(node: &Node) -> &[(Node, Node)] {
        match &node.value {
            Value::Map(entries) => entries,
            other => panic!("expected a mapping, got {other:?}"),
        }
    }

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let root = parse_tree("a: 1\nb:\n  - x: 2\n").unwrap();
        assert_eq!(root.pos, Pos { line: 1, column: 1 });
        let entries = map_entries(&root);
        assert_eq!(entries[0].1.pos, Pos { line: 1, column: 4 });
        assert_eq!(entries[1].0.pos, Pos { line: 2, column: 1 });
        let Value::Seq(items) = &entries[1].1.value else { panic!("b should be a sequence") };
        assert_eq!(items[0].pos, Pos { line: 3, column: 5 });
    }

    #[test]
    fn duplicate_keys_are_kept_for_the_decoder_to_judge() {
        let root = parse_tree("a: 1\na: 2\n").unwrap();
        assert_eq!(map_entries(&root).len(), 2);
    }

    #[test]
    fn quoted_scalars_are_strings_and_plain_ones_are_not() {
        let root = parse_tree("a: \"1\"\nb: 1\nc: !!str 1\n").unwrap();
        let flags: Vec<bool> = map_entries(&root)
            .iter()
            .map(|(_, v)| match &v.value {
                Value::Scalar(s) => s.is_string,
                _ => panic!("scalar expected"),
            })
            .collect();
        assert_eq!(flags, [true, false, true]);
    }

    #[test]
    fn aliases_copy_the_anchored_value() {
        let root = parse_tree("a: &p [1, 2]\nb: *p\n").unwrap();
        let Value::Seq(items) = &root.get("b").unwrap().value else {
            panic!("b should be a sequence")
        };
        assert_eq!(items.len(), 2);
    }

    #[test]
    fn exponential_alias_expansion_is_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse_tree(&text).unwrap_err();
        assert!(err.message.contains("aliases expand"), "{err:?}");
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let text = "[".repeat(200);
        let err = parse_tree(&text).unwrap_err();
        assert!(err.message.contains("nesting"), "{err:?}");
        let text = "- ".repeat(5000);
        let err = parse_tree(&text).unwrap_err();
        assert!(err.message.contains("nesting"), "{err:?}");
    }

    #[test]
    fn a_second_document_is_an_error_at_its_start() {
        let err = parse_tree("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.pos.line, 2);
        assert!(err.message.contains("one YAML document"));
    }

    #[test]
    fn syntax_errors_carry_the_parser_position() {
        let err = parse_tree("a: [1\n").unwrap_err();
        assert!(err.message.starts_with("YAML syntax error"));
        assert_eq!(err.pos, Pos { line: 2, column: 1 });
    }

    #[test]
    fn an_empty_stream_is_a_null_root() {
        assert!(parse_tree("").unwrap().is_null());
        assert!(parse_tree("# only a comment\n").unwrap().is_null());
    }
}
