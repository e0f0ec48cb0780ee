//! An exact model of Kong's consistent-hashing balancer
//! (`kong/runloop/balancer/consistent_hashing.lua`, Kong 3.x), so Pace can
//! predict which node a device id lands on and how many devices move when a
//! node is added, removed or fails its health check — without running Kong.
//!
//! What Kong does, and this file reproduces step by step:
//! - the hash is luaxxhash's xxHash32 (seed 0), which LuaJIT's `bit` ops return
//!   as a *signed* 32-bit number; `get_continuum_index` maps it to a slot with
//!   Lua's floored `%` and a 1-based `+ 1`;
//! - the ring ("continuum") has `upstream.slots` slots, or 1000 when slots is
//!   below Kong's `MIN_CONTINUUM_SIZE` of 1000;
//! - targets are sorted by name, then port, before points are placed, so
//!   collisions resolve the same way on every Kong worker;
//! - each target gets `floor(weight / total_weight * target_count * 160)`
//!   points (at least one), point `i` named `"<ip>:" .. ":<port>" .. " " .. i`
//!   (so `127.0.0.1::8081 1`); a point whose slot is taken is dropped and the
//!   target gets one more point name instead (`entries = entries + 1`);
//! - a lookup starts at the key's slot and walks *down* (wrapping from 1 to
//!   `slots`) to the first slot holding an available address. An address that
//!   fails health checks stays on the ring and is skipped; deleting a target
//!   rebuilds the ring.

use xxhash_rust::xxh32::xxh32;

use crate::{GatewayError, Topology};

/// Kong's default `upstreams.slots`.
pub const DEFAULT_SLOTS: u32 = 10_000;

/// Kong's `MIN_CONTINUUM_SIZE` (and `DEFAULT_CONTINUUM_SIZE`): a wheel smaller
/// than this is replaced by one of this size.
pub const MIN_CONTINUUM_SIZE: u32 = 1_000;

/// Kong's `SERVER_POINTS`: points per target when all weights are equal.
pub const SERVER_POINTS: u32 = 160;

/// xxHash32 with seed 0, as luaxxhash returns it to Kong: a signed 32-bit
/// integer (LuaJIT's `bit.bxor` yields signed results).
pub fn kong_xxh32(data: &[u8]) -> i32 {
    // Reinterpreting the bits is the point here: luaxxhash's last step is a
    // `bit.bxor`, whose result LuaJIT hands back as an int32.
    xxh32(data, 0) as i32
}

/// Kong's `get_continuum_index`: `(xxhash32(tostring(value)) % points) + 1`,
/// with Lua's floored modulo on the signed hash. Returns a 1-based slot.
pub fn continuum_index(value: &str, points: u32) -> u32 {
    let slot = i64::from(kong_xxh32(value.as_bytes())).rem_euclid(i64::from(points));
    // rem_euclid by a positive u32 is in 0..points, so it fits.
    u32::try_from(slot).unwrap_or(0) + 1
}

/// One target on the ring.
#[derive(Debug, Clone)]
struct RingTarget {
    /// `HOST:PORT` as configured, what lookups return.
    address: String,
    /// Host part, the `ip` Kong names points after.
    host: String,
    /// Port, numeric, the second sort key.
    port: u16,
    /// Kong target weight.
    weight: u32,
    /// Slots this target holds on the continuum.
    slots_held: u32,
    /// False once marked unhealthy: lookups skip its slots.
    available: bool,
}

/// Kong's consistent-hashing continuum for a set of targets.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Effective continuum size (slots, after Kong's minimum).
    points: u32,
    /// Targets in Kong's placement order (name, then port).
    targets: Vec<RingTarget>,
    /// `continuum[slot - 1]` = index into `targets` of the slot's owner.
    continuum: Vec<Option<u32>>,
    /// Point names that hit an occupied slot while building (Kong logs these).
    collisions: u32,
}

