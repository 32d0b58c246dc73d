//! The deployment manifests, checked without a cluster: what `kubectl apply` and
//! spin-operator would refuse, and what would deploy but not work (a variable the app
//! does not declare, a secret that does not exist, a CronJob calling a Service that is
//! not there, a fulfilment whose key-value store is another Redis than its events').

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use deploy_checks::*;
use serde_json::{json, Value};
use spin_app_config::app::{AppConfig, Overrides};
use spin_app_config::manifest::{KeyValueStoreConfig, Manifest, RuntimeConfig};

fn root_manifest_text() -> String {
    std::fs::read_to_string(repo_root().join("spin.toml")).expect("spin.toml")
}

fn root_manifest() -> Manifest {
    Manifest::parse(&root_manifest_text()).expect("spin.toml parses")
}

fn managed_manifest_path() -> PathBuf {
    repo_root().join("deploy/managed/spin.toml")
}

fn deployment_doc() -> String {
    std::fs::read_to_string(repo_root().join("docs/deployment.md")).expect("docs/deployment.md")
}

fn of_kind<'a>(objects: &'a [Object], kind: &str) -> Vec<&'a Object> {
    objects.iter().filter(|o| o.kind() == kind).collect()
}

/// The application variables the given components use: in their own variables, their
/// allowed hosts and the triggers that name them.
fn variables_used_by(manifest: &Manifest, components: &[&str]) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for id in components {
        let decl = &manifest.component[*id];
        for template in decl.variables.values() {
            used.extend(template_names(template));
        }
        // allowed_outbound_hosts may name the component's own variables too.
        for template in &decl.allowed_outbound_hosts {
            used.extend(
                template_names(template)
                    .into_iter()
                    .filter(|n| !decl.variables.contains_key(n)),
            );
        }
        for trigger in manifest.trigger.redis.iter().filter(|t| t.component == *id) {
            used.extend(template_names(&trigger.channel));
            let address = trigger.address.clone().or_else(|| {
                manifest
                    .application
                    .trigger
                    .redis
                    .as_ref()
                    .map(|r| r.address.clone())
            });
            used.extend(address.iter().flat_map(|a| template_names(a)));
        }
    }
    used
}

/// The Secrets defined under deploy/kubernetes: name -> key -> value.
fn secrets(objects: &[Object]) -> BTreeMap<String, BTreeMap<String, String>> {
    of_kind(objects, "Secret")
        .into_iter()
        .map(|s| {
            let data = string_map(&s.value["stringData"])
                .into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
                .collect();
            (s.name().to_owned(), data)
        })
        .collect()
}

/// The value a `variables[]`/`env[]` entry resolves to with the example Secrets.
fn resolve(entry: &Value, secrets: &BTreeMap<String, BTreeMap<String, String>>) -> String {
    if let Some(value) = entry["value"].as_str() {
        return value.to_owned();
    }
    let reference = &entry["valueFrom"]["secretKeyRef"];
    let (name, key) = (
        reference["name"].as_str().unwrap_or_default(),
        reference["key"].as_str().unwrap_or_default(),
    );
    secrets
        .get(name)
        .and_then(|s| s.get(key))
        .unwrap_or_else(|| panic!("{entry}: no Secret {name:?} with key {key:?}"))
        .clone()
}

