//! The one time-claim rule every token kind is checked by: device tokens
//! (ours and an external issuer's), admission tokens, admin tokens, feed
//! tickets and proof-of-work challenges.
//!
//! With `now` the verifier's clock and `leeway` the key set's clock leeway
//! (5 s by default, `DEFAULT_LEEWAY`), a token is accepted only when
//!
//! - `iat`, when present, is at most `now + leeway` (not issued in the future),
//! - `nbf`, when present, is at most `now + leeway` (already valid),
//! - `now < exp + leeway` (not expired).
//!
//! A token kind that needs `iat` or `exp` makes its claim type require it;
//! this rule only compares times. Keeping one rule means a mis-minted token
//! or an issuer whose clock runs ahead is refused the same way whichever
//! verifier sees it.

/// The time claims of a token, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeClaims {
    /// Issued at (`iat`).
    pub iat: Option<u64>,
    /// Not before (`nbf`).
    pub nbf: Option<u64>,
    /// Expiry (`exp`); `None` only where the caller accepts an expired
    /// token on purpose (a device token presented to be refreshed).
    pub exp: Option<u64>,
}

/// Why a token's time claims refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// `iat` or `nbf` is later than `now + leeway`.
    #[error("token is not valid before {at} (now {now})")]
    NotYetValid {
        /// The later of `iat` and `nbf`.
        at: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// `exp + leeway` has passed.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// The token's expiry.
        exp: u64,
        /// The verifier's clock.
        now: u64,
    },
}

/// Checks `claims` at `now` with `leeway` seconds of clock difference.
pub fn check(claims: TimeClaims, now: u64, leeway: u64) -> Result<(), TimeError> {
    let not_before = claims.iat.max(claims.nbf);
    if let Some(at) = not_before
        && at > now.saturating_add(leeway)
    {
        return Err(TimeError::NotYetValid { at, now });
    }
    if let Some(exp) = claims.exp
        && now >= exp.saturating_add(leeway)
    {
        return Err(TimeError::Expired { exp, now });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn claims(iat: Option<u64>, nbf: Option<u64>, exp: Option<u64>) -> TimeClaims {
        TimeClaims { iat, nbf, exp }
    }

    #[test]
    fn issued_in_the_future_beyond_the_leeway_is_refused() {
        let ok = claims(Some(NOW + 5), None, Some(NOW + 600));
        assert_eq!(check(ok, NOW, 5), Ok(()), "within the leeway");
        let ahead = claims(Some(NOW + 6), None, Some(NOW + 600));
        assert_eq!(
            check(ahead, NOW, 5),
            Err(TimeError::NotYetValid {
                at: NOW + 6,
                now: NOW
            })
        );
    }

    #[test]
    fn not_before_in_the_future_is_refused_even_with_a_past_iat() {
        let c = claims(Some(NOW - 10), Some(NOW + 60), Some(NOW + 600));
        assert_eq!(
            check(c, NOW, 5),
            Err(TimeError::NotYetValid {
                at: NOW + 60,
                now: NOW
            })
        );
        assert_eq!(check(c, NOW + 55, 5), Ok(()));
    }

    #[test]
    fn expiry_honours_the_leeway() {
        let c = claims(Some(NOW), None, Some(NOW + 60));
        assert_eq!(check(c, NOW + 64, 5), Ok(()));
        assert_eq!(
            check(c, NOW + 65, 5),
            Err(TimeError::Expired {
                exp: NOW + 60,
                now: NOW + 65
            })
        );
    }

    #[test]
    fn absent_claims_are_not_compared() {
        assert_eq!(check(TimeClaims::default(), NOW, 0), Ok(()));
        let no_exp = claims(Some(NOW - 1_000_000), None, None);
        assert_eq!(check(no_exp, NOW, 0), Ok(()));
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let c = claims(Some(u64::MAX), Some(u64::MAX), Some(u64::MAX));
        assert_eq!(check(c, u64::MAX - 1, u64::MAX), Ok(()));
        assert_eq!(
            check(claims(Some(u64::MAX), None, None), 0, 5),
            Err(TimeError::NotYetValid {
                at: u64::MAX,
                now: 0
            })
        );
        assert_eq!(check(claims(None, None, Some(u64::MAX)), NOW, 5), Ok(()));
    }
}