impl Ring {
    /// Builds the ring Kong builds for these targets (`"HOST:PORT"`, weight)
    /// and `slots` (the upstream's `slots` field).
    pub fn new<S: AsRef<str>>(targets: &[(S, u32)], slots: u32) -> Result<Ring, GatewayError> {
        let nodes = targets
            .iter()
            .map(|(address, weight)| {
                let mut node = crate::Node::parse(address.as_ref())?;
                node.weight = *weight;
                Ok(node)
            })
            .collect::<Result<Vec<_>, GatewayError>>()?;
        Ring::from_topology(&Topology::new(nodes)?, slots)
    }

    /// Builds the ring for a topology's nodes.
    pub fn from_topology(topology: &Topology, slots: u32) -> Result<Ring, GatewayError> {
        if !(10..=65_536).contains(&slots) {
            return Err(GatewayError::InvalidSlots(slots));
        }
        let points = if slots >= MIN_CONTINUUM_SIZE {
            slots
        } else {
            MIN_CONTINUUM_SIZE
        };

        let mut targets: Vec<RingTarget> = topology
            .nodes()
            .iter()
            .map(|n| RingTarget {
                address: n.address(),
                host: n.host.clone(),
                port: n.port,
                weight: n.weight,
                slots_held: 0,
                available: true,
            })
            .collect();
        // sort_hosts_and_addresses: `ta < tb or (ta == tb and a.port < b.port)`.
        targets.sort_by(|a, b| {
            a.host
                .as_bytes()
                .cmp(b.host.as_bytes())
                .then(a.port.cmp(&b.port))
        });

        let total_weight: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
        let targets_count = targets.len() as f64;
        let len = usize::try_from(points).unwrap_or(usize::MAX);
        let mut continuum: Vec<Option<u32>> = vec![None; len];
        let mut collisions = 0;

        for (ti, target) in targets.iter_mut().enumerate() {
            // `floor(addr_prop * targets_count * SERVER_POINTS)`, evaluated left
            // to right in doubles exactly as LuaJIT does.
            let addr_prop = f64::from(target.weight) / total_weight as f64;
            let mut entries = (addr_prop * targets_count * f64::from(SERVER_POINTS)).floor() as u64;
            if target.weight > 0 && entries == 0 {
                entries = 1;
            }
            let owner = u32::try_from(ti).unwrap_or(u32::MAX);
            let mut i: u64 = 1;
            while i <= entries {
                let name = format!("{}::{} {}", target.host, target.port, i);
                let slot = continuum_index(&name, points) as usize - 1;
                if continuum[slot].is_none() {
                    continuum[slot] = Some(owner);
                    target.slots_held += 1;
                } else {
                    entries += 1;
                    collisions += 1;
                }
                i += 1;
                if i > u64::from(points) {
                    return Err(GatewayError::RingOverflow { slots: points });
                }
            }
        }

        Ok(Ring {
            points,
            targets,
            continuum,
            collisions,
        })
    }

    /// Effective number of slots (Kong raises anything below 1000 to 1000).
    pub fn points(&self) -> u32 {
        self.points
    }

    /// Point names that collided while building the ring.
    pub fn collisions(&self) -> u32 {
        self.collisions
    }

    /// Targets as `(HOST:PORT, weight, slots held)`, in Kong's placement order.
    pub fn targets(&self) -> impl Iterator<Item = (&str, u32, u32)> {
        self.targets
            .iter()
            .map(|t| (t.address.as_str(), t.weight, t.slots_held))
    }

    /// Marks a target healthy or unhealthy, as Kong's health checker does.
    /// Returns false if no such target. The ring itself is not rebuilt.
    pub fn set_available(&mut self, address: &str, available: bool) -> bool {
        match self.targets.iter_mut().find(|t| t.address == address) {
            Some(t) => {
                t.available = available;
                true
            }
            None => false,
        }
    }

