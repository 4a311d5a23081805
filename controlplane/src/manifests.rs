//! Kubernetes manifests from a directory: YAML (or JSON) files, any number of
//! documents each, parsed into the `gateway-api` and `k8s-openapi` types.
//!
//! Parsing is strict where Kubernetes is: a document whose kind we read must
//! fit its schema, and a field the schema does not know is an error (the API
//! server's strict field validation), so a typo fails here with file, object
//! and field instead of silently routing differently. Kinds Rauta does not
//! read (Deployments, Secrets, …) are skipped.

use crate::policy::BackendTrafficPolicy;
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::experimental::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Where an object came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A file: the document's index in it and the line the document starts
    /// on.
    File {
        file: PathBuf,
        /// 1-based document number within the file.
        document: usize,
        /// 1-based line of the document's first line.
        line: usize,
    },
    /// The Kubernetes API (the object's kind and name say which).
    Api,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File {
                file,
                document,
                line,
            } => write!(f, "{}:{line} (document {document})", file.display()),
            Origin::Api => f.write_str("Kubernetes API"),
        }
    }
}

/// An object and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Sourced<T> {
    pub origin: Origin,
    pub object: T,
}

/// Every object Rauta reads, as found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifests {
    pub namespaces: Vec<Sourced<Namespace>>,
    pub gateways: Vec<Sourced<Gateway>>,
    pub routes: Vec<Sourced<HttpRoute>>,
    pub grants: Vec<Sourced<ReferenceGrant>>,
    pub services: Vec<Sourced<Service>>,
    pub endpoint_slices: Vec<Sourced<EndpointSlice>>,
    pub backend_policies: Vec<Sourced<BackendTrafficPolicy>>,
}

/// A manifest that cannot be read, with where and what.
#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not YAML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{origin}: {object}: field `{field}`: {message}")]
    Field {
        origin: Origin,
        /// `Kind namespace/name`.
        object: String,
        field: String,
        message: String,
    },
}

impl Manifests {
    /// Read every `*.yaml`, `*.yml` and `*.json` file directly in `dir`, in
    /// name order (hidden files and editors' temporaries are skipped).
    pub fn load_dir(dir: &Path) -> Result<Self, ManifestError> {
        let read_error = |source| ManifestError::Read {
            path: dir.to_owned(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_error)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| is_manifest_file(p))
            .collect();
        files.sort();
        let mut manifests = Self::default();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Read {
                path: file.clone(),
                source,
            })?;
            manifests.add_text(&file, &text)?;
        }
        Ok(manifests)
    }

    /// Parse the documents of one file's `text`.
    pub fn add_text(&mut self, file: &Path, text: &str) -> Result<(), ManifestError> {
        for (index, (line, document)) in documents(text).into_iter().enumerate() {
            let origin = Origin::File {
                file: file.to_owned(),
                document: index + 1,
                line,
            };
            let value: Option<serde_json::Value> =
                serde_saphyr::from_str(document).map_err(|e| ManifestError::Syntax {
                    path: file.to_owned(),
                    message: format!("{origin}: {e}"),
                })?;
            if let Some(value) = value {
                self.add_document(origin, value)?;
            }
        }
        Ok(())
    }

    fn add_document(
        &mut self,
        origin: Origin,
        document: serde_json::Value,
    ) -> Result<(), ManifestError> {
        if document.is_null() {
            return Ok(());
        }
        let api_version = document["apiVersion"].as_str().unwrap_or_default();
        let kind = document["kind"].as_str().unwrap_or_default();
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        match (group, kind) {
            ("", "Namespace") => self.namespaces.push(typed(origin, document)?),
            ("", "Service") => self.services.push(typed(origin, document)?),
            ("discovery.k8s.io", "EndpointSlice") => {
                self.endpoint_slices.push(typed(origin, document)?)
            }
            ("gateway.networking.k8s.io", "Gateway") => {
                self.gateways.push(typed(origin, document)?)
            }
            ("gateway.networking.k8s.io", "HTTPRoute") => {
                self.routes.push(typed(origin, document)?)
            }
            ("gateway.networking.k8s.io", "ReferenceGrant") => {
                self.grants.push(typed(origin, document)?)
            }
            ("gateway.rauta.dev", "BackendTrafficPolicy") => {
                self.backend_policies.push(typed(origin, document)?)
            }
            ("", "") | (_, "") => {
                return Err(ManifestError::Field {
                    origin,
                    object: "document".into(),
                    field: if api_version.is_empty() {
                        "apiVersion".into()
                    } else {
                        "kind".into()
                    },
                    message: "missing".into(),
                })
            }
            _ => tracing::debug!(%origin, kind, "kind not read by rauta, skipped"),
        }
        Ok(())
    }
}

