//! The manifests source: ordinary Kubernetes YAML from a folder, so a tutorial's Service
//! and EndpointSlice work without a cluster (`vipr run --manifests DIR`).
//!
//! # Contract
//!
//! [`load_manifests`] reads every `*.yaml` / `*.yml` file directly in the folder (not
//! its subfolders, like `kubectl apply -f DIR`), in name order, each possibly holding
//! several `---` documents, and returns the Services, EndpointSlices and Nodes in them
//! as [`Inputs`]. Known: `v1` Service, Node and List (its items are read in turn),
//! `discovery.k8s.io/v1` and `v1beta1` EndpointSlice (converted to v1).
//!
//! - A file that is not YAML, or an object that does not decode as its kind, is an
//!   error naming the file, the 1-based document index, and the line and column or the
//!   field path (`spec.ports[0].port`): nothing is loaded from a folder with a mistake,
//!   as with the appliance config.
//! - Other kinds (Deployments next to their Service, ...) are skipped with a warning.
//! - An object defined twice (same kind, namespace, name) is a warning; the later
//!   definition wins, as it would with `kubectl apply`.
//!
//! Namespaced objects without a namespace are in `default`.

use crate::object::{namespace, Kind, ObjectRef};
use crate::translate::Inputs;
use crate::v1beta1;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub inputs: Inputs,
    pub warnings: Vec<ManifestWarning>,
}

/// A document that was skipped or overridden.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestWarning {
    pub file: PathBuf,
    /// 1-based index of the document in its file.
    pub document: usize,
    pub message: String,
}

impl fmt::Display for ManifestWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}: {}", self.file.display(), self.document, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read the manifests folder {}: {source}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", file.display())]
    ReadFile {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}{}: document {document}: not valid YAML: {message}", file.display(), at(*line, *column))]
    Yaml {
        file: PathBuf,
        document: usize,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    #[error(
        "{}: document {document}: {what}: {path}: {message}; fix the object or move the file \
         out of the folder",
        file.display()
    )]
    Object { file: PathBuf, document: usize, what: String, path: String, message: String },
}

fn at(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

/// Reads the manifests in `dir`. See the module docs.
pub fn load_manifests(dir: &Path) -> Result<Manifests, ManifestError> {
    let read_dir = |source| ManifestError::ReadDir { dir: dir.to_owned(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let path = entry.map_err(read_dir)?.path();
        let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut loader = Loader::default();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|source| ManifestError::ReadFile { file: file.clone(), source })?;
        loader.file(&file, &text)?;
    }
    Ok(loader.finish())
}

/// Reads manifests from one string, as if it were the file `name`.
pub fn parse_manifests(name: &Path, text: &str) -> Result<Manifests, ManifestError> {
    let mut loader = Loader::default();
    loader.file(name, text)?;
    Ok(loader.finish())
}

enum Object {
    Service(Box<Service>),
    Slice(Box<EndpointSlice>),
    Node(Box<Node>),
}

#[derive(Default)]
struct Loader {
    /// By (kind, namespace, name), so a later definition replaces an earlier one.
    objects: BTreeMap<ObjectRef, (Object, PathBuf, usize)>,
    warnings: Vec<ManifestWarning>,
}

impl Loader {
    fn file(&mut self, file: &Path, text: &str) -> Result<(), ManifestError> {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let document = i + 1;
            let value = serde_yaml::Value::deserialize(doc).map_err(|e| {
                let loc = e.location();
                ManifestError::Yaml {
                    file: file.to_owned(),
                    document,
                    line: loc.as_ref().map(|l| l.line()),
                    column: loc.as_ref().map(|l| l.column()),
                    message: e.to_string(),
                }
            })?;
            // An empty document (a trailing `---`, a comment-only file) holds nothing.
            if value.is_null() {
                continue;
            }
            self.value(file, document, value, "")?;
        }
        Ok(())
    }

    fn value(
        &mut self,
        file: &Path,
        document: usize,
        value: serde_yaml::Value,
        within: &str,
    ) -> Result<(), ManifestError> {
        let text = |key: &str| value.get(key).and_then(|v| v.as_str()).unwrap_or("").to_owned();
        let (api_version, kind) = (text("apiVersion"), text("kind"));
        let what = format!("{within}{kind} ({api_version})");
        let fail = |path: String, message: String| ManifestError::Object {
            file: file.to_owned(),
            document,
            what: what.clone(),
            path,
            message,
        };
        let object = match (api_version.as_str(), kind.as_str()) {
            ("v1", "Service") => {
                Object::Service(Box::new(decode(value).map_err(|(p, m)| fail(p, m))?))
            }
            ("v1", "Node") => Object::Node(Box::new(decode(value).map_err(|(p, m)| fail(p, m))?)),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                Object::Slice(Box::new(decode(value).map_err(|(p, m)| fail(p, m))?))
            }
            ("discovery.k8s.io/v1beta1", "EndpointSlice") => {
                let beta: v1beta1::EndpointSlice = decode(value).map_err(|(p, m)| fail(p, m))?;
                Object::Slice(Box::new(beta.into_v1()))
            }
            ("v1", "List") | ("v1", "ServiceList") | ("v1", "NodeList") => {
                let items = match value.get("items") {
                    Some(serde_yaml::Value::Sequence(items)) => items.clone(),
                    None | Some(serde_yaml::Value::Null) => vec![],
                    Some(_) => return Err(fail("items".into(), "expected a list".into())),
                };
                for (i, item) in items.into_iter().enumerate() {
                    self.value(file, document, item, &format!("{within}{kind} item {i}: "))?;
                }
                return Ok(());
            }
            _ => {
                let message = if kind.is_empty() {
                    "no kind; skipped".to_owned()
                } else {
                    format!("{what}: not a kind vipr reads (Service, EndpointSlice, Node); skipped")
                };
                self.warn(file, document, message);
                return Ok(());
            }
        };
        let me = match &object {
            Object::Service(s) => ObjectRef::of(Kind::Service, &s.metadata),
            Object::Slice(s) => ObjectRef::new(
                Kind::EndpointSlice,
                namespace(&s.metadata),
                s.metadata.name.as_deref().unwrap_or(""),
            ),
            Object::Node(n) => ObjectRef::of(Kind::Node, &n.metadata),
        };
        if me.name.is_empty() {
            return Err(fail("metadata.name".into(), "missing".into()));
        }
        if let Some((_, f, d)) = self.objects.get(&me) {
            let message = format!(
                "{me} is defined again here (first in {} document {d}); this definition is used",
                f.display()
            );
            self.warn(file, document, message);
        }
        self.objects.insert(me, (object, file.to_owned(), document));
        Ok(())
    }

    fn warn(&mut self, file: &Path, document: usize, message: String) {
        self.warnings.push(ManifestWarning { file: file.to_owned(), document, message });
    }

    fn finish(self) -> Manifests {
        let mut inputs = Inputs::default();
        for (object, _, _) in self.objects.into_values() {
            match object {
                Object::Service(s) => inputs.services.push(*s),
                Object::Slice(s) => inputs.endpoint_slices.push(*s),
                Object::Node(n) => inputs.nodes.push(*n),
            }
        }
        Manifests { inputs, warnings: self.warnings }
    }
}

/// Decodes one object, or says where it went wrong: (field path, message).
fn decode<T: serde::de::DeserializeOwned>(value: serde_yaml::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { "(top)".to_owned() } else { path };
        (path, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests;
