//! The cluster as the gateway sees it: the pace-node targets (`HOST:PORT` and
//! weight) and the routing contract both gateways implement — which request
//! field carries the device id, which paths are public and which stay private.
//! Kong and HAProxy configs are both rendered from one [`Topology`], so the two
//! cannot drift apart.

use std::fmt;

use crate::GatewayError;

/// Kong's default target weight, used when `--weights` is not given.
pub const DEFAULT_WEIGHT: u32 = 100;

/// Header a device puts its id in (pace-protocol's handshake header).
pub const DEVICE_ID_HEADER: &str = "x-device-id";

/// Query parameter carrying the device id when the header cannot be set
/// (browsers' WebSocket API cannot add headers).
pub const DEVICE_ID_QUERY_ARG: &str = "device_id";

/// Path prefixes the gateway forwards to the nodes. Anything else — notably
/// `/health`, `/ready` and `/metrics` — is never routed publicly: the gateway
/// health-checks `/ready` directly on each node, and Prometheus scrapes nodes
/// directly.
pub const PUBLIC_PATH_PREFIXES: &[&str] = &[
    "/ws",
    "/stream",
    "/api",
    "/.well-known",
    "/r/",
    "/admin",
    "/assets/",
    "/demo",
];

/// Paths each node serves for operators only; listed so tests and docs can
/// check they are not reachable through the gateway.
pub const PRIVATE_PATHS: &[&str] = &["/health", "/ready", "/metrics"];

/// One pace-node process behind the gateway: a Kong target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    /// Host part exactly as given (an IPv4 address in practice; `[v6]` kept
    /// in brackets). Kong names ring points after it, so it is kept verbatim.
    pub host: String,
    /// TCP port the node listens on.
    pub port: u16,
    /// Kong target weight (1..=65535); the node's share of ring points is
    /// proportional to it.
    pub weight: u32,
}

impl Node {
    /// Parses `HOST:PORT` with the default weight.
    pub fn parse(value: &str) -> Result<Node, GatewayError> {
        let bad = |reason| GatewayError::InvalidNode {
            value: value.to_owned(),
            reason,
        };
        let (host, port) = value.rsplit_once(':').ok_or_else(|| bad("missing :PORT"))?;
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(bad(
                "an IPv6 address must be written in brackets, e.g. [::1]:8081",
            ));
        }
        if host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(bad("the host contains a space or '/'"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("port 0 is not a real port"));
        }
        Ok(Node {
            host: host.to_owned(),
            port,
            weight: DEFAULT_WEIGHT,
        })
    }

    /// `HOST:PORT`, the form Kong's `target` field and HAProxy's `server` take.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The set of nodes behind the gateway, validated: at least one node, no
/// duplicates, weights in range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    nodes: Vec<Node>,
}

impl Topology {
    /// Builds a topology from already-parsed nodes.
    pub fn new(nodes: Vec<Node>) -> Result<Topology, GatewayError> {
        if nodes.is_empty() {
            return Err(GatewayError::NoNodes);
        }
        for (i, node) in nodes.iter().enumerate() {
            if !(1..=65535).contains(&node.weight) {
                return Err(GatewayError::InvalidWeight {
                    value: node.weight.to_string(),
                });
            }
            if nodes[..i]
                .iter()
                .any(|n| n.host == node.host && n.port == node.port)
            {
                return Err(GatewayError::DuplicateNode(node.address()));
            }
        }
        Ok(Topology { nodes })
    }

    /// Builds a topology from `--node` values and an optional comma-separated
    /// `--weights` list (one per node, same order).
    pub fn from_args(nodes: &[String], weights: Option<&str>) -> Result<Topology, GatewayError> {
        let mut parsed = nodes
            .iter()
            .map(|n| Node::parse(n))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(weights) = weights {
            let weights = parse_weights(weights)?;
            if weights.len() != parsed.len() {
                return Err(GatewayError::WeightCount {
                    weights: weights.len(),
                    nodes: parsed.len(),
                });
            }
            for (node, weight) in parsed.iter_mut().zip(weights) {
                node.weight = weight;
            }
        }
        Topology::new(parsed)
    }