    /// The target (`HOST:PORT`) Kong sends a request with this hash value to,
    /// or `None` when every target is unavailable. Kong hashes the empty
    /// string when a request carries neither the header nor the query arg.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_target(key)
            .map(|i| self.targets[i].address.as_str())
    }

    /// Like [`Ring::get`], returning the target's position in
    /// [`Ring::targets`] order.
    pub fn get_target(&self, key: &str) -> Option<usize> {
        let mut index = continuum_index(key, self.points);
        // getPeer: walk the whole continuum once, downwards, wrapping to `points`.
        for _ in 0..self.points {
            if let Some(owner) = self.continuum[index as usize - 1] {
                let owner = owner as usize;
                if self.targets[owner].available {
                    return Some(owner);
                }
            }
            index -= 1;
            if index == 0 {
                index = self.points;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published xxHash32 (seed 0) vectors, and luaxxhash's own test answers
    /// (its `test.lua`), which are signed because that is what Kong sees.
    #[test]
    fn xxh32_matches_published_and_luaxxhash_vectors() {
        assert_eq!(xxh32(b"", 0), 0x02CC_5D05);
        assert_eq!(xxh32(b"a", 0), 0x550D_7456);
        assert_eq!(xxh32(b"abc", 0), 0x32D1_53FF);

        let cats = "Cats are interesting.";
        let a = "a";
        let cases: Vec<(String, i32)> = vec![
            (a.repeat(4), -631_806_169),
            (a.repeat(16), 1_571_609_996),
            (a.repeat(32), -1_557_966_914),
            (
                format!("{}{}{}", a.repeat(32), a, a.repeat(4)),
                1_065_833_563,
            ),
            (cats.repeat(256), -237_286_296),
            (String::new(), 46_947_589),
            ("dupa".to_owned(), 0x1A47_C09D),
            (cats.to_owned(), 1_710_037_756),
            (a.to_owned(), 1_426_945_110),
        ];
        for (input, want) in cases {
            assert_eq!(
                kong_xxh32(input.as_bytes()),
                want,
                "xxh32 of {} bytes",
                input.len()
            );
        }
    }

    #[test]
    fn continuum_index_uses_floored_modulo_of_the_signed_hash() {
        // "aaaa" hashes to -631806169: Lua gives -631806169 % 10000 == 3831.
        assert_eq!(continuum_index("aaaa", 10_000), 3_831 + 1);
        // The unsigned reading (3663161127 % 10000 == 1127) must NOT be used.
        assert_ne!(continuum_index("aaaa", 10_000), 1_127 + 1);
        // Positive hash: plain remainder.
        assert_eq!(continuum_index("a", 10_000), 1_426_945_110 % 10_000 + 1);
        for key in ["", "x", "device-1", "device-99"] {
            let i = continuum_index(key, 1_000);
            assert!((1..=1_000).contains(&i));
        }
    }

    fn ring(targets: &[(&str, u32)], slots: u32) -> Ring {
        Ring::new(targets, slots).unwrap()
    }

    fn held(r: &Ring) -> Vec<(String, u32)> {
        let mut v: Vec<_> = r.targets().map(|(a, _, h)| (a.to_owned(), h)).collect();
        v.sort();
        v
    }

    /// Point counts Kong's own spec (`03-consistent_hashing_spec.lua`) asserts.
    #[test]
    fn points_per_target_match_kongs_spec() {
        // Equal weights: 160 slots each, whatever the weight value.
        let r = ring(
            &[
                ("10.0.0.1:1", 100),
                ("10.0.0.2:2", 100),
                ("10.0.0.3:3", 100),
            ],
            10_000,
        );
        assert!(r.targets().all(|(_, _, h)| h == 160));
        // "total weight: 200, 2 hosts: 320 points, 75%: 240, 25%: 80".
        let r = ring(&[("1.2.3.4:80", 150), ("9.9.9.9:123", 50)], 1_000);
        assert_eq!(
            held(&r),
            vec![
                ("1.2.3.4:80".to_owned(), 240),
                ("9.9.9.9:123".to_owned(), 80)
            ]
        );
        // "66%: 213 points, 33%: 106 points".
        let r = ring(&[("1.2.3.4:80", 20), ("[::1]:80", 10)], 1_000);
        assert_eq!(
            held(&r),
            vec![("1.2.3.4:80".to_owned(), 213), ("[::1]:80".to_owned(), 106)]
        );
    }

    #[test]
    fn small_slot_counts_are_raised_to_kongs_minimum() {
        assert_eq!(ring(&[("127.0.0.1:1", 100)], 10).points(), 1_000);
        assert_eq!(ring(&[("127.0.0.1:1", 100)], 999).points(), 1_000);
        assert_eq!(ring(&[("127.0.0.1:1", 100)], 1_000).points(), 1_000);
        assert_eq!(ring(&[("127.0.0.1:1", 100)], 65_536).points(), 65_536);
        assert!(Ring::new(&[("127.0.0.1:1", 100)], 9).is_err());
        assert!(Ring::new(&[("127.0.0.1:1", 100)], 65_537).is_err());
    }

    #[test]
    fn lookup_walks_down_from_the_key_slot() {
        let r = ring(&[("127.0.0.1:8081", 100), ("127.0.0.1:8082", 100)], 10_000);
        for n in 0..500 {
            let key = format!("device-{n}");
            let start = continuum_index(&key, r.points());
            // Find the owner by scanning the continuum by hand.
            let mut slot = start;
            let owner = loop {
                if let Some(o) = r.continuum[slot as usize - 1] {
                    break o as usize;
                }
                slot = if slot == 1 { r.points() } else { slot - 1 };
            };
            assert_eq!(r.get_target(&key), Some(owner));
        }
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let a = ring(
            &[
                ("127.0.0.1:8081", 100),
                ("127.0.0.1:8082", 50),
                ("127.0.0.2:8081", 100),
            ],
            10_000,
        );
        let b = ring(
            &[
                ("127.0.0.2:8081", 100),
                ("127.0.0.1:8082", 50),
                ("127.0.0.1:8081", 100),
            ],
            10_000,
        );
        assert_eq!(a.continuum, b.continuum);
        for n in 0..1_000 {
            let key = format!("device-{n}");
            assert_eq!(a.get(&key), b.get(&key));
        }
    }

    #[test]
    fn unhealthy_target_only_moves_its_own_keys() {
        let mut r = ring(
            &[
                ("127.0.0.1:8081", 100),
                ("127.0.0.1:8082", 100),
                ("127.0.0.1:8083", 100),
            ],
            10_000,
        );
        let before: Vec<_> = (0..3_000)
            .map(|n| r.get(&format!("device-{n}")).map(str::to_owned))
            .collect();
        assert!(r.set_available("127.0.0.1:8082", false));
        assert!(!r.set_available("127.0.0.1:9999", false));
        for (n, was) in before.iter().enumerate() {
            let now = r.get(&format!("device-{n}"));
            if was.as_deref() != Some("127.0.0.1:8082") {
                assert_eq!(now, was.as_deref());
            } else {
                assert_ne!(now, Some("127.0.0.1:8082"));
            }
        }
        r.set_available("127.0.0.1:8081", false);
        r.set_available("127.0.0.1:8083", false);
        assert_eq!(r.get("device-1"), None);
    }

    #[test]
    fn overflow_is_an_error_like_kongs_give_up() {
        // 20 targets x 160 points cannot fit in 1000 slots.
        let targets: Vec<(String, u32)> = (0..20)
            .map(|i| (format!("127.0.0.1:{}", 8000 + i), 100))
            .collect();
        assert!(matches!(
            Ring::new(&targets, 1_000),
            Err(GatewayError::RingOverflow { slots: 1_000 })
        ));
        assert!(Ring::new(&targets, 10_000).is_ok());
    }
}
