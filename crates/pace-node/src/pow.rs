//! Proof of work against bots: signed, short-lived, single-use challenges.
//!
//! When a room's `pow_difficulty` is above 0, a device that has no place in
//! it yet gets a `challenge` instead of a place. The challenge is a JWT
//! signed with the cluster's admission keys (so any node can check it),
//! bound to the room, the device and a random prefix, with the difficulty
//! and a 60 s lifetime. The device answers with `solve`; the node checks the
//! signature, the binding, the expiry and the hash (one SHA-256), then
//! the join itself claims the challenge's id (a mark under the room's hash
//! tag, in the same script as the join: [`crate::queue::QueueStore::join_room`])
//! so it works once, cluster-wide.
//!
//! Its `aud` is `pace/pow`: no room id can contain `/`, so a challenge can
//! never pass as an admission token.

use std::time::Duration;

use pace_protocol::{Challenge, DeviceId, ErrorCode, RoomId};
use serde::{Deserialize, Serialize};

use crate::admission::KeySet;

/// The audience of challenge tokens.
pub const AUDIENCE: &str = "pace/pow";

/// How long a challenge may be answered.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(60);

/// The claims of a challenge token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowClaims {
    /// Issuer (the key set's).
    pub iss: String,
    /// Always [`AUDIENCE`].
    pub aud: String,
    /// The device the challenge was given to.
    pub sub: String,
    /// The room.
    pub room: String,
    /// The random prefix to hash.
    pub prefix: String,
    /// Leading zero bits asked.
    pub diff: u8,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Challenge id: claimed once in the store.
    pub jti: String,
}

/// Why a solution is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `pow_invalid` or `pow_reused`.
    pub code: ErrorCode,
    /// For the device and the log (never secret).
    pub message: &'static str,
}

fn invalid(message: &'static str) -> Refusal {
    Refusal {
        code: ErrorCode::PowInvalid,
        message,
    }
}

/// Makes a challenge for `device` joining `room` at `difficulty`.
pub fn issue(
    keys: &KeySet,
    room: &RoomId,
    device: &DeviceId,
    difficulty: u8,
    now: u64,
) -> Result<Challenge, String> {
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    let claims = PowClaims {
        iss: keys.issuer().to_owned(),
        aud: AUDIENCE.to_owned(),
        sub: device.to_string(),
        room: room.to_string(),
        prefix: prefix.clone(),
        diff: difficulty,
        iat: now,
        exp: now + CHALLENGE_TTL.as_secs(),
        jti: uuid::Uuid::new_v4().simple().to_string(),
    };
    let token = keys.sign_claims(&claims, now).map_err(|e| e.to_string())?;
    Ok(Challenge {
        room: room.clone(),
        challenge: token,
        prefix,
        difficulty,
        expires_at: claims.exp,
    })
}

/// Checks a `solve` (everything but single use): the token is ours,
/// unexpired, for this room and device, and the solution meets its
/// difficulty. Returns the claims, whose `jti` the caller claims once.
pub fn check(
    keys: &KeySet,
    room: &RoomId,
    device: &DeviceId,
    token: &str,
    solution: &str,
    now: u64,
) -> Result<PowClaims, Refusal> {
    let claims: PowClaims = keys
        .decode_claims(token)
        .map_err(|_| invalid("the challenge is not one of ours; ask again with join"))?;
    if claims.aud != AUDIENCE || claims.iss != keys.issuer() {
        return Err(invalid("not a challenge token"));
    }
    if claims.room != room.as_str() || claims.sub != device.as_str() {
        return Err(invalid(
            "the challenge was given for another room or device",
        ));
    }
    // The one time rule every token kind shares (key set's leeway).
    let times = crate::token_time::TimeClaims {
        iat: Some(claims.iat),
        nbf: None,
        exp: Some(claims.exp),
    };
    match crate::token_time::check(times, now, keys.leeway().as_secs()) {
        Ok(()) => {}
        Err(crate::token_time::TimeError::NotYetValid { .. }) => {
            return Err(invalid(
                "the challenge is not valid yet; ask again with join",
            ));
        }
        Err(crate::token_time::TimeError::Expired { .. }) => {
            return Err(invalid("the challenge expired; ask again with join"));
        }
    }
    if !pace_protocol::pow::meets(&claims.prefix, solution, claims.diff) {
        return Err(invalid("the solution does not meet the difficulty"));
    }
    Ok(claims)
}

