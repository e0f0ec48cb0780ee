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
    /// Scheduled events (a ticket drop, a launch), at most [`MAX_EVENTS`],
    /// not overlapping; see [`Event`] and [`RoomConfig::phase`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
}

/// How an event orders its pre-queue at `event_start`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventOrder {
    /// In join order (ticket order).
    #[default]
    Fifo,
    /// In the order [`crate::audit::shuffle_order`] gives for the event's
    /// committed seed and the pre-queue's tickets.
    Shuffle,
}

impl EventOrder {
    /// Whether this is [`EventOrder::Fifo`] (serde's skip test).
    pub fn is_fifo(&self) -> bool {
        *self == EventOrder::Fifo
    }
}

/// A scheduled event of a room. Times are Unix ms and are compared with
/// the *store's* clock (Redis `TIME` in a cluster), never a node's.
///
/// - before `prequeue_start` (the *countdown*) new joins are refused with
///   `event_not_open`; devices already waiting keep their place and the
///   room admits by its own settings;
/// - from `prequeue_start` to `event_start` (the *pre-queue*) devices
///   join and wait, and nobody is admitted;
/// - at `event_start` the pre-queue is ordered (`order`: fifo, or the
///   committed shuffle) ahead of everyone who joins later, in FIFO; until
///   `event_end` (*live*) the room admits in ticket order with the
///   event's overrides;
/// - after `event_end` the room follows its own settings again.
///
/// The event that governs a room is the first one not yet ended: between
/// two events the next one's countdown applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The event's id within the room: 1 to 32 of `a-z 0-9 - _`.
    pub id: String,
    /// When devices may start to join (the pre-queue opens), Unix ms.
    pub prequeue_start: u64,
    /// When the pre-queue is ordered and admissions start, Unix ms.
    pub event_start: u64,
    /// When the room returns to its own settings, Unix ms.
    pub event_end: u64,
    /// How the pre-queue is ordered at `event_start` (absent: fifo).
    #[serde(default, skip_serializing_if = "EventOrder::is_fifo")]
    pub order: EventOrder,
    /// Capacity while the event is live (absent: the room's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// Admissions per minute while the event is live (absent: the room's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admit_per_minute: Option<u32>,
    /// The page's message from `prequeue_start` to `event_end` (absent:
    /// the room's appearance message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `order: shuffle` only: hex SHA-256 of the event's seed, committed
    /// when the event is stored (set by the node; a value sent is ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_sha256: Option<String>,
    /// `order: shuffle` only: the seed (64 hex digits), revealed once the
    /// pre-queue has been shuffled (set by the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
}

/// Most events a room holds.
pub const MAX_EVENTS: usize = 16;
/// Longest event id, in bytes.
pub const EVENT_ID_MAX_LEN: usize = 32;

/// Where a room stands with respect to its events at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventPhase<'a> {
    /// No event is to come: the room follows its settings.
    None,
    /// Before the governing event's `prequeue_start`: new joins refused.
    Countdown(&'a Event),
    /// Between `prequeue_start` and `event_start`: joins wait, no admission.
    Prequeue(&'a Event),
    /// Between `event_start` and `event_end`.
    Live(&'a Event),
}

impl EventPhase<'_> {
    /// `countdown`, `prequeue`, `live` or `none`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventPhase::None => "none",
            EventPhase::Countdown(_) => "countdown",
            EventPhase::Prequeue(_) => "prequeue",
            EventPhase::Live(_) => "live",
        }
    }

    /// The governing event, if any.
    pub fn event(&self) -> Option<&Event> {
        match *self {
            EventPhase::None => None,
            EventPhase::Countdown(e) | EventPhase::Prequeue(e) | EventPhase::Live(e) => Some(e),
        }
    }
}

