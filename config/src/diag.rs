//! Diagnostics: what was wrong, where (`file:line:column`) and what is allowed.
//!
//! Contract: a [`Diagnostics`] is never empty when returned as an error, and
//! its entries are sorted by position (stable, so two findings at the same
//! spot keep the order in which they were found).

use std::fmt;

/// One finding in a config file. `line` and `column` are 1-based; a finding
/// about the whole file (e.g. it could not be read) sits at 1:1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
    }
}

/// Every finding of one validation pass, sorted by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Sorts `list` by position and wraps it.
    pub(crate) fn sorted(mut list: Vec<Diagnostic>) -> Self {
        list.sort_by_key(|d| (d.line, d.column));
        Diagnostics(list)
    }
}

impl fmt::Display for Diagnostics {
    /// One diagnostic per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize, message: &str) -> Diagnostic {
        Diagnostic { file: "x.yaml".into(), line, column, message: message.into() }
    }

    #[test]
    fn display_is_one_sorted_line_per_diagnostic() {
        let d = Diagnostics::sorted(vec![at(9, 5, "b"), at(2, 7, "a"), at(9, 5, "c")]);
        assert_eq!(d.to_string(), "x.yaml:2:7: a\nx.yaml:9:5: b\nx.yaml:9:5: c");
    }
}