/// The refusal for a challenge used twice.
pub fn reused() -> Refusal {
    Refusal {
        code: ErrorCode::PowReused,
        message: "this challenge was already used; ask again with join",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        crate::admission::unix_now()
    }

    fn setup() -> (KeySet, RoomId, DeviceId) {
        (
            KeySet::generate_in_memory().unwrap(),
            RoomId::parse("sale").unwrap(),
            DeviceId::parse("dev-1").unwrap(),
        )
    }

    fn solve(c: &Challenge) -> String {
        pace_protocol::pow::solve(&c.prefix, c.difficulty, 0, 1 << 24)
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_solved_challenge_checks_out() {
        let (keys, room, dev) = setup();
        let t = now();
        let c = issue(&keys, &room, &dev, 8, t).unwrap();
        let claims = check(&keys, &room, &dev, &c.challenge, &solve(&c), t + 10).unwrap();
        assert_eq!((claims.diff, claims.prefix), (8, c.prefix.clone()));
    }

    #[test]
    fn every_way_to_cheat_is_refused() {
        let (keys, room, dev) = setup();
        let t = now();
        let c = issue(&keys, &room, &dev, 12, t).unwrap();
        let good = solve(&c);
        let wrong = (good.parse::<u64>().unwrap() + 1).to_string();
        let code = |r: Result<PowClaims, Refusal>| r.unwrap_err().code;
        if !pace_protocol::pow::meets(&c.prefix, &wrong, 12) {
            assert_eq!(
                code(check(&keys, &room, &dev, &c.challenge, &wrong, t + 10)),
                ErrorCode::PowInvalid
            );
        }
        let other_room = RoomId::parse("other").unwrap();
        let other_dev = DeviceId::parse("dev-2").unwrap();
        assert_eq!(
            code(check(&keys, &other_room, &dev, &c.challenge, &good, t + 10)),
            ErrorCode::PowInvalid
        );
        assert_eq!(
            code(check(&keys, &room, &other_dev, &c.challenge, &good, t + 10)),
            ErrorCode::PowInvalid,
            "a solution cannot be handed to another device"
        );
        assert_eq!(
            code(check(&keys, &room, &dev, &c.challenge, &good, t + 60 + 5)),
            ErrorCode::PowInvalid,
            "expired (past exp plus the 5 s leeway)"
        );
        let early = issue(&keys, &room, &dev, 1, t + 60).unwrap();
        assert_eq!(
            code(check(
                &keys,
                &room,
                &dev,
                &early.challenge,
                &solve(&early),
                t
            )),
            ErrorCode::PowInvalid,
            "issued in the future"
        );
        let foreign = KeySet::generate_in_memory().unwrap();
        assert_eq!(
            code(check(&foreign, &room, &dev, &c.challenge, &good, t + 10)),
            ErrorCode::PowInvalid,
            "forged: signed by another key"
        );
        assert_eq!(
            code(check(&keys, &room, &dev, "garbage", &good, t + 10)),
            ErrorCode::PowInvalid
        );
        // An easy challenge's token cannot be edited to claim less work.
        let mut parts: Vec<String> = c.challenge.split('.').map(str::to_owned).collect();
        parts[1] = parts[1].chars().rev().collect();
        assert_eq!(
            code(check(&keys, &room, &dev, &parts.join("."), &good, t + 10)),
            ErrorCode::PowInvalid
        );
    }

    #[test]
    fn a_challenge_is_no_admission_token() {
        let (keys, room, dev) = setup();
        let t = now();
        let c = issue(&keys, &room, &dev, 1, t).unwrap();
        assert!(keys.verify(&c.challenge, Some("pace/pow"), t + 10).is_err());
        assert!(keys.verify(&c.challenge, Some("sale"), t + 10).is_err());
        assert!(
            keys.verify(&c.challenge, None, t + 10).is_err(),
            "not even when the verifier names no room"
        );
    }
}
