//! The CRD as the API server sees it: the checked-in YAML is what the types generate, every
//! CEL rule compiles, the examples pass the rules (evaluated by a CEL interpreter, with the
//! schema's defaults applied first, as admission does), and bad objects are refused by both
//! the CEL rules and the operator's own `validate` with the same complaint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test: failing loudly is its job

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use geocache_operator::crd::{GeoCache, crd, crd_yaml};
use geocache_operator::validate::validate;
use kube_cel::{CompiledSchema, Validator, compile_schema};
use serde_json::{Value, json};

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn schema() -> Value {
    let crd = crd();
    let schema = crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema).expect("schema serializes")
}

fn read_example(name: &str) -> Result<Value> {
    let path = repo_file(&format!("examples/{name}"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The CEL rules' complaints about `object` (empty when it passes).
fn cel_errors(object: &Value) -> Vec<String> {
    match Validator::new().validate(&schema(), object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn rust_errors(object: &Value) -> Vec<String> {
    match serde_json::from_value::<GeoCache>(object.clone()) {
        Ok(gc) => validate(&gc).err().map(|e| e.problems).unwrap_or_default(),
        Err(e) => vec![format!("does not parse: {e}")],
    }
}

fn collect_compilation_errors(node: &CompiledSchema, path: &str, out: &mut Vec<String>) {
    out.extend(node.compilation_errors().iter().map(|e| format!("{path}: {e}")));
    for (name, child) in &node.properties {
        collect_compilation_errors(child, &format!("{path}.{name}"), out);
    }
    if let Some(items) = &node.items {
        collect_compilation_errors(items, &format!("{path}[]"), out);
    }
    if let Some(values) = &node.additional_properties {
        collect_compilation_errors(values, &format!("{path}{{}}"), out);
    }
}

/// Fails on a key of `raw` that the typed object dropped: a misspelt field in an example
/// would be pruned silently by the API server.
fn assert_no_unknown_fields(raw: &Value, typed: &Value, path: &str) {
    match (raw, typed) {
        (Value::Object(r), Value::Object(t)) => {
            for (key, value) in r {
                let Some(typed_value) = t.get(key) else { panic!("{path}.{key} is not a field of GeoCache") };
                assert_no_unknown_fields(value, typed_value, &format!("{path}.{key}"));
            }
        }
        (Value::Array(r), Value::Array(t)) => {
            for (i, (rv, tv)) in r.iter().zip(t).enumerate() {
                assert_no_unknown_fields(rv, tv, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

fn minimal() -> Value {
    json!({
        "apiVersion": "geocache.dev/v1alpha1",
        "kind": "GeoCache",
        "metadata": {"name": "cache", "namespace": "default"},
        "spec": {"image": "geocache/node:0.1.0", "regions": [{"name": "eu"}]}
    })
}

#[test]
fn the_checked_in_crd_is_what_the_types_generate() -> Result<()> {
    let path = repo_file("crds/geocache.yaml");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = crd_yaml()?;
    assert!(
        checked_in == generated,
        "crds/geocache.yaml is stale; regenerate it with \
         `cargo run -p geocache-operator --bin crdgen > crds/geocache.yaml` (then copy it into the chart: \
         `cp crds/geocache.yaml charts/geocache-operator/files/crd.yaml`)"
    );
    Ok(())
}

#[test]
fn the_chart_ships_the_same_crd() -> Result<()> {
    let chart = std::fs::read_to_string(repo_file("charts/geocache-operator/files/crd.yaml")).unwrap_or_default();
    assert!(
        chart == crd_yaml()?,
        "charts/geocache-operator/files/crd.yaml differs from the generated CRD; run \
         `cargo run -p geocache-operator --bin crdgen > crds/geocache.yaml && \
         cp crds/geocache.yaml charts/geocache-operator/files/crd.yaml`"
    );
    Ok(())
}

#[test]
fn every_cel_rule_of_the_crd_compiles() {
    let mut errors = Vec::new();
    collect_compilation_errors(&compile_schema(&schema()), "", &mut errors);
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn the_crd_has_the_names_columns_and_status_subresource_of_the_design() {
    let crd = crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("geocaches.geocache.dev"));
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["gc".to_string()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
    let columns: Vec<(String, i32)> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.to_uppercase(), c.priority.unwrap_or(0)))
        .collect();
    let shown = |priority: i32| -> Vec<&str> {
        columns.iter().filter(|(_, p)| *p <= priority).map(|(n, _)| n.as_str()).collect()
    };
    // `kubectl get geocaches`, then `-o wide` with each region's state.
    assert_eq!(shown(0), ["READY", "REGIONS", "MAX-LAG", "DEGRADED", "AGE"]);
    assert_eq!(shown(1), ["READY", "REGIONS", "MAX-LAG", "DEGRADED", "REASON", "DETAIL", "AGE"]);
}

#[test]
fn the_examples_pass_the_crd_rules_and_the_operators_validation() -> Result<()> {
    for name in ["geocache.yaml", "geocache-multicluster.yaml"] {
        let raw = read_example(name)?;
        assert_eq!(cel_errors(&raw), Vec::<String>::new(), "{name}: CEL rules");
        let gc: GeoCache = serde_json::from_value(raw.clone()).with_context(|| format!("{name} is not a GeoCache"))?;
        assert_no_unknown_fields(&raw, &serde_json::to_value(&gc)?, name);
        let plan = validate(&gc).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        assert!(!plan.regions.is_empty());
    }
    Ok(())
}

#[test]
fn the_single_cluster_example_has_two_regions_in_one_cluster() -> Result<()> {
    let gc: GeoCache = serde_json::from_value(read_example("geocache.yaml")?)?;
    assert_eq!(gc.spec.regions.len(), 2);
    assert!(gc.spec.regions.iter().all(|r| r.cluster.is_none()));
    Ok(())
}

#[test]
fn the_multicluster_example_has_three_regions_in_three_clusters() -> Result<()> {
    let gc: GeoCache = serde_json::from_value(read_example("geocache-multicluster.yaml")?)?;
    let clusters: std::collections::BTreeSet<_> = gc.spec.regions.iter().map(|r| r.cluster.clone()).collect();
    assert_eq!(gc.spec.regions.len(), 3);
    assert_eq!(clusters.len(), 3);
    Ok(())
}

#[test]
fn only_the_regions_are_required_and_the_node_image_defaults_to_the_operator_s_release() -> Result<()> {
    let crd = crd();
    let schema = crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref());
    let spec = schema.and_then(|s| s.properties.as_ref()).and_then(|p| p.get("spec")).context("spec schema")?;
    assert_eq!(spec.required.clone().unwrap_or_default(), ["regions"]);
    let image = spec.properties.as_ref().and_then(|p| p.get("image")).context("image schema")?;
    let expected = format!("ghcr.io/geocache/geocache-node:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(image.default.as_ref().map(|d| d.0.clone()), Some(json!(expected)));
    let mut object = minimal();
    object["spec"].as_object_mut().context("spec")?.remove("image");
    let gc: GeoCache = serde_json::from_value(object)?;
    assert_eq!(gc.spec.image, expected);
    assert!(validate(&gc).is_ok());
    Ok(())
}

#[test]
fn a_minimal_object_passes_once_defaulted() {
    assert_eq!(cel_errors(&minimal()), Vec::<String>::new());
    assert_eq!(rust_errors(&minimal()), Vec::<String>::new());
}

/// Each case: a change to the minimal object, and a phrase both the CEL message and the
/// operator's own validation must contain.
#[test]
fn bad_objects_are_refused_by_the_api_server_rules_and_by_the_operator_alike() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("duplicate regions", json!({"regions": [{"name": "eu"}, {"name": "eu"}]}), "must be unique"),
        ("upper-case region", json!({"regions": [{"name": "EU"}]}), "DNS label"),
        ("underscore region", json!({"regions": [{"name": "eu_west"}]}), "DNS label"),
        ("negative replicas", json!({"regions": [{"name": "eu", "replicas": -1}]}), "replicas must be 0 or more"),
        ("empty image", json!({"image": ""}), "image must not be empty"),
        ("endpoint without port", json!({"regions": [{"name": "eu", "endpoint": "eu.example.com"}]}), "endpoint"),
        ("ttl without unit", json!({"defaultTtl": "1 hour"}), "defaultTtl"),
        ("retention without unit", json!({"tombstoneRetention": "1 day"}), "tombstoneRetention"),
        ("unknown size unit", json!({"maxMemory": "512 parsecs"}), "maxMemory"),
        ("bad memory request", json!({"resources": {"requests": {"memory": "10zz"}}}), "must be a quantity"),
        ("bad cpu limit", json!({"resources": {"limits": {"cpu": "two"}}}), "must be a quantity"),
        (
            "bad region memory limit",
            json!({"regions": [{"name": "eu", "resources": {"limits": {"memory": "1Gb"}}}]}),
            "must be a quantity",
        ),
        ("bad volume size", json!({"persistence": {"enabled": true, "size": "big"}}), "persistence.size"),
        ("pod label the operator owns", json!({"podLabels": {"geocache.dev/region": "x"}}), "podLabels must not set"),
        (
            "bad priority class",
            json!({"regions": [{"name": "eu", "priorityClassName": "High_Priority"}]}),
            "must be the name of a PriorityClass",
        ),
        (
            "zero skew",
            json!({"topologySpreadConstraints": [{"maxSkew": 0, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}]}),
            "maxSkew must be 1 or more",
        ),
        (
            "bad region volume size",
            json!({"regions": [{"name": "eu", "storage": {"size": "10 gigs"}}]}),
            "storage.size",
        ),
    ];
    for (what, change, phrase) in cases {
        let mut object = minimal();
        if let (Some(spec), Some(change)) = (object["spec"].as_object_mut(), change.as_object()) {
            spec.extend(change.clone());
        }
        let cel = cel_errors(&object);
        assert!(cel.iter().any(|m| m.contains(phrase)), "{what}: CEL said {cel:?}, wanted {phrase:?}");
        let rust = rust_errors(&object);
        assert!(rust.iter().any(|m| m.contains(phrase)), "{what}: validate said {rust:?}, wanted {phrase:?}");
    }
}

#[test]
fn names_too_long_for_derived_object_names_are_refused_at_the_root() {
    let mut object = minimal();
    object["metadata"]["name"] = json!("a".repeat(30));
    object["spec"]["regions"] = json!([{"name": "b".repeat(25)}]);
    let cel = cel_errors(&object);
    assert!(cel.iter().any(|m| m.contains("at most 50 characters")), "{cel:?}");
    assert!(rust_errors(&object).iter().any(|m| m.contains("at most 50")));
}

/// Finds CEL rules whose estimated cost the API server cannot bound: a rule under a list or
/// map without `maxItems`/`maxProperties`, or on a string without `maxLength`. A real
/// kube-apiserver refuses such a CRD ("estimated rule cost total ... exceeds budget"), which is
/// what happened to the first version of this CRD.
fn unbounded_rules(node: &Value, path: &str, unbounded: Option<&str>, out: &mut Vec<String>) {
    let has_rules = node.get("x-kubernetes-validations").and_then(Value::as_array).is_some_and(|r| !r.is_empty());
    if has_rules {
        if let Some(list) = unbounded {
            out.push(format!("{path}: a rule under the unbounded list or map {list}"));
        }
        if node.get("type") == Some(&json!("string")) && node.get("maxLength").is_none() {
            out.push(format!("{path}: a rule on a string without maxLength"));
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            unbounded_rules(child, &format!("{path}.{name}"), unbounded, out);
        }
    }
    if let Some(items) = node.get("items") {
        let here = if node.get("maxItems").is_none() { Some(path) } else { unbounded };
        unbounded_rules(items, &format!("{path}[]"), here, out);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        let here = if node.get("maxProperties").is_none() { Some(path) } else { unbounded };
        unbounded_rules(values, &format!("{path}{{}}"), here, out);
    }
}

#[test]
fn every_cel_rule_has_a_bounded_cost_so_a_real_api_server_accepts_the_crd() {
    let mut problems = Vec::new();
    unbounded_rules(&schema(), "", None, &mut problems);
    assert!(problems.is_empty(), "CEL rules the API server cannot bound:\n{}", problems.join("\n"));
}

#[test]
fn the_status_carries_no_rules_and_bounds_its_lists() {
    let status = schema()["properties"]["status"].clone();
    let text = status.to_string();
    assert!(!text.contains("x-kubernetes-validations"), "rules in the status only cost CEL budget");
    for list in ["regions", "conditions", "memberClusters"] {
        assert!(status["properties"][list]["maxItems"].is_number(), "status.{list} has no maxItems");
    }
}
