//! Capacity planning on Kong's ring: how a set of device ids spreads over the
//! nodes, and how many devices change node when one node is removed (target
//! deleted, ring rebuilt), fails its health check (ring kept, node skipped) or
//! is added. Answers "what happens if we scale out now" before IT touches Kong.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::{GatewayError, Node, Ring, Topology};

/// What Kong would do with these devices on this cluster.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Effective ring size (Kong raises slots below 1000 to 1000).
    pub slots: u32,
    /// Number of device ids planned.
    pub devices: usize,
    /// Devices per node (`HOST:PORT` → count).
    pub nodes: BTreeMap<String, usize>,
    /// Ring slots held by each node.
    pub points: BTreeMap<String, u32>,
    /// Where Kong sends requests carrying no device id at all (it hashes the
    /// empty string): all of them land on this one node, which refuses them.
    pub no_device_id_node: Option<String>,
    /// One entry per node: the effect of losing it.
    pub removals: Vec<Removal>,
    /// The effect of adding `--add`, if given.
    pub addition: Option<Addition>,
}

/// Effect of losing one node.
#[derive(Debug, Clone, Serialize)]
pub struct Removal {
    /// The node removed.
    pub node: String,
    /// Devices it held.
    pub devices_on_node: usize,
    /// Target deleted from Kong (ring rebuilt): devices whose node changed.
    pub moved: usize,
    /// `moved / devices`.
    pub fraction: f64,
    /// Devices of *other* nodes that changed node too (ring collisions or
    /// re-proportioned weights); 0 means only the removed node's devices moved.
    pub moved_from_other_nodes: usize,
    /// True when only the removed node's devices moved.
    pub only_removed_node_moved: bool,
    /// Node marked unhealthy instead (ring kept, its slots skipped): devices
    /// whose node changed. Always exactly `devices_on_node`.
    pub moved_if_unhealthy: usize,
}

/// Effect of adding one node.
#[derive(Debug, Clone, Serialize)]
pub struct Addition {
    /// The node added.
    pub node: String,
    /// Devices whose node changed.
    pub moved: usize,
    /// `moved / devices`.
    pub fraction: f64,
    /// Devices that moved onto the new node.
    pub moved_to_added_node: usize,
    /// Devices that moved between existing nodes.
    pub moved_between_existing: usize,
    /// True when every device that moved went to the new node.
    pub only_to_added_node: bool,
}

/// `device-1` … `device-N`, the ids `--devices N` plans for.
pub fn numbered_device_ids(count: usize) -> Vec<String> {
    (1..=count).map(|n| format!("device-{n}")).collect()
}

/// Reads device ids, one per line. Surrounding whitespace (and `\r`) is
/// trimmed, as nginx trims header values; blank lines are skipped.
pub fn read_device_ids(path: &Path) -> Result<Vec<String>, GatewayError> {
    let text = std::fs::read_to_string(path).map_err(|source| GatewayError::ReadIds {
        path: path.to_owned(),
        source,
    })?;
    let ids = parse_device_ids(&text);
    if ids.is_empty() {
        return Err(GatewayError::NoIds(path.to_owned()));
    }
    Ok(ids)
}

/// The parsing half of [`read_device_ids`].
pub fn parse_device_ids(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Computes the plan for `ids` on `topology` (and `add`, if given).
pub fn plan(
    topology: &Topology,
    slots: u32,
    ids: &[String],
    add: Option<&Node>,
) -> Result<Plan, GatewayError> {
    let ring = Ring::from_topology(topology, slots)?;
    let assigned = assign(&ring, ids);
    let total = ids.len();
    let fraction = |n: usize| {
        if total == 0 {
            0.0
        } else {
            n as f64 / total as f64
        }
    };

    let mut nodes: BTreeMap<String, usize> =
        topology.nodes().iter().map(|n| (n.address(), 0)).collect();
    for node in assigned.iter().flatten() {
        *nodes.entry((*node).to_owned()).or_default() += 1;
    }
    let points = ring
        .targets()
        .map(|(a, _, held)| (a.to_owned(), held))
        .collect();

    let mut removals = Vec::new();
    for (index, node) in topology.nodes().iter().enumerate() {
        let Some(smaller) = topology.without(index) else {
            continue;
        };
        let address = node.address();
        let rebuilt = Ring::from_topology(&smaller, slots)?;
        let after = assign(&rebuilt, ids);
        let mut unhealthy = ring.clone();
        unhealthy.set_available(&address, false);
        let after_unhealthy = assign(&unhealthy, ids);

        let mut moved = 0;
        let mut moved_from_other_nodes = 0;
        let mut moved_if_unhealthy = 0;
        for ((before, now), now_unhealthy) in assigned.iter().zip(&after).zip(&after_unhealthy) {
            if before != now {
                moved += 1;
                if *before != Some(address.as_str()) {
                    moved_from_other_nodes += 1;
                }
            }
            if before != now_unhealthy {
                moved_if_unhealthy += 1;
            }
        }
        removals.push(Removal {
            devices_on_node: nodes.get(&address).copied().unwrap_or(0),
            node: address,
            moved,
            fraction: fraction(moved),
            moved_from_other_nodes,
            only_removed_node_moved: moved_from_other_nodes == 0,
            moved_if_unhealthy,
        });
    }

    let addition = match add {
        None => None,
        Some(node) => {
            let bigger = topology.with_node(node.clone())?;
            let bigger_ring = Ring::from_topology(&bigger, slots)?;
            let after = assign(&bigger_ring, ids);
            let address = node.address();
            let (mut moved, mut to_new) = (0, 0);
            for (before, now) in assigned.iter().zip(&after) {
                if before != now {
                    moved += 1;
                    if *now == Some(address.as_str()) {
                        to_new += 1;
                    }
                }
            }
            Some(Addition {
                node: address,
                moved,
                fraction: fraction(moved),
                moved_to_added_node: to_new,
                moved_between_existing: moved - to_new,
                only_to_added_node: moved == to_new,
            })
        }
    };

    Ok(Plan {
        slots: ring.points(),
        devices: total,
        nodes,
        points,
        no_device_id_node: ring.get("").map(str::to_owned),
        removals,
        addition,
    })
}

fn assign<'r>(ring: &'r Ring, ids: &[String]) -> Vec<Option<&'r str>> {
    ids.iter().map(|id| ring.get(id)).collect()
}

