//! `pace-node gateway plan` as the node binary runs it (through clap and
//! [`execute`]): the JSON shape scripts rely on, `--ids FILE` parsing, and the
//! ring properties the plan reports (determinism, minimal movement, spread).

use clap::Parser;
use serde_json::Value;

use pace_gateway::{GatewayCommand, GatewayError, Ring, execute};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    gateway: GatewayCommand,
}

fn run(args: &[&str]) -> Result<String, GatewayError> {
    let cli = Cli::try_parse_from(std::iter::once("gateway").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("clap refused {args:?}: {e}"));
    let mut out = Vec::new();
    execute(&cli.gateway, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

const THREE: [&str; 6] = [
    "--node",
    "127.0.0.1:8081",
    "--node",
    "127.0.0.1:8082",
    "--node",
    "127.0.0.1:8083",
];

fn plan_json(extra: &[&str]) -> Value {
    let mut args = vec!["plan"];
    args.extend(THREE);
    args.extend(extra);
    args.push("--json");
    serde_json::from_str(&run(&args).unwrap()).unwrap()
}

#[test]
fn json_has_counts_per_node_and_movement_figures() {
    let plan = plan_json(&["--devices", "3000", "--add", "127.0.0.1:8084"]);
    let nodes = plan["nodes"].as_object().unwrap();
    assert_eq!(nodes.len(), 3);
    let total: u64 = nodes.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, 3000);
    assert_eq!(plan["devices"], 3000);
    assert_eq!(plan["slots"], 10_000);
    for count in nodes.values() {
        assert!(
            count.as_u64().unwrap() <= 1_200,
            "a node holds more than 40%: {nodes:?}"
        );
    }

    let removals = plan["removals"].as_array().unwrap();
    assert_eq!(removals.len(), 3);
    for r in removals {
        let node = r["node"].as_str().unwrap();
        let on_node = r["devices_on_node"].as_u64().unwrap();
        assert_eq!(on_node, nodes[node].as_u64().unwrap());
        assert!(r["moved"].as_u64().unwrap() >= on_node);
        assert!(r["fraction"].as_f64().unwrap() > 0.0 && r["fraction"].as_f64().unwrap() < 0.5);
        assert!(r["only_removed_node_moved"].is_boolean());
        assert_eq!(
            r["moved_if_unhealthy"].as_u64().unwrap(),
            on_node,
            "health-check removal moves only that node's devices"
        );
    }
    let add = &plan["addition"];
    assert_eq!(add["node"], "127.0.0.1:8084");
    assert!(add["moved_to_added_node"].as_u64().unwrap() > 0);
    assert_eq!(
        add["moved"].as_u64().unwrap(),
        add["moved_to_added_node"].as_u64().unwrap()
            + add["moved_between_existing"].as_u64().unwrap()
    );
    assert!(plan["no_device_id_node"].is_string());
}

#[test]
fn plan_is_deterministic() {
    assert_eq!(
        plan_json(&["--devices", "500"]),
        plan_json(&["--devices", "500"])
    );
    let mut reversed = vec![
        "plan",
        "--node",
        "127.0.0.1:8083",
        "--node",
        "127.0.0.1:8082",
        "--node",
        "127.0.0.1:8081",
    ];
    reversed.extend(["--devices", "500", "--json"]);
    let reversed: Value = serde_json::from_str(&run(&reversed).unwrap()).unwrap();
    assert_eq!(
        reversed["nodes"],
        plan_json(&["--devices", "500"])["nodes"],
        "node order must not matter"
    );
}

#[test]
fn ids_file_is_read_one_id_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ids.txt");
    std::fs::write(
        &path,
        "alpha\r\n\n  beta  \ngamma\n3f2c9a1e-8b7d-4c6e-9f0a-0123456789ab\n",
    )
    .unwrap();
    let path_str = path.to_str().unwrap();
    let plan = plan_json(&["--ids", path_str]);
    assert_eq!(plan["devices"], 4);

    // Same answer as asking the ring directly for those ids.
    let ring = Ring::new(
        &[
            ("127.0.0.1:8081", 100),
            ("127.0.0.1:8082", 100),
            ("127.0.0.1:8083", 100),
        ],
        10_000,
    )
    .unwrap();
    let mut want = std::collections::BTreeMap::<String, u64>::new();
    for id in [
        "alpha",
        "beta",
        "gamma",
        "3f2c9a1e-8b7d-4c6e-9f0a-0123456789ab",
    ] {
        *want.entry(ring.get(id).unwrap().to_owned()).or_default() += 1;
    }
    for (node, count) in plan["nodes"].as_object().unwrap() {
        assert_eq!(
            count.as_u64().unwrap(),
            want.get(node).copied().unwrap_or(0),
            "{node}"
        );
    }

    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let mut args = vec!["plan"];
    args.extend(THREE);
    args.extend(["--ids", empty.to_str().unwrap()]);
    assert!(matches!(run(&args), Err(GatewayError::NoIds(_))));
    let missing = dir.path().join("missing.txt");
    let mut args = vec!["plan"];
    args.extend(THREE);
    args.extend(["--ids", missing.to_str().unwrap()]);
    assert!(matches!(run(&args), Err(GatewayError::ReadIds { .. })));
}

#[test]
fn table_output_is_human_readable() {
    let mut args = vec!["plan"];
    args.extend(THREE);
    args.extend(["--devices", "3000", "--add", "127.0.0.1:8084"]);
    let table = run(&args).unwrap();
    assert!(table.contains("3000 devices over 3 nodes"), "{table}");
    assert!(table.contains("Losing one node"), "{table}");
    assert!(table.contains("Adding 127.0.0.1:8084"), "{table}");
    assert!(table.contains('%'));
}

#[test]
fn removing_a_node_moves_only_its_devices_when_weights_are_equal() {
    let full = Ring::new(
        &[
            ("127.0.0.1:8081", 100),
            ("127.0.0.1:8082", 100),
            ("127.0.0.1:8083", 100),
        ],
        10_000,
    )
    .unwrap();
    let without = Ring::new(&[("127.0.0.1:8081", 100), ("127.0.0.1:8083", 100)], 10_000).unwrap();
    let mut bystanders_moved = 0;
    for n in 1..=3_000 {
        let id = format!("device-{n}");
        let before = full.get(&id).unwrap();
        let after = without.get(&id).unwrap();
        if before != "127.0.0.1:8082" && before != after {
            bystanders_moved += 1;
        }
    }
    // Equal weights keep 160 points per survivor; only a collision the
    // removed node had won can shift a survivor's point.
    assert!(
        bystanders_moved <= 30,
        "{bystanders_moved} devices of surviving nodes moved"
    );
}
