//! `configs/single.toml` is the reference of the broker configuration: it
//! parses, every value in it is the built-in default, and it names every
//! field.

use std::collections::BTreeSet;
use std::path::Path;

use shardmq_engine::config::Config;

fn single_toml() -> (String, std::path::PathBuf) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/single.toml");
    (
        std::fs::read_to_string(&path).expect("configs/single.toml"),
        path,
    )
}

#[test]
fn single_toml_holds_exactly_the_defaults() {
    let (text, path) = single_toml();
    let config = Config::from_toml(&text, &path).expect("parses");
    assert_eq!(config, Config::default());
    config.validate().expect("the defaults are valid");
}

/// Every `section.key` of a TOML table.
fn keys(table: &toml::Table) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (section, value) in table {
        match value.as_table() {
            Some(inner) => out.extend(inner.keys().map(|key| format!("{section}.{key}"))),
            None => {
                out.insert(section.clone());
            }
        }
    }
    out
}

#[test]
fn single_toml_documents_every_field() {
    let (text, _) = single_toml();
    let file: toml::Table = toml::from_str(&text).expect("parses as TOML");
    let defaults: toml::Table =
        toml::Table::try_from(Config::default()).expect("the default serialises");
    assert_eq!(keys(&file), keys(&defaults));
}

#[test]
fn the_three_broker_configs_are_valid_and_differ_only_where_they_must() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/cluster-3");
    let mut configs = Vec::new();
    for n in 1..=3 {
        let path = dir.join(format!("broker-{n}.toml"));
        let text = std::fs::read_to_string(&path).expect("the config file");
        let config = Config::from_toml(&text, &path).expect("parses");
        config.validate().expect("valid");
        assert_eq!(config.broker.node_id, n);
        assert_eq!(config.cluster.peers.len(), 3);
        assert_eq!(config.cluster.voters(n), vec![1, 2, 3]);
        configs.push(config);
    }
    for c in &configs[1..] {
        assert_eq!(
            c.cluster, configs[0].cluster,
            "[cluster] is the same everywhere"
        );
    }
    let mut ports: Vec<u16> = configs
        .iter()
        .flat_map(|c| {
            [
                c.broker.listen.port(),
                c.broker.shard_port_base,
                c.monitoring.metrics_listen.port(),
            ]
        })
        .chain(configs[0].cluster.peers.iter().map(|p| p.addr.port()))
        .collect();
    let n = ports.len();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), n, "every port distinct");
}
