//! `spin.toml` (manifest version 2) and `runtime-config.toml`: parsing, refusing what
//! this runner does not support, and resolving `{{ variable }}` templates.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The manifest, exactly the subset of Spin's schema this runner implements. Unknown
/// fields are refused (serde names them) rather than silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub spin_manifest_version: u32,
    pub application: Application,
    #[serde(default)]
    pub variables: BTreeMap<String, VariableDecl>,
    #[serde(default)]
    pub trigger: Triggers,
    #[serde(default)]
    pub component: BTreeMap<String, ComponentDecl>,
}

// Every field Spin defines is parsed, so unknown ones are refused; some are not
// needed to run the app.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub authors: Vec<String>,
    #[serde(default)]
    pub trigger: AppTriggers,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppTriggers {
    pub redis: Option<AppRedis>,
    pub http: Option<AppHttp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRedis {
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppHttp {
    pub base: Option<String>,
}

// Every field Spin defines is parsed, so unknown ones are refused; some are not
// needed to run the app.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    #[serde(default)]
    pub http: Vec<HttpTrigger>,
    #[serde(default)]
    pub redis: Vec<RedisTrigger>,
}

// Every field Spin defines is parsed, so unknown ones are refused; some are not
// needed to run the app.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    pub id: Option<String>,
    pub route: RouteDecl,
    pub component: String,
    pub executor: Option<HttpExecutor>,
}

/// `route = "/path"`, or `route = { private = true }` for a component no route reaches
/// (Spin reaches those only by service chaining, which this runner does not do).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RouteDecl {
    Route(String),
    Private(PrivateRoute),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateRoute {
    pub private: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpExecutor {
    #[serde(rename = "type")]
    pub kind: String,
}

// Every field Spin defines is parsed, so unknown ones are refused; some are not
// needed to run the app.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTrigger {
    pub id: Option<String>,
    pub channel: String,
    pub component: String,
    pub address: Option<String>,
}

// Every field Spin defines is parsed, so unknown ones are refused; some are not
// needed to run the app.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentDecl {
    pub source: String,
    pub description: Option<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    #[serde(default)]
    pub key_value_stores: Vec<String>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub files: Vec<toml::Value>,
    /// For `spin build`; accepted and not used here.
    pub build: Option<BuildDecl>,
}

// Every field Spin defines is parsed, so unknown ones are refused; some are not
// needed to run the app.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildDecl {
    pub command: String,
    #[serde(default)]
    pub watch: Vec<String>,
    pub workdir: Option<String>,
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest> {
        let manifest: Manifest = toml::from_str(text).context("spin.toml")?;
        if manifest.spin_manifest_version != 2 {
            bail!(
                "spin.toml: spin_manifest_version = {} is not supported (only 2)",
                manifest.spin_manifest_version
            );
        }
        for (id, c) in &manifest.component {
            if !c.files.is_empty() {
                bail!("spin.toml: component.{id}.files is not supported by this runner");
            }
        }
        for (i, t) in manifest.trigger.http.iter().enumerate() {
            if let Some(executor) = &t.executor {
                if executor.kind != "spin" {
                    bail!(
                        "spin.toml: trigger.http[{i}].executor type {:?} is not supported (only \"spin\")",
                        executor.kind
                    );
                }
            }
            if !manifest.component.contains_key(&t.component) {
                bail!(
                    "spin.toml: trigger.http[{i}].component {:?} is not defined",
                    t.component
                );
            }
            if let RouteDecl::Private(PrivateRoute { private: false }) = t.route {
                bail!(
                    "spin.toml: trigger.http[{i}].route must be a string pattern or {{ private = true }}: {:?} has {{ private = false }}",
                    t.component
                );
            }
        }
        for (i, t) in manifest.trigger.redis.iter().enumerate() {
            if !manifest.component.contains_key(&t.component) {
                bail!(
                    "spin.toml: trigger.redis[{i}].component {:?} is not defined",
                    t.component
                );
            }
        }
        if let Some(http) = &manifest.application.trigger.http {
            if http.base.as_deref().is_some_and(|b| b != "/") {
                bail!("spin.toml: application.trigger.http.base other than \"/\" is not supported");
            }
        }
        Ok(manifest)
    }
}

/// What `runtime-config.toml` may say: `[key_value_store.<label>]` entries and
/// `[outbound_http]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub key_value_store: BTreeMap<String, KeyValueStoreConfig>,
    pub outbound_http: Option<OutboundHttpConfig>,
}

/// `[outbound_http]`. As in Spin, connections are pooled when the table is absent, but
/// a table without `connection_pooling` turns pooling off (Spin's field defaults to
/// false); Spin's connection limits are not supported here, and refused.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundHttpConfig {
    #[serde(default)]
    pub connection_pooling: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum KeyValueStoreConfig {
    /// Spin's Redis backend.
    #[serde(rename = "redis")]
    Redis { url: String },
    /// Spin's default SQLite backend; `path` relative to the runtime config file.
    #[serde(rename = "spin")]
    Sqlite { path: Option<String> },
}

impl RuntimeConfig {
    pub fn parse(text: &str) -> Result<RuntimeConfig> {
        Ok(toml::from_str(text)?)
    }

    /// Whether outbound HTTP connections are kept for reuse.
    pub fn connection_pooling(&self) -> bool {
        self.outbound_http
            .as_ref()
            .is_none_or(|table| table.connection_pooling)
    }
}

