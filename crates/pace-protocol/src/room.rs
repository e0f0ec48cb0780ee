//! A waiting room's settings as the REST API carries them (`PUT`/`GET
//! /api/v1/rooms/{room}`, the admin routes, the admin feed), and the rules a
//! store relies on: [`RoomConfig::validate`] (bounded target URL, a page
//! appearance that stays readable: WCAG contrast).

use serde::{Deserialize, Serialize};

use crate::ids::RoomId;

/// Whether a room admits and accepts joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomState {
    /// Joins accepted, devices admitted.
    Open,
    /// Joins accepted (the queue builds), nobody admitted.
    Paused,
    /// New joins refused; devices already waiting keep their place and are
    /// still admitted.
    Closed,
}

impl RoomState {
    /// `open`, `paused` or `closed` (as stored).
    pub fn as_str(self) -> &'static str {
        match self {
            RoomState::Open => "open",
            RoomState::Paused => "paused",
            RoomState::Closed => "closed",
        }
    }

    /// The inverse of [`RoomState::as_str`].
    pub fn parse(s: &str) -> Option<RoomState> {
        match s {
            "open" => Some(RoomState::Open),
            "paused" => Some(RoomState::Paused),
            "closed" => Some(RoomState::Closed),
            _ => None,
        }
    }
}

/// How a room orders admissions (its queueing mode); switchable live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueMode {
    /// Admissions in ticket order (join order): the default, and what a
    /// room stored before modes existed reads as.
    #[default]
    Fifo,
    /// Each admission draws uniformly among the devices waiting at that
    /// moment (a lottery); capacity and the per-minute budget still hold.
    Random,
    /// Everyone is admitted at once, regardless of capacity and the
    /// per-minute budget; joins, admissions and sessions are still counted
    /// and logged.
    Passthrough,
    /// New joins are refused (error `rejected`); devices already waiting
    /// keep their place and are admitted in ticket order.
    Reject,
}

impl QueueMode {
    /// Every mode, in documentation order.
    pub const ALL: [QueueMode; 4] = [
        QueueMode::Fifo,
        QueueMode::Random,
        QueueMode::Passthrough,
        QueueMode::Reject,
    ];

    /// `fifo`, `random`, `passthrough` or `reject` (as stored and logged).
    pub fn as_str(self) -> &'static str {
        match self {
            QueueMode::Fifo => "fifo",
            QueueMode::Random => "random",
            QueueMode::Passthrough => "passthrough",
            QueueMode::Reject => "reject",
        }
    }

    /// The inverse of [`QueueMode::as_str`].
    pub fn parse(s: &str) -> Option<QueueMode> {
        QueueMode::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether this is [`QueueMode::Fifo`] (serde's skip test).
    pub fn is_fifo(&self) -> bool {
        *self == QueueMode::Fifo
    }
}

/// A room's settings; every field may change live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomConfig {
    /// Most sessions admitted at once. Lowering it evicts nobody: admission
    /// waits until enough sessions end.
    pub capacity: u32,
    /// Most new admissions in any 60 s window; `None` for no limit.
    pub admit_per_minute: Option<u32>,
    /// How long an admitted session holds its slot unless renewed.
    pub session_ttl_secs: u32,
    /// Where an admitted device is sent.
    pub target_url: String,
    /// Open, paused or closed.
    pub state: RoomState,
    /// Proof-of-work difficulty asked of joining devices (0 = none).
    pub pow_difficulty: u8,
    /// How admissions are ordered (absent: `fifo`).
    #[serde(default)]
    pub mode: QueueMode,
    /// The waiting-room page's words and colours (absent: Pace's own).
    #[serde(default, skip_serializing_if = "Appearance::is_default")]
    pub appearance: Appearance,
}

/// How a room's waiting page (`/r/{room}`) looks: the tenant's title,
/// message and colours. Colours are `#rrggbb`; the text and accent must
/// stay readable on the background (WCAG AA: 4.5:1 for text, 3:1 for the
/// accent), so no tenant can make the page unreadable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appearance {
    /// The page's heading and window title (plain text).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    /// A message under the heading (plain text; line breaks kept).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Page background.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<String>,
    /// Text colour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Progress bar, focus ring and links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accent: Option<String>,
}

