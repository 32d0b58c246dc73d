//! The application as it will run: the manifest with variables resolved, the selected
//! components, their triggers, and the key-value stores they may open.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::allowed_hosts::AllowedHosts;
use crate::manifest::{
    is_variable_name, resolve_template, KeyValueStoreConfig, Manifest, RouteDecl, RuntimeConfig,
};

/// One component, ready to instantiate.
#[derive(Debug)]
pub struct ComponentConfig {
    pub id: String,
    pub source: PathBuf,
    /// The component's own variables, templates resolved.
    pub variables: HashMap<String, String>,
    pub key_value_stores: Vec<String>,
    pub allowed_hosts: AllowedHosts,
    pub environment: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct HttpRoute {
    pub route: String,
    pub component: String,
}

#[derive(Debug)]
pub struct AppConfig {
    pub name: String,
    pub version: Option<String>,
    pub components: BTreeMap<String, ComponentConfig>,
    pub http_routes: Vec<HttpRoute>,
    /// Redis address -> channel -> components.
    pub redis_subscriptions: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    pub key_value_stores: BTreeMap<String, KeyValueStoreConfig>,
    /// Outbound HTTP connections are kept for reuse (`[outbound_http]`).
    pub connection_pooling: bool,
    /// Where `.spin/` (default SQLite store, compile cache) lives: the manifest's dir.
    pub state_dir: PathBuf,
}

/// What the command line adds to the manifest.
pub struct Overrides<'a> {
    /// `--variable name=value` pairs (highest precedence).
    pub variables: &'a [(String, String)],
    /// `--env KEY=VALUE` pairs for every component's environment.
    pub environment: &'a [(String, String)],
    /// `--component-id`: run only these (all when empty).
    pub component_ids: &'a [String],
    pub runtime_config: Option<&'a Path>,
}

impl AppConfig {
    pub fn load(manifest_path: &Path, overrides: Overrides<'_>) -> Result<AppConfig> {
        let text = std::fs::read_to_string(manifest_path)
            .with_context(|| format!("reading {}", manifest_path.display()))?;
        let dir = manifest_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let runtime = match overrides.runtime_config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let config =
                    RuntimeConfig::parse(&text).with_context(|| format!("{}", path.display()))?;
                // Paths in it are relative to its own directory.
                let runtime_dir = path
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| dir.clone());
                Some((config, runtime_dir))
            }
            None => None,
        };
        let env: HashMap<String, String> = std::env::vars().collect();
        AppConfig::from_parts(&text, &dir, runtime, &env, &overrides)
    }

    /// The application a manifest's text describes, with its files relative to `dir`,
    /// the runtime config (and its directory) if any, and `env` as the environment
    /// (`SPIN_VARIABLE_*`). Every refusal is an error naming what is wrong.
    pub fn from_parts(
        text: &str,
        dir: &Path,
        runtime: Option<(RuntimeConfig, PathBuf)>,
        env: &HashMap<String, String>,
        overrides: &Overrides<'_>,
    ) -> Result<AppConfig> {
        let dir = dir.to_path_buf();
        let manifest = Manifest::parse(text)?;
        let app_variables = resolve_app_variables(&manifest, overrides.variables, env)?;
        let app_var = |name: &str| app_variables.get(name).cloned();

        for id in overrides.component_ids {
            if !manifest.component.contains_key(id) {
                bail!("--component-id {id:?}: spin.toml defines no such component");
            }
        }
        let selected = |id: &str| {
            overrides.component_ids.is_empty() || overrides.component_ids.iter().any(|c| c == id)
        };

        let mut components = BTreeMap::new();
        for (id, decl) in &manifest.component {
            if !selected(id) {
                continue;
            }
            let mut variables = HashMap::new();
            for (name, template) in &decl.variables {
                if !is_variable_name(name) {
                    bail!("spin.toml: component.{id}.variables: {name:?} is not a valid variable name");
                }
                let value = resolve_template(template, app_var)
                    .with_context(|| format!("spin.toml: component.{id}.variables.{name}"))?;
                variables.insert(name.clone(), value);
            }
            let hosts = decl
                .allowed_outbound_hosts
                .iter()
                .map(|h| resolve_template(h, |n| variables.get(n).cloned().or_else(|| app_var(n))))
                .collect::<Result<Vec<_>>>()
                .with_context(|| format!("spin.toml: component.{id}.allowed_outbound_hosts"))?;
            let allowed_hosts = AllowedHosts::parse(&hosts)
                .with_context(|| format!("spin.toml: component.{id}.allowed_outbound_hosts"))?;
            let mut environment: Vec<(String, String)> = decl
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            environment.extend(overrides.environment.iter().cloned());
            components.insert(
                id.clone(),
                ComponentConfig {
                    id: id.clone(),
                    source: dir.join(&decl.source),
                    variables,
                    key_value_stores: decl.key_value_stores.clone(),
                    allowed_hosts,
                    environment,
                },
            );
        }

        let http_routes = manifest
            .trigger
            .http
            .iter()
            .filter(|t| selected(&t.component))
            .filter_map(|t| match &t.route {
                RouteDecl::Route(route) => Some(HttpRoute {
                    route: route.clone(),
                    component: t.component.clone(),
                }),
                RouteDecl::Private(_) => None,
            })
            .collect();

        let mut redis_subscriptions: BTreeMap<String, BTreeMap<String, Vec<String>>> =
            BTreeMap::new();
        for (i, t) in manifest.trigger.redis.iter().enumerate() {
            if !selected(&t.component) {
                continue;
            }
            let address = match (&t.address, &manifest.application.trigger.redis) {
                (Some(a), _) => a.clone(),
                (None, Some(app)) => app.address.clone(),
                (None, None) => bail!(
                    "spin.toml: trigger.redis[{i}] has no address and there is no [application.trigger.redis] address"
                ),
            };
            let address = resolve_template(&address, app_var)
                .with_context(|| format!("spin.toml: trigger.redis[{i}].address"))?;
            let channel = resolve_template(&t.channel, app_var)
                .with_context(|| format!("spin.toml: trigger.redis[{i}].channel"))?;
            redis_subscriptions
                .entry(address)
                .or_default()
                .entry(channel)
                .or_default()
                .push(t.component.clone());
        }

        let (runtime, runtime_dir) =
            runtime.unwrap_or_else(|| (RuntimeConfig::default(), dir.clone()));
        let mut key_value_stores = BTreeMap::new();
        for c in components.values() {
            for label in &c.key_value_stores {
                let config = match runtime.key_value_store.get(label) {
                    Some(KeyValueStoreConfig::Sqlite { path }) => KeyValueStoreConfig::Sqlite {
                        path: Some(
                            runtime_dir
                                .join(path.as_deref().unwrap_or("sqlite_key_value.db"))
                                .display()
                                .to_string(),
                        ),
                    },
                    Some(other) => other.clone(),
                    // Spin's default store: SQLite under .spin/ next to the manifest.
                    None if label == "default" => KeyValueStoreConfig::Sqlite {
                        path: Some(dir.join(".spin/sqlite_key_value.db").display().to_string()),
                    },
                    // As Spin: the app does not start, so no request can open it.
                    None => bail!(
                        "unknown key_value_stores label {label:?} for component {:?}: no runtime config defines that store (only \"default\" exists without one)",
                        c.id
                    ),
                };
                key_value_stores.insert(label.clone(), config);
            }
        }

        Ok(AppConfig {
            name: manifest.application.name.clone(),
            version: manifest.application.version.clone(),
            components,
            http_routes,
            redis_subscriptions,
            key_value_stores,
            connection_pooling: runtime.connection_pooling(),
            state_dir: dir.join(".spin"),
        })
    }
}