/// The documents of a YAML stream with the line each starts on: split at
/// `---` lines ourselves, so that empty documents keep their number and
/// errors can say where a document is.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let is_separator =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if is_separator {
            if index > 0 {
                out.push((start_line, &text[start..offset]));
            }
            start = offset + line.len();
            start_line = index + 2;
        }
        offset += line.len();
    }
    out.push((start_line, &text[start..]));
    out
}

/// A serde_ignored path as a Kubernetes field path: `spec.rules[0].name`.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

fn is_manifest_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.')
        && path.is_file()
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

/// `Kind namespace/name` of a document, for messages.
fn describe(document: &serde_json::Value) -> String {
    let meta = &document["metadata"];
    let name = meta["name"].as_str().unwrap_or("<unnamed>");
    let kind = document["kind"].as_str().unwrap_or("object");
    match meta["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// A field of a document that does not fit its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The Kubernetes field path, `spec.rules[0].matches`.
    pub field: String,
    pub message: String,
}

/// `document` as a `T`, as strictly as the API server's strict field
/// validation: the first error, or a field `T` does not know, is reported
/// with its path. The envelope (`apiVersion`, `kind`) is the caller's to
/// check; `status` is the controller's, never a user's input, and ignored.
pub fn from_value_strictly<T: DeserializeOwned>(
    document: &serde_json::Value,
) -> Result<T, FieldError> {
    let mut unknown = Vec::new();
    let mut note_unknown = |path: serde_ignored::Path<'_>| unknown.push(field_path(&path));
    let parsed: Result<T, _> = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        document,
        &mut note_unknown,
    ));
    let parsed = parsed.map_err(|e| FieldError {
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })?;
    unknown.retain(|p| !matches!(p.as_str(), "apiVersion" | "kind") && !p.starts_with("status"));
    match unknown.into_iter().next() {
        Some(field) => Err(FieldError {
            field,
            message: "unknown field".into(),
        }),
        None => Ok(parsed),
    }
}

/// Deserialize `document` into `T`, strictly: the first error or unknown
/// field is reported with its path.
fn typed<T: DeserializeOwned>(
    origin: Origin,
    document: serde_json::Value,
) -> Result<Sourced<T>, ManifestError> {
    let object = describe(&document);
    if document["metadata"]["name"].as_str().is_none() {
        return Err(ManifestError::Field {
            origin,
            object,
            field: "metadata.name".into(),
            message: "missing".into(),
        });
    }
    let parsed = from_value_strictly(&document).map_err(|e| ManifestError::Field {
        origin: origin.clone(),
        object,
        field: e.field,
        message: e.message,
    })?;
    Ok(Sourced {
        origin,
        object: parsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifests, ManifestError> {
        let mut m = Manifests::default();
        m.add_text(Path::new("routes.yaml"), text).map(|()| m)
    }

    #[test]
    fn reads_the_kinds_it_knows_and_skips_others() {
        let m = parse(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: ns}\nspec:\n  rules:\n  - backendRefs:\n    - name: svc\n      port: 8080\n---\n# comment only\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: ns}\nspec:\n  ports: [{port: 8080, targetPort: 3000}]\n",
        )
        .unwrap();
        assert_eq!(m.routes.len(), 1);
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.routes[0].origin.to_string(), "routes.yaml:1 (document 1)");
        assert_eq!(
            m.services[0].origin.to_string(),
            "routes.yaml:17 (document 4)"
        );
    }

    #[test]
    fn errors_name_file_object_and_field() {
        let err = parse(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: ns}\nspec:\n  rules:\n  - matches:\n    - path: {type: Prefix, value: /}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("routes.yaml:1 (document 1): HTTPRoute ns/r: field `spec.rules[0].matches[0].path.type`"), "{err}");

        let err = parse(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - matchs: []\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("HTTPRoute r: field `spec.rules[0].matchs`: unknown field"),
            "{err}"
        );

        let err = parse("kind: [unclosed").unwrap_err().to_string();
        assert!(err.starts_with("routes.yaml: not YAML"), "{err}");
    }
}