/// Longest appearance title, in bytes.
pub const TITLE_MAX_LEN: usize = 120;
/// Longest appearance message, in bytes.
pub const MESSAGE_MAX_LEN: usize = 1000;
/// The page's colours when a room sets none: background, text, accent.
pub const DEFAULT_COLOURS: [&str; 3] = ["#f5f6fa", "#161a2b", "#3451c7"];

impl Appearance {
    /// Whether nothing is set.
    pub fn is_default(&self) -> bool {
        *self == Appearance::default()
    }

    /// Background, text and accent, with the defaults filled in.
    pub fn colours(&self) -> [&str; 3] {
        let [bg, text, accent] = DEFAULT_COLOURS;
        [
            self.background.as_deref().unwrap_or(bg),
            self.text.as_deref().unwrap_or(text),
            self.accent.as_deref().unwrap_or(accent),
        ]
    }

    /// Checks lengths, characters, colour syntax and contrast.
    pub fn validate(&self) -> Result<(), String> {
        if self.title.len() > TITLE_MAX_LEN {
            return Err(format!(
                "appearance.title is longer than {TITLE_MAX_LEN} bytes"
            ));
        }
        if self.message.len() > MESSAGE_MAX_LEN {
            return Err(format!(
                "appearance.message is longer than {MESSAGE_MAX_LEN} bytes"
            ));
        }
        if self.title.chars().any(char::is_control)
            || self.message.chars().any(|c| c.is_control() && c != '\n')
        {
            return Err("appearance text contains control characters".into());
        }
        for (name, value) in [
            ("background", &self.background),
            ("text", &self.text),
            ("accent", &self.accent),
        ] {
            if let Some(v) = value
                && rgb(v).is_none()
            {
                return Err(format!(
                    "appearance.{name} must be a colour #rrggbb, not {v:?}"
                ));
            }
        }
        let [bg, text, accent] = self.colours().map(|c| rgb(c).unwrap_or([0, 0, 0]));
        let text_ratio = contrast(text, bg);
        if text_ratio < 4.5 {
            return Err(format!(
                "appearance.text on appearance.background has contrast {text_ratio:.2}:1; at least 4.5:1 keeps the page readable"
            ));
        }
        let accent_ratio = contrast(accent, bg);
        if accent_ratio < 3.0 {
            return Err(format!(
                "appearance.accent on appearance.background has contrast {accent_ratio:.2}:1; at least 3:1 keeps the progress bar and focus ring visible"
            ));
        }
        Ok(())
    }
}

/// `#rrggbb` as three bytes.
fn rgb(s: &str) -> Option<[u8; 3]> {
    let hex = s.strip_prefix('#')?;
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    Some([byte(0)?, byte(2)?, byte(4)?])
}

/// WCAG 2 relative luminance.
fn luminance([r, g, b]: [u8; 3]) -> f64 {
    let channel = |c: u8| {
        let c = f64::from(c) / 255.0;
        if c <= 0.039_28 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)
}

/// WCAG 2 contrast ratio of two colours (1 to 21).
pub fn contrast(a: [u8; 3], b: [u8; 3]) -> f64 {
    let (la, lb) = (luminance(a), luminance(b));
    let (hi, lo) = if la > lb { (la, lb) } else { (lb, la) };
    (hi + 0.05) / (lo + 0.05)
}

/// Longest target URL accepted, in bytes.
pub const TARGET_URL_MAX_LEN: usize = 2048;

impl RoomConfig {
    /// Checks the values a store relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.pow_difficulty > crate::pow::MAX_DIFFICULTY {
            return Err(format!(
                "pow_difficulty must be at most {} (leading zero bits)",
                crate::pow::MAX_DIFFICULTY
            ));
        }
        if self.session_ttl_secs == 0 {
            return Err("session_ttl_secs must be at least 1".into());
        }
        if self.target_url.len() > TARGET_URL_MAX_LEN {
            return Err(format!(
                "target_url is longer than {TARGET_URL_MAX_LEN} bytes"
            ));
        }
        if self.target_url.chars().any(|c| c.is_control() || c == ' ') {
            return Err("target_url contains spaces or control characters".into());
        }
        self.appearance.validate()
    }

    /// The session TTL in ms.
    pub fn session_ttl_ms(&self) -> u64 {
        u64::from(self.session_ttl_secs) * 1000
    }
}