/// In-cluster addresses the Services under deploy/kubernetes answer on, as
/// `name.namespace.svc.cluster.local:port`, plus those the operator creates for each
/// SpinApp (named after it, port 80).
fn service_addresses(objects: &[Object]) -> BTreeSet<String> {
    let mut addresses = BTreeSet::new();
    for service in of_kind(objects, "Service") {
        for port in service.value["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
        {
            addresses.insert(format!(
                "{}.{}.svc.cluster.local:{}",
                service.name(),
                service.namespace(),
                port["port"]
            ));
        }
    }
    for app in of_kind(objects, "SpinApp") {
        addresses.insert(format!(
            "{}.{}.svc.cluster.local:80",
            app.name(),
            app.namespace()
        ));
    }
    addresses
}

/// `host:port` of a URL (the scheme's default port when it has none).
fn host_port(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if authority.contains(':') {
        authority.to_owned()
    } else {
        let port = spin_app_config::allowed_hosts::default_port(scheme).unwrap_or(0);
        format!("{authority}:{port}")
    }
}

#[test]
fn every_manifest_parses() {
    let deploy = repo_root().join("deploy");
    let yaml = files_under(&deploy, ".yaml");
    assert!(yaml.len() >= 10, "{yaml:?}");
    for file in &yaml {
        let docs = documents(file).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(!docs.is_empty(), "{}: no document", file.display());
        for doc in &docs {
            for field in ["apiVersion", "kind"] {
                assert!(
                    doc[field].as_str().is_some_and(|s| !s.is_empty()),
                    "{}: a document without {field}",
                    file.display()
                );
            }
        }
    }
    let toml_files = files_under(&deploy, ".toml");
    assert!(!toml_files.is_empty());
    for file in &toml_files {
        let text = std::fs::read_to_string(file).unwrap();
        Manifest::parse(&text).unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
    }
    // The runtime config inside its Secret is one Spin reads.
    let objects = kubernetes_objects();
    let runtime = &secrets(&objects)["shop-runtime-config"]["runtime-config.toml"];
    let config = RuntimeConfig::parse(runtime).expect("runtime-config.toml in the Secret");
    assert!(matches!(
        config.key_value_store["default"],
        KeyValueStoreConfig::Redis { .. }
    ));
    // A document that is not YAML is an error, not an empty list.
    assert!(parse_documents("spec: [unclosed").is_err());
}

#[test]
fn the_kustomization_applies_every_manifest_of_the_shop() {
    let dir = kubernetes_dir();
    let kustomization = &documents(&dir.join("kustomization.yaml")).unwrap()[0];
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    // Alternatives (autoscaling/) and the CRDs (schema/) live in subdirectories.
    assert_eq!(listed, present);
    let namespace = kustomization["namespace"].as_str().unwrap();
    for object in kubernetes_objects() {
        if object.kind() != "Namespace" {
            assert_eq!(object.namespace(), namespace, "{}", object.label());
        }
    }
}

#[test]
fn spin_apps_and_executors_match_the_operators_crds() {
    let schemas = operator_schemas();
    let objects = kubernetes_objects();
    let mut checked = 0;
    for object in &objects {
        let Some(schema) = schemas.iter().find(|s| s.kind == object.kind()) else {
            continue;
        };
        let errors = schema.errors(&object.value);
        assert!(
            errors.is_empty(),
            "{}:\n{}",
            object.label(),
            errors.join("\n")
        );
        checked += 1;
    }
    // Checkout three ways, fulfilment, the executor.
    assert!(checked >= 5, "only {checked} objects checked");
    for object in &objects {
        if object.value["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("core.spinkube.dev/"))
        {
            assert!(
                schemas.iter().any(|s| s.kind == object.kind()
                    && s.api_version == object.value["apiVersion"]),
                "{}: no CRD for {}",
                object.label(),
                object.value["apiVersion"]
            );
        }
    }
}

#[test]
fn a_misspelt_or_mistyped_field_fails_validation_and_is_named() {
    let schemas = operator_schemas();
    let spin_app_schema = schemas.iter().find(|s| s.kind == "SpinApp").unwrap();
    let objects = kubernetes_objects();
    let checkout = objects
        .iter()
        .find(|o| o.kind() == "SpinApp" && o.file.ends_with("checkout.yaml"))
        .expect("checkout.yaml");
    assert!(spin_app_schema.errors(&checkout.value).is_empty());

    let broken = |change: &dyn Fn(&mut Value), field: &str| {
        let mut value = checkout.value.clone();
        change(&mut value);
        let errors = spin_app_schema.errors(&value);
        assert!(
            errors.iter().any(|e| e.contains(field)),
            "{field}: not refused, or not named: {errors:?}"
        );
    };
    broken(&|v| v["spec"]["replica"] = json!(3), "replica");
    broken(&|v| v["spec"]["replicas"] = json!("3"), "/spec/replicas");
    broken(
        &|v| v["spec"]["replicas"] = json!(1_i64 << 31),
        "/spec/replicas",
    );
    broken(&|v| v["spec"]["components"] = json!([]), "/spec/components");
    broken(
        &|v| v["spec"]["components"] = json!("checkout"),
        "/spec/components",
    );
    broken(
        &|v| v["spec"]["runtimeConfig"]["loadFromSecrets"] = json!("x"),
        "loadFromSecrets",
    );
    broken(
        &|v| v["spec"]["variables"][1]["valueFrom"]["secretRef"] = json!({"name": "x"}),
        "secretRef",
    );
    broken(
        &|v| {
            v["spec"]["variables"][1]["valueFrom"]["secretKeyRef"]
                .as_object_mut()
                .unwrap()
                .remove("key");
        },
        "key",
    );
    broken(
        &|v| v["spec"]["enableAutoscaling"] = json!("yes"),
        "/spec/enableAutoscaling",
    );
    broken(
        &|v| v["spec"]["checks"]["readiness"]["httpGet"]["port"] = json!(80),
        "port",
    );
    broken(&|v| v["metadata"]["namepsace"] = json!("x"), "namepsace");
    broken(
        &|v| v["metadata"]["name"] = json!("Shop_Checkout"),
        "/metadata/name",
    );
    broken(&|v| v["kind"] = json!("SpinApps"), "/kind");
    broken(
        &|v| {
            v["spec"].as_object_mut().unwrap().remove("image");
        },
        "image",
    );
}

#[test]
fn spin_apps_pass_the_operators_admission_rules() {
    let objects = kubernetes_objects();
    let executors: Vec<&Value> = of_kind(&objects, "SpinAppExecutor")
        .into_iter()
        .map(|o| &o.value)
        .collect();
    for app in of_kind(&objects, "SpinApp") {
        let errors = admission_errors(&app.value, &executors);
        assert!(errors.is_empty(), "{}: {errors:?}", app.label());
        // An autoscaled SpinApp comes with its autoscaler, aimed at the Deployment the
        // operator names after it.
        if app.value["spec"]["enableAutoscaling"] == true {
            let aimed_at_it = objects.iter().any(|o| {
                o.file == app.file
                    && match o.kind() {
                        "HorizontalPodAutoscaler" => {
                            o.value["spec"]["scaleTargetRef"]
                                == json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": app.name()})
                        }
                        "ScaledObject" => o.value["spec"]["scaleTargetRef"]["name"] == app.name(),
                        _ => false,
                    }
            });
            assert!(aimed_at_it, "{}: no autoscaler for it", app.label());
        }
    }
    // The rules themselves refuse what the webhook refuses.
    let app = |spec: Value| json!({ "metadata": { "name": "a" }, "spec": spec });
    let shim = json!({ "metadata": { "name": "shim" }, "spec": { "createDeployment": true } });
    let no_deployments =
        json!({ "metadata": { "name": "bare" }, "spec": { "createDeployment": false } });
    let executors = [&shim, &no_deployments];
    assert!(
        admission_errors(&app(json!({"executor": "shim", "replicas": 1})), &executors).is_empty()
    );
    for spec in [
        json!({"replicas": 1}),
        json!({"executor": "nope", "replicas": 1}),
        json!({"executor": "shim"}),
        json!({"executor": "shim", "replicas": 0}),
        json!({"executor": "shim", "replicas": 2, "enableAutoscaling": true}),
        json!({"executor": "bare", "replicas": 1, "podAnnotations": {"a": "b"}}),
    ] {
        assert!(
            !admission_errors(&app(spec.clone()), &executors).is_empty(),
            "{spec} accepted"
        );
    }
}

#[test]
fn spin_apps_run_components_of_the_app_from_one_image() {
    let manifest = root_manifest();
    let objects = kubernetes_objects();
    let apps = of_kind(&objects, "SpinApp");
    let images: BTreeSet<&str> = apps
        .iter()
        .map(|a| a.value["spec"]["image"].as_str().unwrap())
        .collect();
    assert_eq!(images.len(), 1, "one app, one image: {images:?}");
    let image = images.into_iter().next().unwrap();
    // The image the docs push is the one the manifests run.
    assert!(
        deployment_doc().contains(&format!("spin registry push {image}")),
        "docs/deployment.md does not push {image}"
    );
    let http: BTreeSet<&str> = manifest
        .trigger
        .http
        .iter()
        .map(|t| t.component.as_str())
        .collect();
    let redis: BTreeSet<&str> = manifest
        .trigger
        .redis
        .iter()
        .map(|t| t.component.as_str())
        .collect();
    let mut deployed = BTreeSet::new();
    for app in &apps {
        let components: Vec<&str> = app.value["spec"]["components"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: runs every component", app.label()))
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        for id in &components {
            assert!(
                manifest.component.contains_key(*id),
                "{}: spin.toml has no component {id:?}",
                app.label()
            );
        }
        // Checkout and fulfilment scale differently: never in one SpinApp.
        let serves_http = components.iter().any(|c| http.contains(c));
        let subscribes = components.iter().any(|c| redis.contains(c));
        assert!(serves_http != subscribes, "{}: {components:?}", app.label());
        let role = app.value["metadata"]["labels"]["app.kubernetes.io/component"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(
            role,
            if serves_http {
                "checkout"
            } else {
                "fulfilment"
            }
        );
        deployed.extend(components);
    }
    assert!(deployed.contains("checkout") && deployed.contains("fulfilment"));
}

#[test]
fn spin_apps_set_only_variables_their_components_use_and_every_required_one() {
    let manifest = root_manifest();
    let objects = kubernetes_objects();
    let secrets = secrets(&objects);
    let runtime_text = &secrets["shop-runtime-config"]["runtime-config.toml"];
    for app in of_kind(&objects, "SpinApp") {
        let spec = &app.value["spec"];
        let components: Vec<&str> = spec["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let used = variables_used_by(&manifest, &components);
        let entries = spec["variables"].as_array().cloned().unwrap_or_default();
        let set: Vec<&str> = entries
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        let unique: BTreeSet<&str> = set.iter().copied().collect();
        assert_eq!(
            unique.len(),
            set.len(),
            "{}: a variable set twice",
            app.label()
        );
        for name in &set {
            assert!(
                manifest.variables.contains_key(*name),
                "{}: spin.toml declares no variable {name:?}",
                app.label()
            );
            assert!(
                used.contains(*name),
                "{}: {name:?} is not used by {components:?}",
                app.label()
            );
        }
        for name in &used {
            let decl = &manifest.variables[name];
            if decl.default.is_none() {
                assert!(
                    unique.contains(name.as_str()),
                    "{}: {name} required",
                    app.label()
                );
            }
            // Secrets come from Secrets, never from the manifest.
            if decl.secret {
                if let Some(entry) = entries.iter().find(|e| e["name"] == name.as_str()) {
                    assert!(
                        entry.get("value").is_none(),
                        "{}: secret {name} written in the manifest",
                        app.label()
                    );
                }
            }
        }
        // What the shim would load: the app with these variables (secrets from the
        // example Secrets), these components and the runtime config of the Secret.
        let variables: Vec<(String, String)> = entries
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_owned(), resolve(e, &secrets)))
            .collect();
        let ids: Vec<String> = components.iter().map(|c| c.to_string()).collect();
        let loaded = AppConfig::from_parts(
            &root_manifest_text(),
            &repo_root(),
            Some((RuntimeConfig::parse(runtime_text).unwrap(), repo_root())),
            &HashMap::new(),
            &Overrides {
                variables: &variables,
                environment: &[],
                component_ids: &ids,
                runtime_config: None,
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e:#}", app.label()));
        assert_eq!(
            loaded.components.keys().collect::<Vec<_>>(),
            components.iter().collect::<Vec<_>>()
        );
        let value_of = |name: &str| {
            variables
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let redis_address = value_of("redis_address").expect("redis_address set");
        // The store "default" is the Redis the events go through, so every SpinApp
        // shares one state whichever `store` it uses.
        match &loaded.key_value_stores["default"] {
            KeyValueStoreConfig::Redis { url } => assert_eq!(url, &redis_address),
            other => panic!("{}: {other:?}", app.label()),
        }
        // One subscriber per order shard, each on an address of its own: the same
        // server with a database number that pub/sub ignores.
        for subscription in loaded.redis_subscriptions.keys() {
            let shard = subscription
                .strip_prefix(&format!("{redis_address}/"))
                .unwrap_or_else(|| panic!("{}: subscribes at {subscription}", app.label()));
            assert!(shard.parse::<u32>().is_ok(), "{subscription}");
        }
        for component in loaded.components.values() {
            // Checkout publishes to Redis; on store = "redis" any component reads and
            // writes it: then it must be allowed to connect.
            let store = &component.variables["store"];
            assert!(["key-value", "redis"].contains(&store.as_str()), "{store}");
            if store == "redis" || component.id == "checkout" {
                assert!(
                    component.allowed_hosts.allows_url(&redis_address),
                    "{}: {} may not reach Redis",
                    app.label(),
                    component.id
                );
            }
        }
    }
}

#[test]
fn everything_the_cluster_manifests_call_exists_in_the_cluster() {
    let objects = kubernetes_objects();
    let services = service_addresses(&objects);
    let secrets = secrets(&objects);
    let apps = of_kind(&objects, "SpinApp");
    let checkout = apps
        .iter()
        .find(|a| a.file.ends_with("checkout.yaml"))
        .unwrap();
    let fulfilment = apps
        .iter()
        .find(|a| a.file.ends_with("fulfilment.yaml"))
        .unwrap();
    let variable = |app: &Object, name: &str| {
        app.value["spec"]["variables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{}: no {name}", app.label()))
    };
    let reachable = |url: &str, what: &str| {
        assert!(
            services.contains(&host_port(url)),
            "{what}: nothing answers {url} ({services:?})"
        );
    };
    reachable(
        &resolve(&variable(checkout, "redis_address"), &secrets),
        "redis_address",
    );
    reachable(
        &resolve(&variable(fulfilment, "mail_api_base_url"), &secrets),
        "mail API",
    );
    // Both sides read the same Redis from the same Secret key.
    assert_eq!(
        variable(checkout, "redis_address")["valueFrom"],
        variable(fulfilment, "redis_address")["valueFrom"]
    );
    assert_eq!(
        variable(checkout, "orders_channel")["value"],
        variable(fulfilment, "orders_channel")["value"]
    );

    // The redrive CronJob posts to checkout's Service with checkout's admin token.
    let cron = of_kind(&objects, "CronJob")[0];
    let container = &cron.value["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    let url = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|a| a.starts_with("http"))
        .unwrap();
    reachable(url, "redrive");
    assert!(url.starts_with(&format!(
        "http://{}.{}.svc.cluster.local/",
        checkout.name(),
        checkout.namespace()
    )));
    assert!(url.ends_with("/api/admin/redrive"), "{url}");
    let token = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ADMIN_TOKEN")
        .unwrap();
    assert_eq!(
        token["valueFrom"],
        variable(checkout, "admin_token")["valueFrom"]
    );
    resolve(token, &secrets);

    // Spin exports to the collector, the collector to Jaeger.
    let executor = of_kind(&objects, "SpinAppExecutor")[0];
    reachable(
        executor.value["spec"]["deploymentConfig"]["otel"]["exporter_otlp_endpoint"]
            .as_str()
            .unwrap(),
        "OTLP endpoint",
    );
    let collector = of_kind(&objects, "ConfigMap")
        .into_iter()
        .find(|c| c.name() == "otel-collector-config")
        .unwrap();
    let config =
        &parse_documents(collector.value["data"]["config.yaml"].as_str().unwrap()).unwrap()[0];
    let jaeger = config["exporters"]["otlp/jaeger"]["endpoint"]
        .as_str()
        .unwrap();
    assert!(services.contains(jaeger), "{jaeger}");
    assert_eq!(
        config["service"]["pipelines"]["traces"]["exporters"],
        json!(["otlp/jaeger"])
    );

    // Pods mount what exists: config maps, claims, the runtime-config Secret.
    for app in &apps {
        let name = app.value["spec"]["runtimeConfig"]["loadFromSecret"]
            .as_str()
            .unwrap();
        assert!(
            secrets
                .get(name)
                .is_some_and(|s| s.keys().eq(["runtime-config.toml"])),
            "{}: the operator wants Secret {name} with the one key runtime-config.toml",
            app.label()
        );
    }
    let claims: BTreeSet<&str> = of_kind(&objects, "PersistentVolumeClaim")
        .into_iter()
        .map(|c| c.name())
        .collect();
    let config_maps: BTreeSet<&str> = of_kind(&objects, "ConfigMap")
        .into_iter()
        .map(|c| c.name())
        .collect();
    for deployment in of_kind(&objects, "Deployment") {
        for volume in deployment.value["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
                assert!(claims.contains(claim), "{}: {claim}", deployment.label());
            }
            if let Some(map) = volume["configMap"]["name"].as_str() {
                assert!(config_maps.contains(map), "{}: {map}", deployment.label());
            }
        }
    }
}

/// `--variable name=value` names in the deploy commands of docs/deployment.md for
/// `command` (e.g. "spin aka deploy").
fn documented_variables(doc: &str, command: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_command = false;
    for line in doc.lines() {
        let line = line.trim();
        if line.contains(command) {
            in_command = true;
        }
        if in_command {
            let mut words = line.split_whitespace();
            while let Some(word) = words.next() {
                if word == "--variable" {
                    if let Some(name) = words.next().and_then(|a| a.split('=').next()) {
                        names.insert(name.trim_matches(['"', '\'']).to_owned());
                    }
                }
            }
            if !line.ends_with('\\') {
                in_command = false;
            }
        }
    }
    names
}

#[test]
fn the_managed_manifest_runs_checkout_alone_on_outbound_redis() {
    let path = managed_manifest_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let dir = path.parent().unwrap();
    let address = "rediss://default:secret@redis.example.com:6380";
    let variables = [
        ("redis_address".to_owned(), address.to_owned()),
        (
            "redis_host".to_owned(),
            "rediss://redis.example.com:6380".to_owned(),
        ),
        ("admin_token".to_owned(), "t".to_owned()),
    ];
    let load = |variables: &[(String, String)]| {
        AppConfig::from_parts(
            &text,
            dir,
            None,
            &HashMap::new(),
            &Overrides {
                variables,
                environment: &[],
                component_ids: &[],
                runtime_config: None,
            },
        )
    };
    let app = load(&variables).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(app.components.keys().collect::<Vec<_>>(), ["checkout"]);
    assert!(app.redis_subscriptions.is_empty(), "a Redis trigger");
    assert!(app.key_value_stores.is_empty(), "needs a runtime config");
    assert_eq!(app.http_routes.len(), 1);
    let checkout = &app.components["checkout"];
    assert_eq!(checkout.variables["store"], "redis");
    assert_eq!(checkout.variables["redis_address"], address);
    assert!(checkout.key_value_stores.is_empty());
    assert!(checkout.allowed_hosts.allows_url(address));
    assert!(!checkout.allowed_hosts.allows_url("https://api.resend.com"));
    // The plain build, which imports nothing of wasi:otel.
    assert_eq!(
        normalise(&checkout.source),
        normalise(&repo_root().join("target/wasm32-wasip2/release/plain/checkout.wasm"))
    );
    // Its secrets have no default: a deploy without them fails, naming them.
    for missing in ["redis_address", "redis_host", "admin_token"] {
        let rest: Vec<_> = variables
            .iter()
            .filter(|(n, _)| n != missing)
            .cloned()
            .collect();
        let err = format!("{:#}", load(&rest).unwrap_err());
        assert!(err.contains(missing), "{err}");
    }

    // The same checkout configuration as in spin.toml, with the store fixed to Redis.
    let managed = Manifest::parse(&text).unwrap();
    let root = root_manifest();
    let names = |m: &Manifest| -> BTreeSet<String> {
        m.component["checkout"].variables.keys().cloned().collect()
    };
    assert_eq!(names(&managed), names(&root));
    // It declares exactly the variables checkout uses, and marks the same secrets.
    let used = variables_used_by(&managed, &["checkout"]);
    let declared: BTreeSet<String> = managed.variables.keys().cloned().collect();
    assert_eq!(declared, used);
    for (name, decl) in &managed.variables {
        let secret_in_root = root.variables.get(name).is_some_and(|r| r.secret);
        assert!(decl.secret || !secret_in_root, "{name} is a secret");
    }
    // Spin's allowed_outbound_hosts take scheme://host:port only: the password-bearing
    // URL cannot be one, so the host is its own variable.
    assert_eq!(
        managed.component["checkout"].allowed_outbound_hosts,
        ["{{ redis_host }}"]
    );
    assert!(!checkout
        .allowed_hosts
        .allows_url("rediss://elsewhere.example.com:6380"));
    // The hosted Redis's URL carries its password.
    assert!(managed.variables["redis_address"].secret);

    // The deploy commands in the docs set every required variable and nothing else.
    let required: BTreeSet<String> = managed
        .variables
        .iter()
        .filter(|(_, d)| d.default.is_none())
        .map(|(n, _)| n.clone())
        .collect();
    let doc = deployment_doc();
    for command in ["spin aka deploy", "spin cloud deploy"] {
        let set = documented_variables(&doc, command);
        assert!(set.is_superset(&required), "{command}: {set:?}");
        assert!(set.is_subset(&declared), "{command}: {set:?}");
    }
}

/// `path` with `..` resolved (the file need not exist).
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn the_schema_conversion_closes_objects_but_not_maps_or_preserved_ones() {
    let mut schema = json!({
        "type": "object",
        "description": "d",
        "properties": {
            "description": { "type": "string" },
            "labels": { "type": "object", "additionalProperties": { "type": "string" } },
            "free": { "type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": { "a": {} } },
            "n": { "type": "integer", "format": "int32" }
        }
    });
    close_objects(&mut schema);
    assert_eq!(schema["additionalProperties"], false);
    assert!(schema.get("description").is_none());
    assert!(
        schema["properties"]["description"].is_object(),
        "a property, kept"
    );
    assert_eq!(
        schema["properties"]["labels"]["additionalProperties"]["type"],
        "string"
    );
    assert!(schema["properties"]["free"]
        .get("additionalProperties")
        .is_none());
    assert_eq!(schema["properties"]["n"]["maximum"], i32::MAX);
}
