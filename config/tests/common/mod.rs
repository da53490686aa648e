//! Helpers shared by the integration tests.

#![allow(dead_code)]

use vipr_config::{parse, Config};

/// Parses `text` as `t.yaml`, expecting success.
pub fn ok(text: &str) -> Config {
    match parse("t.yaml", text) {
        Ok(config) => config,
        Err(diags) => panic!("expected a valid config, got:\n{diags}"),
    }
}

/// Parses `text` as `t.yaml`, expecting failure; returns `line:column: message`
/// for each diagnostic, in the order given.
pub fn errors(text: &str) -> Vec<String> {
    match parse("t.yaml", text) {
        Ok(config) => panic!("expected diagnostics, got a valid config: {config:#?}"),
        Err(diags) => {
            for d in &diags.0 {
                assert_eq!(d.file, "t.yaml");
            }
            diags.0.iter().map(|d| format!("{}:{}: {}", d.line, d.column, d.message)).collect()
        }
    }
}

/// Expects exactly one diagnostic at `at` ("line:column") whose message
/// contains every one of `words`.
#[track_caller]
pub fn one_error(text: &str, at: &str, words: &[&str]) {
    let found = errors(text);
    assert_eq!(found.len(), 1, "expected one diagnostic, got {found:#?}");
    assert_error(&found[0], at, words);
}

#[track_caller]
pub fn assert_error(found: &str, at: &str, words: &[&str]) {
    let (pos, message) = found.split_once(": ").expect("line:column: message");
    assert_eq!(pos, at, "wrong position for {found:?}");
    for word in words {
        assert!(message.contains(word), "{found:?} should mention {word:?}");
    }
}

/// A minimal valid VIP list to build on: one VIP at line 2.
pub const ONE_VIP: &str = "vips:\n  - address: 192.0.2.10\n    port: 80\n";