/// A room as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    /// Its id.
    pub id: RoomId,
    /// Its settings.
    pub config: RoomConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_of_work_difficulty_is_bounded() {
        let mut c: RoomConfig = serde_json::from_str(
            r#"{"capacity":1,"admit_per_minute":null,"session_ttl_secs":60,"target_url":"https://x/","state":"open","pow_difficulty":32}"#,
        )
        .unwrap();
        assert_eq!(c.validate(), Ok(()));
        c.pow_difficulty = 33;
        assert!(c.validate().unwrap_err().contains("at most 32"));
    }

    fn with(f: impl FnOnce(&mut Appearance)) -> Result<(), String> {
        let mut a = Appearance::default();
        f(&mut a);
        a.validate()
    }

    #[test]
    fn the_defaults_are_readable() {
        let [bg, text, accent] = DEFAULT_COLOURS.map(|c| rgb(c).unwrap());
        assert!(contrast(text, bg) >= 7.0, "AAA for the default text");
        assert!(contrast(accent, bg) >= 4.5);
        assert_eq!(Appearance::default().validate(), Ok(()));
    }

    #[test]
    fn contrast_matches_wcag_reference_values() {
        assert!((contrast([0, 0, 0], [255, 255, 255]) - 21.0).abs() < 1e-9);
        assert!((contrast([255, 255, 255], [255, 255, 255]) - 1.0).abs() < 1e-9);
        // #767676 on white is the classic 4.54:1 (just AA).
        let grey = contrast([0x76, 0x76, 0x76], [255, 255, 255]);
        assert!((grey - 4.54).abs() < 0.01, "{grey}");
    }

    #[test]
    fn colours_are_checked_for_syntax_and_contrast() {
        assert_eq!(
            with(|a| a.background = Some("#000000".into())).map_err(|e| e.contains("contrast")),
            Err(true)
        );
        assert!(
            with(|a| {
                a.background = Some("#000000".into());
                a.text = Some("#FFFFFF".into());
                a.accent = Some("#ffcc00".into());
            })
            .is_ok()
        );
        for bad in ["red", "#fff", "#12345g", "#1234567", "url(x)", "#123456;x"] {
            let e = with(|a| a.accent = Some(bad.into())).unwrap_err();
            assert!(e.contains("#rrggbb"), "{bad}: {e}");
        }
        let e = with(|a| a.accent = Some("#f0f0f0".into())).unwrap_err();
        assert!(e.contains("3:1"), "{e}");
    }

    #[test]
    fn text_is_bounded_and_plain() {
        assert!(with(|a| a.title = "t".repeat(TITLE_MAX_LEN)).is_ok());
        assert!(with(|a| a.title = "t".repeat(TITLE_MAX_LEN + 1)).is_err());
        assert!(with(|a| a.message = "m".repeat(MESSAGE_MAX_LEN + 1)).is_err());
        assert!(with(|a| a.message = "two\nlines".into()).is_ok());
        assert!(with(|a| a.title = "two\nlines".into()).is_err());
        assert!(with(|a| a.message = "bell\u{7}".into()).is_err());
    }

    #[test]
    fn an_absent_appearance_is_not_serialised() {
        let json = serde_json::to_value(Appearance::default()).unwrap();
        assert_eq!(json, serde_json::json!({}));
        let c: RoomConfig = serde_json::from_str(
            r#"{"capacity":1,"admit_per_minute":null,"session_ttl_secs":60,"target_url":"https://x/","state":"open","pow_difficulty":0}"#,
        )
        .unwrap();
        assert!(c.appearance.is_default());
        assert!(!serde_json::to_string(&c).unwrap().contains("appearance"));
    }
}