/// Application variable values: `--variable` beats `SPIN_VARIABLE_<NAME>` beats the
/// manifest default; a required variable without a value is an error.
fn resolve_app_variables(
    manifest: &Manifest,
    cli: &[(String, String)],
    env: &HashMap<String, String>,
) -> Result<HashMap<String, String>> {
    for (name, _) in cli {
        if !manifest.variables.contains_key(name) {
            bail!("--variable {name}: spin.toml declares no variable {name:?}");
        }
    }
    let mut values = HashMap::new();
    for (name, decl) in &manifest.variables {
        if !is_variable_name(name) {
            bail!("spin.toml: variables: {name:?} is not a valid variable name");
        }
        if decl.required && decl.default.is_some() {
            bail!("spin.toml: variables.{name} is required and has a default");
        }
        let from_cli = cli
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone());
        let from_env = env
            .get(&format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase()))
            .cloned();
        match from_cli.or(from_env).or_else(|| decl.default.clone()) {
            Some(value) => {
                values.insert(name.clone(), value);
            }
            None => bail!(
                "variable {name:?} is required: set SPIN_VARIABLE_{} or pass --variable {name}=...",
                name.to_ascii_uppercase()
            ),
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest::parse(
            r#"
spin_manifest_version = 2
[application]
name = "a"
[variables]
host = { default = "127.0.0.1" }
token = { required = true, secret = true }
[[trigger.redis]]
address = "redis://{{ host }}:6379"
channel = "ch"
component = "c"
[component.c]
source = "c.wasm"
"#,
        )
        .unwrap()
    }

    #[test]
    fn variable_precedence_cli_then_env_then_default() {
        let m = manifest();
        let mut env = HashMap::new();
        assert!(
            resolve_app_variables(&m, &[], &env).is_err(),
            "token is required"
        );
        env.insert("SPIN_VARIABLE_TOKEN".to_owned(), "from-env".to_owned());
        env.insert("SPIN_VARIABLE_HOST".to_owned(), "env-host".to_owned());
        let v = resolve_app_variables(&m, &[], &env).unwrap();
        assert_eq!(v["token"], "from-env");
        assert_eq!(v["host"], "env-host");
        let cli = [("host".to_owned(), "cli-host".to_owned())];
        let v = resolve_app_variables(&m, &cli, &env).unwrap();
        assert_eq!(v["host"], "cli-host");
        let unknown = [("nope".to_owned(), "x".to_owned())];
        assert!(resolve_app_variables(&m, &unknown, &env).is_err());
    }

    /// Writes `manifest` (and optionally a runtime config) into a fresh directory.
    fn app_dir(name: &str, manifest: &str, runtime: Option<&str>) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("spin-runner-app-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("spin.toml"), manifest).unwrap();
        if let Some(runtime) = runtime {
            std::fs::write(dir.join("rc.toml"), runtime).unwrap();
        }
        dir
    }

    fn load(dir: &Path, runtime: bool, ids: &[String]) -> Result<AppConfig> {
        let rc = dir.join("rc.toml");
        AppConfig::load(
            &dir.join("spin.toml"),
            Overrides {
                variables: &[("token".to_owned(), "t0k".to_owned())],
                environment: &[("EXTRA".to_owned(), "1".to_owned())],
                component_ids: ids,
                runtime_config: runtime.then_some(rc.as_path()),
            },
        )
    }

    const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "a"