impl Plan {
    /// Pretty JSON, for scripts and the load-test tool.
    pub fn to_json(&self) -> Result<String, GatewayError> {
        serde_json::to_string_pretty(self).map_err(|e| GatewayError::Serialise {
            what: "plan",
            message: e.to_string(),
        })
    }

    /// The human-readable report.
    pub fn to_table(&self) -> String {
        let pct = |n: usize| {
            if self.devices == 0 {
                0.0
            } else {
                100.0 * n as f64 / self.devices as f64
            }
        };
        let width = self.nodes.keys().map(String::len).max().unwrap_or(4).max(4);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Kong consistent-hashing ring: {} slots, {} devices over {} nodes",
            self.slots,
            self.devices,
            self.nodes.len()
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<width$}  {:>6}  {:>8}  {:>6}",
            "node", "points", "devices", "share"
        );
        for (node, count) in &self.nodes {
            let held = self.points.get(node).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "{node:<width$}  {held:>6}  {count:>8}  {:>5.1}%",
                pct(*count)
            );
        }
        if let Some(node) = &self.no_device_id_node {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "Requests without a device id all hash to {node} (the node answers 400)."
            );
        }
        if !self.removals.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "Losing one node (target deleted, ring rebuilt | node unhealthy, ring kept):"
            );
            for r in &self.removals {
                let others = if r.only_removed_node_moved {
                    "only its devices moved".to_owned()
                } else {
                    format!(
                        "{} devices of other nodes moved too",
                        r.moved_from_other_nodes
                    )
                };
                let _ = writeln!(
                    out,
                    "  - {:<width$}  {:>8} moved ({:>5.1}%), {others} | {} moved",
                    r.node,
                    r.moved,
                    pct(r.moved),
                    r.moved_if_unhealthy
                );
            }
        }
        if let Some(a) = &self.addition {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "Adding {}: {} moved ({:.1}%), {} to the new node, {} between existing nodes{}",
                a.node,
                a.moved,
                pct(a.moved),
                a.moved_to_added_node,
                a.moved_between_existing,
                if a.only_to_added_node {
                    " (only to the new node)"
                } else {
                    ""
                }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(n: u16) -> Topology {
        let nodes: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", 8081 + i)).collect();
        Topology::from_args(&nodes, None).unwrap()
    }

    #[test]
    fn three_equal_nodes_share_3000_devices_evenly() {
        let p = plan(&topo(3), 10_000, &numbered_device_ids(3_000), None).unwrap();
        assert_eq!(p.nodes.values().sum::<usize>(), 3_000);
        for (node, count) in &p.nodes {
            assert!(*count <= 1_200, "{node} got {count} of 3000 (> 40%)");
        }
    }

    #[test]
    fn removal_and_addition_movement_is_bounded() {
        let add = Node::parse("127.0.0.1:8084").unwrap();
        let p = plan(&topo(3), 10_000, &numbered_device_ids(3_000), Some(&add)).unwrap();
        assert_eq!(p.removals.len(), 3);
        for r in &p.removals {
            assert_eq!(r.moved_if_unhealthy, r.devices_on_node);
            assert!(r.moved >= r.devices_on_node);
            assert_eq!(r.moved, r.devices_on_node + r.moved_from_other_nodes);
            assert!(
                r.moved_from_other_nodes * 100 <= 3_000,
                "rebuild moved too many bystanders"
            );
        }
        let a = p.addition.unwrap();
        assert!(a.moved_to_added_node > 0);
        assert!(
            a.fraction < 0.4,
            "adding a 4th node moved {:.0}%",
            a.fraction * 100.0
        );
    }

    #[test]
    fn id_files_are_trimmed_and_blank_lines_skipped() {
        assert_eq!(parse_device_ids("a\r\n\n  b  \nc"), vec!["a", "b", "c"]);
        assert!(parse_device_ids("\n \n").is_empty());
    }

    #[test]
    fn table_mentions_every_node() {
        let p = plan(&topo(2), 10_000, &numbered_device_ids(100), None).unwrap();
        let t = p.to_table();
        assert!(t.contains("127.0.0.1:8081") && t.contains("127.0.0.1:8082"));
        assert!(t.contains("100 devices over 2 nodes"));
    }
}
