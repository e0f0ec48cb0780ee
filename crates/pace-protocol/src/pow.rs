//! Proof of work asked of devices joining a room under attack.
//!
//! The node sends a `challenge` with a random `prefix` and a `difficulty`
//! (bits). A solution is a decimal number `n` such that SHA-256 of the
//! bytes of `prefix`, then `:`, then `n` in decimal starts with at least
//! `difficulty` zero bits. Checking costs one hash; finding takes about
//! 2^difficulty hashes on average (see docs/security.md for measured
//! times).

use sha2::{Digest, Sha256};

/// Highest difficulty a room may ask (about 4 billion hashes on average).
pub const MAX_DIFFICULTY: u8 = 32;

/// Longest solution text accepted (a `u64` in decimal has at most 20 digits).
pub const MAX_SOLUTION_LEN: usize = 20;

/// The number of leading zero bits of `digest`.
pub fn leading_zero_bits(digest: &[u8]) -> u32 {
    let mut bits = 0;
    for byte in digest {
        if *byte == 0 {
            bits += 8;
        } else {
            return bits + byte.leading_zeros();
        }
    }
    bits
}

/// SHA-256 of `prefix:solution`.
pub fn digest(prefix: &str, solution: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prefix.as_bytes());
    h.update(b":");
    h.update(solution.as_bytes());
    h.finalize().into()
}

/// Whether `solution` solves `prefix` at `difficulty`. Only decimal digits
/// (at most [`MAX_SOLUTION_LEN`]) are accepted.
pub fn meets(prefix: &str, solution: &str, difficulty: u8) -> bool {
    !solution.is_empty()
        && solution.len() <= MAX_SOLUTION_LEN
        && solution.bytes().all(|b| b.is_ascii_digit())
        && leading_zero_bits(&digest(prefix, solution)) >= u32::from(difficulty)
}

/// Searches solutions `start, start + 1, …` for at most `attempts` hashes;
/// returns the first that solves `prefix` at `difficulty`.
pub fn solve(prefix: &str, difficulty: u8, start: u64, attempts: u64) -> Option<u64> {
    let want = u32::from(difficulty);
    let mut base = Sha256::new();
    base.update(prefix.as_bytes());
    base.update(b":");
    let mut buf = [0u8; 20];
    (start..start.saturating_add(attempts)).find(|n| {
        let text = decimal(*n, &mut buf);
        let mut h = base.clone();
        h.update(text);
        leading_zero_bits(&h.finalize()) >= want
    })
}

fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_leading_zero_bits() {
        assert_eq!(leading_zero_bits(&[0xff]), 0);
        assert_eq!(leading_zero_bits(&[0x0f, 0xff]), 4);
        assert_eq!(leading_zero_bits(&[0, 0x01]), 15);
        assert_eq!(leading_zero_bits(&[0, 0]), 16);
    }

    #[test]
    fn a_found_solution_meets_and_a_neighbour_usually_does_not() {
        let prefix = "3f1c9a";
        let n = solve(prefix, 12, 0, 1 << 24).expect("a solution within 16M tries");
        assert!(meets(prefix, &n.to_string(), 12));
        assert!(leading_zero_bits(&digest(prefix, &n.to_string())) >= 12);
        // Another prefix with the same number almost surely fails 12 bits.
        assert!(!meets("another", &n.to_string(), 20));
        assert!(!meets(prefix, "", 0), "empty is never a solution");
        assert!(!meets(prefix, "12a", 0), "digits only");
        assert!(!meets(prefix, &"9".repeat(21), 0), "bounded length");
        assert!(meets(prefix, "7", 0), "difficulty 0 accepts any number");
    }

    #[test]
    fn decimal_matches_to_string() {
        let mut buf = [0u8; 20];
        for n in [0, 7, 10, 12345, u64::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }
}