    /// The nodes, in the order given.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// A copy with `node` added (for "what if we scale out" plans).
    pub fn with_node(&self, node: Node) -> Result<Topology, GatewayError> {
        if self
            .nodes
            .iter()
            .any(|n| n.host == node.host && n.port == node.port)
        {
            return Err(GatewayError::AddExisting(node.address()));
        }
        let mut nodes = self.nodes.clone();
        nodes.push(node);
        Topology::new(nodes)
    }

    /// A copy without the node at `index`, or `None` if it was the last one.
    pub fn without(&self, index: usize) -> Option<Topology> {
        if self.nodes.len() <= 1 || index >= self.nodes.len() {
            return None;
        }
        let mut nodes = self.nodes.clone();
        nodes.remove(index);
        Some(Topology { nodes })
    }
}

fn parse_weights(list: &str) -> Result<Vec<u32>, GatewayError> {
    list.split(',')
        .map(|w| {
            let w = w.trim();
            match w.parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => Ok(n),
                _ => Err(GatewayError::InvalidWeight {
                    value: w.to_owned(),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_hostname_and_bracketed_ipv6() {
        let n = Node::parse("127.0.0.1:8081").unwrap();
        assert_eq!(
            (n.host.as_str(), n.port, n.weight),
            ("127.0.0.1", 8081, 100)
        );
        assert_eq!(
            Node::parse("node-1.internal:80").unwrap().host,
            "node-1.internal"
        );
        assert_eq!(Node::parse("[::1]:8081").unwrap().host, "[::1]");
        assert_eq!(Node::parse("[::1]:8081").unwrap().address(), "[::1]:8081");
    }

    #[test]
    fn rejects_malformed_nodes() {
        for bad in [
            "127.0.0.1",
            ":8081",
            "127.0.0.1:",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "::1:8081",
            "a b:1",
        ] {
            assert!(Node::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn weights_follow_node_order_and_must_match_in_count() {
        let nodes = vec!["127.0.0.1:8081".to_owned(), "127.0.0.1:8082".to_owned()];
        let t = Topology::from_args(&nodes, Some("100, 300")).unwrap();
        assert_eq!(t.nodes()[1].weight, 300);
        assert!(matches!(
            Topology::from_args(&nodes, Some("100")),
            Err(GatewayError::WeightCount {
                weights: 1,
                nodes: 2
            })
        ));
        assert!(Topology::from_args(&nodes, Some("100,0")).is_err());
        assert!(Topology::from_args(&nodes, Some("100,x")).is_err());
    }

    #[test]
    fn refuses_empty_and_duplicate_topologies() {
        assert!(matches!(
            Topology::from_args(&[], None),
            Err(GatewayError::NoNodes)
        ));
        let dup = vec!["127.0.0.1:8081".to_owned(), "127.0.0.1:8081".to_owned()];
        assert!(matches!(
            Topology::from_args(&dup, None),
            Err(GatewayError::DuplicateNode(_))
        ));
    }

    #[test]
    fn with_and_without_nodes() {
        let t = Topology::from_args(
            &["127.0.0.1:8081".to_owned(), "127.0.0.1:8082".to_owned()],
            None,
        )
        .unwrap();
        assert_eq!(t.without(0).unwrap().nodes()[0].port, 8082);
        assert!(t.without(0).unwrap().without(0).is_none());
        assert!(t.with_node(Node::parse("127.0.0.1:8081").unwrap()).is_err());
        assert_eq!(
            t.with_node(Node::parse("127.0.0.1:8083").unwrap())
                .unwrap()
                .nodes()
                .len(),
            3
        );
    }
}