/// Replaces every `{{ name }}` in `template` with `lookup(name)`.
pub fn resolve_template(
    template: &str,
    mut lookup: impl FnMut(&str) -> Option<String>,
) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            bail!("unclosed {{{{ in {template:?}");
        };
        let name = after[..end].trim();
        if !is_variable_name(name) {
            bail!("{name:?} in {template:?} is not a variable name");
        }
        match lookup(name) {
            Some(value) => out.push_str(&value),
            None => bail!("{template:?} refers to undefined variable {name:?}"),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Spin variable names: lowercase ASCII letters, digits and underscores, starting with a
/// letter.
pub fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
spin_manifest_version = 2
[application]
name = "a"
[[trigger.http]]
route = "/..."
component = "c"
[component.c]
source = "c.wasm"
"#;

    #[test]
    fn parses_the_projects_manifest() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../spin.toml"))
            .unwrap();
        let m = Manifest::parse(&text).unwrap();
        // The API and the storefront page behind it.
        let http: Vec<&str> = m
            .trigger
            .http
            .iter()
            .map(|t| t.component.as_str())
            .collect();
        assert_eq!(http, ["checkout", "storefront"]);
        assert!(!m.trigger.redis.is_empty());
        assert!(m.variables["mail_api_key"].secret);
    }

    /// Checkout spreads orders over `order_shards` channels: each needs a trigger of its
    /// own, on an address string of its own (so that Spin gives it its own subscriber),
    /// or its orders wait for redrive.
    #[test]
    fn every_order_shard_of_the_projects_manifest_has_a_subscriber_of_its_own() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../spin.toml"))
            .unwrap();
        let m = Manifest::parse(&text).unwrap();
        let shards: usize = m.variables["order_shards"]
            .default
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(m.trigger.redis.len(), shards);
        let mut addresses = std::collections::BTreeSet::new();
        for (i, trigger) in m.trigger.redis.iter().enumerate() {
            assert_eq!(trigger.channel, format!("{{{{ orders_channel }}}}.{i}"));
            assert_eq!(trigger.component, "fulfilment");
            let address = trigger.address.clone().unwrap();
            assert!(address.starts_with("{{ redis_address }}"), "{address}");
            assert!(addresses.insert(address), "trigger {i} shares its address");
        }
        for component in ["checkout", "fulfilment"] {
            assert_eq!(
                m.component[component].variables["order_shards"],
                "{{ order_shards }}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let text = MINIMAL.replace(
            "source = \"c.wasm\"",
            "source = \"c.wasm\"\nsql_databases = [\"x\"]",
        );
        let err = format!("{:#}", Manifest::parse(&text).unwrap_err());
        assert!(err.contains("sql_databases"), "{err}");

        let text = MINIMAL.replace(
            "name = \"a\"",
            "name = \"a\"\n[application.trigger.mqtt]\naddress = \"x\"",
        );
        let err = format!("{:#}", Manifest::parse(&text).unwrap_err());
        assert!(err.contains("mqtt"), "{err}");

        let text = MINIMAL.replace("spin_manifest_version = 2", "spin_manifest_version = 1");
        assert!(
            format!("{:#}", Manifest::parse(&text).unwrap_err()).contains("spin_manifest_version")
        );

        let text = MINIMAL.replace("component = \"c\"", "component = \"missing\"");
        assert!(format!("{:#}", Manifest::parse(&text).unwrap_err()).contains("missing"));
    }

    #[test]
    fn a_private_route_is_accepted_and_private_false_refused() {
        let private = MINIMAL.replace("route = \"/...\"", "route = { private = true }");
        let m = Manifest::parse(&private).unwrap();
        assert!(matches!(
            m.trigger.http[0].route,
            RouteDecl::Private(PrivateRoute { private: true })
        ));
        let public = MINIMAL.replace("route = \"/...\"", "route = { private = false }");
        let err = format!("{:#}", Manifest::parse(&public).unwrap_err());
        assert!(err.contains("private = true"), "{err}");
    }

    #[test]
    fn runtime_config_types() {
        let c: RuntimeConfig = toml::from_str(
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://x:1\"\n[key_value_store.other]\ntype = \"spin\"\npath = \"kv.db\"\n",
        )
        .unwrap();
        assert!(matches!(
            c.key_value_store["default"],
            KeyValueStoreConfig::Redis { .. }
        ));
        assert!(matches!(
            c.key_value_store["other"],
            KeyValueStoreConfig::Sqlite { .. }
        ));
        let err =
            toml::from_str::<RuntimeConfig>("[key_value_store.default]\ntype = \"azure_cosmos\"\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("azure_cosmos"), "{err}");
        assert!(
            toml::from_str::<RuntimeConfig>("[sqlite_database.default]\ntype = \"spin\"\n")
                .is_err()
        );
    }

    #[test]
    fn outbound_http_pooling_is_on_without_the_table_and_off_in_a_table_without_it() {
        let pooling = |text: &str| RuntimeConfig::parse(text).unwrap().connection_pooling();
        assert!(pooling(""));
        assert!(pooling("[outbound_http]\nconnection_pooling = true\n"));
        assert!(!pooling("[outbound_http]\nconnection_pooling = false\n"));
        assert!(!pooling("[outbound_http]\n"));
        let err = RuntimeConfig::parse("[outbound_http]\nmax_connections = 4\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_connections"), "{err}");
    }

    #[test]
    fn templates() {
        let vars = |n: &str| (n == "host").then(|| "127.0.0.1".to_owned());
        assert_eq!(
            resolve_template("redis://{{ host }}:6379", vars).unwrap(),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(resolve_template("{{host}}", vars).unwrap(), "127.0.0.1");
        assert_eq!(resolve_template("plain", vars).unwrap(), "plain");
        assert!(resolve_template("{{ nope }}", vars).is_err());
        assert!(resolve_template("{{ host ", vars).is_err());
        assert!(resolve_template("{{ Host }}", vars).is_err());
    }
}
