//! Reading and checking the deployment manifests under `deploy/` without a cluster.
//!
//! - [`documents`]: every YAML document of a file, as JSON values (what the API server
//!   would receive after `kubectl` converts them).
//! - [`CrdSchema`]: a CustomResourceDefinition's `openAPIV3Schema` as a JSON Schema that
//!   refuses unknown fields, as Kubernetes' structural schemas do (the CRD text does not
//!   say `additionalProperties: false`; the API server prunes or, with strict field
//!   validation, rejects what it does not define).
//! - [`admission_errors`]: the checks spin-operator's validating webhook makes on a
//!   `SpinApp` beyond the schema.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Map, Value};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn kubernetes_dir() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

/// Every file under `dir` (recursively) whose name ends with `suffix`, sorted.
pub fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The YAML documents of `path` (empty documents skipped), each as JSON.
pub fn documents(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_documents(&text).with_context(|| path.display().to_string())
}

/// The YAML documents of `text` (empty documents skipped), each as JSON.
pub fn parse_documents(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document).with_context(|| format!("document {i}"))?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// A Kubernetes object read from a file under `deploy/kubernetes`.
#[derive(Debug, Clone)]
pub struct Object {
    pub file: PathBuf,
    pub value: Value,
}

impl Object {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
    pub fn namespace(&self) -> &str {
        self.value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
    }
    /// `file: Kind/name`, for messages.
    pub fn label(&self) -> String {
        let file = self
            .file
            .strip_prefix(repo_root())
            .unwrap_or(&self.file)
            .display()
            .to_string();
        format!("{file}: {}/{}", self.kind(), self.name())
    }
}

/// Every object of every YAML file under `deploy/kubernetes` except the CRDs kept for
/// validation (`schema/`) and the kustomization itself.
pub fn kubernetes_objects() -> Vec<Object> {
    let schema_dir = kubernetes_dir().join("schema");
    files_under(&kubernetes_dir(), ".yaml")
        .into_iter()
        .filter(|f| !f.starts_with(&schema_dir) && !f.ends_with("kustomization.yaml"))
        .flat_map(|file| {
            documents(&file)
                .unwrap_or_else(|e| panic!("{e:#}"))
                .into_iter()
                .map(move |value| Object {
                    file: file.clone(),
                    value,
                })
        })
        .collect()
}

/// A CRD's schema as a JSON Schema validator.
pub struct CrdSchema {
    pub kind: String,
    pub api_version: String,
    validator: jsonschema::Validator,
}

impl CrdSchema {
    /// The schema of the (only) version of the CRD in `path`.
    pub fn load(path: &Path) -> Result<CrdSchema> {
        let crd = documents(path)?.into_iter().next().context("no document")?;
        let group = crd["spec"]["group"].as_str().context("spec.group")?;
        let kind = crd["spec"]["names"]["kind"]
            .as_str()
            .context("spec.names.kind")?;
        let versions = crd["spec"]["versions"]
            .as_array()
            .context("spec.versions")?;
        let [version] = versions.as_slice() else {
            bail!("expected one version, found {}", versions.len());
        };
        let name = version["name"].as_str().context("version name")?;
        let api_version = format!("{group}/{name}");
        let mut schema = version["schema"]["openAPIV3Schema"].clone();
        if !schema.is_object() {
            bail!("no openAPIV3Schema");
        }
        close_objects(&mut schema);
        let root = schema.as_object_mut().expect("object");
        let properties = root
            .get_mut("properties")
            .and_then(Value::as_object_mut)
            .context("root properties")?;
        // Draft 4 has no `const`: a one-value `enum`.
        properties.insert("apiVersion".into(), json!({ "enum": [api_version] }));
        properties.insert("kind".into(), json!({ "enum": [kind] }));
        properties.insert("metadata".into(), object_meta_schema());
        root.insert(
            "required".into(),
            json!(["apiVersion", "kind", "metadata", "spec"]),
        );
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .offline()
            .build(&schema)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(CrdSchema {
            kind: kind.to_owned(),
            api_version,
            validator,
        })
    }

    /// Every way `object` breaks the schema, as "path: message" (empty: valid).
    pub fn errors(&self, object: &Value) -> Vec<String> {
        self.validator
            .iter_errors(object)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }
}

