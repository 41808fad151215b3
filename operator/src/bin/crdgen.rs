//! Prints the GeoCache CustomResourceDefinition as YAML:
//! `cargo run -p geocache-operator --bin crdgen > crds/geocache.yaml`.

fn main() -> anyhow::Result<()> {
    print!("{}", geocache_operator::crd::crd_yaml()?);
    Ok(())
}