impl Event {
    /// Checks the id, the times' order and the page text.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty()
            || self.id.len() > EVENT_ID_MAX_LEN
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "event id must be 1 to {EVENT_ID_MAX_LEN} of a-z 0-9 - _, not {:?}",
                self.id
            ));
        }
        if !(self.prequeue_start <= self.event_start && self.event_start < self.event_end) {
            return Err(format!(
                "event {}: prequeue_start <= event_start < event_end must hold",
                self.id
            ));
        }
        if let Some(m) = &self.message {
            if m.len() > MESSAGE_MAX_LEN {
                return Err(format!(
                    "event {}: message is longer than {MESSAGE_MAX_LEN} bytes",
                    self.id
                ));
            }
            if m.chars().any(|c| c.is_control() && c != '\n') {
                return Err(format!(
                    "event {}: message contains control characters",
                    self.id
                ));
            }
        }
        for (name, v) in [("seed_sha256", &self.seed_sha256), ("seed", &self.seed)] {
            if let Some(v) = v
                && !crate::audit::is_sha256_hex(v)
            {
                return Err(format!("event {}: {name} must be 64 hex digits", self.id));
            }
        }
        Ok(())
    }
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
    /// An open FIFO room admitting up to `capacity` sessions of 60 s to
    /// `target_url`: no admission rate, no proof of work, Pace's own page,
    /// no events. Other settings by struct update
    /// (`RoomConfig { session_ttl_secs: 600, ..RoomConfig::open(2, url) }`).
    pub fn open(capacity: u32, target_url: impl Into<String>) -> RoomConfig {
        RoomConfig {
            capacity,
            admit_per_minute: None,
            session_ttl_secs: 60,
            target_url: target_url.into(),
            state: RoomState::Open,
            pow_difficulty: 0,
            mode: QueueMode::Fifo,
            appearance: Appearance::default(),
            events: Vec::new(),
        }
    }

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
        self.validate_events()?;
        self.appearance.validate()
    }

    /// Each event valid, ids unique, at most [`MAX_EVENTS`], and no two
    /// overlapping (from `prequeue_start` to `event_end`).
    fn validate_events(&self) -> Result<(), String> {
        if self.events.len() > MAX_EVENTS {
            return Err(format!("at most {MAX_EVENTS} events per room"));
        }
        for e in &self.events {
            e.validate()?;
        }
        let mut sorted: Vec<&Event> = self.events.iter().collect();
        sorted.sort_by_key(|e| e.prequeue_start);
        for pair in sorted.windows(2) {
            if pair[1].prequeue_start < pair[0].event_end {
                return Err(format!(
                    "events {} and {} overlap: an event's pre-queue opens after the previous event ends",
                    pair[0].id, pair[1].id
                ));
            }
        }
        let mut ids: Vec<&str> = self.events.iter().map(|e| e.id.as_str()).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err("two events have the same id".into());
        }
        Ok(())
    }

    /// Where the room stands at `now_ms` (the store's clock): the first
    /// event not yet ended governs.
    pub fn phase(&self, now_ms: u64) -> EventPhase<'_> {
        let Some(e) = self
            .events
            .iter()
            .filter(|e| e.event_end > now_ms)
            .min_by_key(|e| e.prequeue_start)
        else {
            return EventPhase::None;
        };
        if now_ms < e.prequeue_start {
            EventPhase::Countdown(e)
        } else if now_ms < e.event_start {
            EventPhase::Prequeue(e)
        } else {
            EventPhase::Live(e)
        }
    }

    /// The event with id `id`.
    pub fn event(&self, id: &str) -> Option<&Event> {
        self.events.iter().find(|e| e.id == id)
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

    fn ev(id: &str, pq: u64, start: u64, end: u64) -> Event {
        Event {
            id: id.into(),
            prequeue_start: pq,
            event_start: start,
            event_end: end,
            order: EventOrder::Fifo,
            capacity: None,
            admit_per_minute: None,
            message: None,
            seed_sha256: None,
            seed: None,
        }
    }

    fn base() -> RoomConfig {
        RoomConfig::open(1, "https://x/")
    }

    #[test]
    fn events_are_ordered_in_time_and_do_not_overlap() {
        let mut c = base();
        c.events = vec![ev("a", 10, 20, 30), ev("b", 30, 40, 50)];
        assert_eq!(c.validate(), Ok(()));
        c.events[1].prequeue_start = 29;
        assert!(c.validate().unwrap_err().contains("overlap"));
        c.events = vec![ev("a", 10, 20, 20)];
        assert!(
            c.validate()
                .unwrap_err()
                .contains("event_start < event_end")
        );
        c.events = vec![ev("a", 21, 20, 30)];
        assert!(c.validate().is_err());
        c.events = vec![ev("A b", 10, 20, 30)];
        assert!(c.validate().unwrap_err().contains("event id"));
        c.events = vec![ev("a", 10, 20, 30), ev("a", 40, 50, 60)];
        assert!(c.validate().unwrap_err().contains("same id"));
        c.events = (0..=MAX_EVENTS as u64)
            .map(|i| ev(&format!("e{i}"), i * 10, i * 10 + 1, i * 10 + 2))
            .collect();
        assert!(c.validate().unwrap_err().contains("at most"));
        c.events = vec![ev("a", 10, 20, 30)];
        c.events[0].seed_sha256 = Some("nothex".into());
        assert!(c.validate().unwrap_err().contains("64 hex"));
    }

    #[test]
    fn the_first_event_not_ended_governs() {
        let mut c = base();
        assert_eq!(c.phase(0), EventPhase::None);
        c.events = vec![ev("b", 100, 200, 300), ev("a", 10, 20, 30)];
        assert_eq!(c.phase(5).as_str(), "countdown");
        assert_eq!(c.phase(5).event().unwrap().id, "a");
        assert_eq!(c.phase(10).as_str(), "prequeue");
        assert_eq!(c.phase(20).as_str(), "live");
        // Between two events: the next one's countdown.
        assert_eq!(c.phase(30).as_str(), "countdown");
        assert_eq!(c.phase(30).event().unwrap().id, "b");
        assert_eq!(c.phase(299).as_str(), "live");
        assert_eq!(c.phase(300), EventPhase::None);
        // Absent events are not serialised; a stored config reads back.
        assert!(!serde_json::to_string(&base()).unwrap().contains("events"));
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<RoomConfig>(&json).unwrap(), c);
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