/// The CRDs under `deploy/kubernetes/schema`.
pub fn operator_schemas() -> Vec<CrdSchema> {
    [
        "core.spinkube.dev_spinapps.yaml",
        "core.spinkube.dev_spinappexecutors.yaml",
    ]
    .iter()
    .map(|f| {
        CrdSchema::load(&kubernetes_dir().join("schema").join(f))
            .unwrap_or_else(|e| panic!("{f}: {e:#}"))
    })
    .collect()
}

/// Turns an OpenAPI v3 schema of a structural CRD into a JSON Schema that Draft 4
/// validators read as Kubernetes does: objects with `properties` hold only those
/// (unless `x-kubernetes-preserve-unknown-fields`), `int32`/`int64` are range-checked,
/// and the Kubernetes extensions and descriptions are dropped.
pub fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let preserve = map
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            map.retain(|k, _| !k.starts_with("x-kubernetes-") && k != "description");
            match map.get("format").and_then(Value::as_str) {
                Some("int32") => {
                    map.insert("minimum".into(), json!(i32::MIN));
                    map.insert("maximum".into(), json!(i32::MAX));
                }
                Some("int64") => {
                    map.insert("minimum".into(), json!(i64::MIN));
                    map.insert("maximum".into(), json!(i64::MAX));
                }
                _ => {}
            }
            if map.contains_key("properties")
                && !map.contains_key("additionalProperties")
                && !preserve
            {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            // `properties` maps names to schemas: recurse into the schemas, not the map.
            for (key, value) in map.iter_mut() {
                match key.as_str() {
                    "properties" => {
                        if let Value::Object(properties) = value {
                            properties.values_mut().for_each(close_objects);
                        }
                    }
                    _ => close_objects(value),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// The part of ObjectMeta a hand-written manifest uses, closed like the rest: a name
/// that can also name the Service and Deployment the operator derives from it (an RFC
/// 1035 label), a namespace, labels and annotations.
fn object_meta_schema() -> Value {
    let label = "^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$";
    json!({
        "type": "object",
        "required": ["name"],
        "additionalProperties": false,
        "properties": {
            "name": { "type": "string", "pattern": label },
            "namespace": { "type": "string", "pattern": label },
            "labels": { "type": "object", "additionalProperties": { "type": "string" } },
            "annotations": { "type": "object", "additionalProperties": { "type": "string" } }
        }
    })
}

/// What spin-operator's validating webhook (`internal/webhook/spinapp_validating.go`)
/// refuses in a SpinApp the schema allows: no executor, or one that does not exist;
/// `replicas` with `enableAutoscaling`, or fewer than one without it; pod or deployment
/// annotations with an executor that creates no Deployment.
pub fn admission_errors(spin_app: &Value, executors: &[&Value]) -> Vec<String> {
    let spec = &spin_app["spec"];
    let mut errors = Vec::new();
    let executor = spec["executor"].as_str().unwrap_or_default();
    let found = executors.iter().find(|e| e["metadata"]["name"] == executor);
    if executor.is_empty() {
        errors.push("spec.executor must be set".to_owned());
    } else if found.is_none() {
        errors.push(format!("spec.executor {executor:?} does not exist"));
    }
    let autoscaling = spec["enableAutoscaling"].as_bool().unwrap_or(false);
    let replicas = spec["replicas"].as_i64();
    if autoscaling && replicas.is_some_and(|r| r != 0) {
        errors.push("spec.replicas cannot be set when autoscaling is enabled".to_owned());
    }
    if !autoscaling && replicas.unwrap_or(0) < 1 {
        errors.push("spec.replicas must be > 0".to_owned());
    }
    if let Some(executor) = found {
        if executor["spec"]["createDeployment"] != true {
            for field in ["deploymentAnnotations", "podAnnotations"] {
                if spec[field].as_object().is_some_and(|m| !m.is_empty()) {
                    errors.push(format!(
                        "spec.{field} can't be set when the executor does not use operator deployments"
                    ));
                }
            }
        }
    }
    errors
}

/// The names a template (`"redis://{{ host }}:{{ port }}"`) refers to.
pub fn template_names(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        names.push(after[..end].trim().to_owned());
        rest = &after[end + 2..];
    }
    names
}

/// `key -> value` of a JSON object, as strings (a Secret's `stringData`).
pub fn string_map(value: &Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}
