//! The vipr appliance config: schema, YAML loading and whole-file validation.
//!
//! # Contract
//!
//! [`parse`] and [`load`] return either a fully validated [`Config`] or
//! [`Diagnostics`] listing **every** problem found in one pass, sorted by
//! position. Each [`Diagnostic`] names `file:line:column` (1-based), the
//! offending value and what is allowed, e.g.
//!
//! ```text
//! tutorial.yaml:14:15: backend port 0 is out of range; allowed 1..=65535
//! x.yaml:9:5: unknown key "adress" in vip; did you mean "address"? allowed: address, port, ...
//! ```
//!
//! Nothing is applied here: the crate reads, checks and hands back values.
//! Parsing is pure and total: no input makes it panic, and its cost is
//! bounded by the input size (alias expansion and nesting are capped).
//!
//! A YAML syntax error stops the parser, so it is reported alone. Past that,
//! the file is decoded in full; rules that relate several values (duplicate
//! VIPs, backend and source-range families, snat addresses, pool overlaps)
//! run on whatever decoded cleanly, so one typo yields one diagnostic.
//!
//! # Checked rules
//!
//! Keys are snake_case; unknown keys (with a "did you mean"), duplicate keys
//! and wrong types are errors. Addresses, CIDRs (host bits set is an error
//! that suggests the network), ports `1..=65535`, durations (`30s`, `10m`,
//! `2h`, `1h30m` or integer seconds, never zero), duplicate VIPs
//! (address + port + protocol), duplicate VIP names, duplicate backends within
//! a VIP, backend and source-range family against the VIP's, `snat` VIPs
//! without an `snat.addresses` entry of their family, empty and overlapping
//! pools, backwards or mixed-family ranges, and a `dpdk:` section with
//! another dataplane. An empty `interfaces` list is allowed (validation and
//! simulation need none); `vipr run` checks for one itself.
//!
//! `examples/tutorial.yaml` and `examples/full.yaml` show the schema.

#![deny(unsafe_code)]

mod decode;
mod diag;
mod duration;
mod model;
mod schema;
mod yaml;

use std::path::Path;

pub use diag::{Diagnostic, Diagnostics};
pub use model::{
    AttachMode, Backend, BackendState, Config, ConntrackConfig, DataplaneKind, DpdkConfig,
    Interface, KubernetesConfig, KubernetesMode, Mode, Pool, Protocol, SnatConfig, Vip,
};

/// Reads and validates the config file at `path`. A file that cannot be read
/// (or is not UTF-8) is reported as a diagnostic at `1:1`.
pub fn load(path: &Path) -> Result<Config, Diagnostics> {
    let name = path.display().to_string();
    let fail = |message: String| {
        Err(Diagnostics(vec![Diagnostic { file: name.clone(), line: 1, column: 1, message }]))
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => return fail(format!("cannot read config file: {e}")),
    };
    match String::from_utf8(bytes) {
        Ok(text) => parse(&name, &text),
        Err(e) => fail(format!(
            "config file is not valid UTF-8 (first bad byte at offset {})",
            e.utf8_error().valid_up_to()
        )),
    }
}

/// Validates config `text`; `source_name` is the file name diagnostics use.
pub fn parse(source_name: &str, text: &str) -> Result<Config, Diagnostics> {
    let mut decoder = decode::Decoder::new(source_name);
    match yaml::parse_tree(text) {
        Ok(root) => {
            let config = schema::config(&mut decoder, &root);
            let found = decoder.into_diagnostics();
            if found.is_empty() {
                return Ok(config);
            }
            Err(Diagnostics::sorted(found))
        }
        Err(stop) => {
            decoder.error(stop.pos, stop.message);
            Err(Diagnostics::sorted(decoder.into_diagnostics()))
        }
    }
}