[application.trigger.redis]
address = "redis://{{ host }}:6379"
[variables]
host = { default = "127.0.0.1" }
channel = { default = "orders" }
token = { required = true, secret = true }
[[trigger.http]]
route = "/api/..."
component = "web"
[[trigger.redis]]
channel = "{{ channel }}"
component = "worker"
[[trigger.redis]]
channel = "other"
address = "redis://10.0.0.1:6380"
component = "worker"
[component.web]
source = "web.wasm"
key_value_stores = ["default"]
allowed_outbound_hosts = ["redis://{{ redis_host }}:6379"]
environment = { MODE = "test" }
[component.web.variables]
redis_host = "{{ host }}"
token = "Bearer {{ token }}"
[component.worker]
source = "worker.wasm"
key_value_stores = ["default", "cache"]
"#;

    #[test]
    fn templates_triggers_stores_and_selection() {
        let dir = app_dir(
            "full",
            APP,
            Some("[key_value_store.cache]\ntype = \"spin\"\npath = \"cache.db\"\n"),
        );
        let app = load(&dir, true, &[]).unwrap();
        let web = &app.components["web"];
        assert_eq!(web.variables["token"], "Bearer t0k");
        assert_eq!(web.variables["redis_host"], "127.0.0.1");
        assert!(web.allowed_hosts.allows_url("redis://127.0.0.1:6379"));
        assert!(!web.allowed_hosts.allows_url("redis://10.0.0.1:6379"));
        assert_eq!(web.source, dir.join("web.wasm"));
        assert!(web
            .environment
            .contains(&("MODE".to_owned(), "test".to_owned())));
        assert!(web
            .environment
            .contains(&("EXTRA".to_owned(), "1".to_owned())));
        // The app-level default address, templated; a trigger's own address wins.
        assert_eq!(
            app.redis_subscriptions["redis://127.0.0.1:6379"]["orders"],
            ["worker"]
        );
        assert_eq!(
            app.redis_subscriptions["redis://10.0.0.1:6380"]["other"],
            ["worker"]
        );
        // `default` unconfigured: Spin's SQLite file under .spin/ by the manifest.
        match &app.key_value_stores["default"] {
            KeyValueStoreConfig::Sqlite { path } => assert_eq!(
                path.as_deref(),
                Some(
                    dir.join(".spin/sqlite_key_value.db")
                        .display()
                        .to_string()
                        .as_str()
                )
            ),
            other => panic!("{other:?}"),
        }
        // A configured `spin` store: relative to the runtime config file.
        match &app.key_value_stores["cache"] {
            KeyValueStoreConfig::Sqlite { path } => assert_eq!(
                path.as_deref(),
                Some(dir.join("cache.db").display().to_string().as_str())
            ),
            other => panic!("{other:?}"),
        }

        // --component-id web: only its route, no Redis subscription, no `cache` store.
        let app = load(&dir, true, &["web".to_owned()]).unwrap();
        assert_eq!(app.http_routes.len(), 1);
        assert!(app.redis_subscriptions.is_empty());
        assert!(!app.key_value_stores.contains_key("cache"));
        assert!(load(&dir, true, &["nope".to_owned()]).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_unconfigured_store_label_is_a_startup_error() {
        let dir = app_dir("nostore", APP, None);
        let err = format!("{:#}", load(&dir, false, &[]).unwrap_err());
        assert!(
            err.contains("unknown key_value_stores label \"cache\" for component \"worker\""),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn templates_must_name_declared_variables() {
        let dir = app_dir(
            "undeclared",
            &APP.replace("\"Bearer {{ token }}\"", "\"{{ missing }}\""),
            Some("[key_value_store.cache]\ntype = \"spin\"\n"),
        );
        let err = format!("{:#}", load(&dir, true, &[]).unwrap_err());
        assert!(err.contains("missing"), "{err}");
        assert!(!err.contains("t0k"), "secret leaked: {err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
