//! Device registration (`POST /api/v1/devices/register`): a device says
//! what it is and gets a signed device token, which every WebSocket
//! handshake then carries. Registering an id that is already registered
//! needs that device's current token (a refresh: the node answers with a
//! new token); without it the node answers 409 `device_exists`, so nobody
//! takes a device id over by registering it.
//!
//! [`register`] is the single request; [`crate::credentials`] keeps the
//! token in a file and decides when to register or refresh.

use pace_protocol::rest::{RegisterRequest, RegisterResponse};
use pace_protocol::{DeviceId, ErrorCode, GroupId};

use crate::config::Config;
use crate::http::{Exchange, body_excerpt, error_detail, exchange};
use crate::identity::DeviceType;

/// The registration route.
pub const REGISTER_PATH: &str = "/api/v1/devices/register";

/// Longest free-text field the node accepts, in bytes.
pub const MAX_FIELD_LEN: usize = 128;

/// What a device says about itself when it registers. The device id comes
/// from the [`Config`] the registration is sent with.
///
/// [`DeviceInfo::detect`] fills it from this machine; adjust the public
/// fields after. Free-text fields must hold at most [`MAX_FIELD_LEN`] bytes
/// and no control characters (the node answers 400 otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceInfo {
    /// Kind of device (sent as `type`): the device id's type prefix
    /// (`linux`, `windows`, `mac`, `android`, `ios`, `device`).
    pub kind: String,
    /// Hardware model (on Linux, the DMI product name when readable).
    pub model: String,
    /// Operating system (`std::env::consts::OS`).
    pub os: String,
    /// Operating system version (on Linux, the kernel release).
    pub os_version: String,
    /// Version of the application registering.
    pub app_version: String,
    /// The department (group) the device belongs to.
    pub department: Option<GroupId>,
    /// The person using the device, when known (the node puts it in the
    /// token).
    pub user: Option<String>,
    /// The tenant whose admins may see this device (must exist on the node).
    pub tenant: Option<String>,
}

impl DeviceInfo {
    /// What this machine is: the type from `device_id`'s prefix (else
    /// [`DeviceType::detect`]), the OS from `std::env::consts::OS`, on
    /// Linux the kernel release and DMI product name, and `app_version`
    /// as given.
    pub fn detect(device_id: &DeviceId, app_version: &str) -> DeviceInfo {
        let kind = DeviceType::from_id(device_id).unwrap_or_else(DeviceType::detect);
        let (model, os_version) = if cfg!(target_os = "linux") {
            (
                read_line("/sys/devices/virtual/dmi/id/product_name"),
                read_line("/proc/sys/kernel/osrelease"),
            )
        } else {
            (String::new(), String::new())
        };
        DeviceInfo {
            kind: kind.as_str().to_owned(),
            model,
            os: std::env::consts::OS.to_owned(),
            os_version,
            app_version: clean(app_version),
            department: None,
            user: None,
            tenant: None,
        }
    }

    /// Sets the department.
    pub fn with_department(mut self, department: GroupId) -> DeviceInfo {
        self.department = Some(department);
        self
    }

    /// Sets the user.
    pub fn with_user(mut self, user: impl Into<String>) -> DeviceInfo {
        self.user = Some(user.into());
        self
    }

    /// Sets the tenant.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> DeviceInfo {
        self.tenant = Some(tenant.into());
        self
    }
}

/// The first line of a small system file, cleaned; empty when unreadable.
fn read_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| clean(s.lines().next().unwrap_or_default()))
        .unwrap_or_default()
}

/// `s` without control characters, trimmed, at most [`MAX_FIELD_LEN`] bytes.
fn clean(s: &str) -> String {
    let s: String = s.chars().filter(|c| !c.is_control()).collect();
    let s = s.trim();
    let mut end = s.len().min(MAX_FIELD_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].trim_end().to_owned()
}

/// A token the node issued.
#[derive(Clone, PartialEq, Eq)]
pub struct Registration {
    /// The device id it was issued for.
    pub device_id: DeviceId,
    /// The device token (a JWT): send it in every handshake.
    pub token: String,
    /// When it expires, Unix seconds.
    pub expires_at: u64,
    /// True for a refresh of an existing registration (HTTP 200), false
    /// for a new device (HTTP 201).
    pub refreshed: bool,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("device_id", &self.device_id)
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("refreshed", &self.refreshed)
            .finish()
    }
}

/// Why a registration failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// 409 `device_exists`: the id is registered and the request did not
    /// carry that device's current token. Registering again will not help:
    /// present the current token, or use another id.
    #[error("device id is already registered (device_exists): {message}")]
    Taken {
        /// The node's message.
        message: String,
    },
    /// 401 `device_token_mismatch`: the token presented belongs to another
    /// device id.
    #[error("the token presented belongs to another device (device_token_mismatch): {message}")]
    Mismatch {
        /// The node's message.
        message: String,
    },
    /// 401 `invalid_device_token`: the token presented is not one this
    /// cluster signed (forged, malformed, or from other keys). An expired
    /// token of this cluster is not refused here: it can refresh.
    #[error("the token presented is not valid (invalid_device_token): {message}")]
    Invalid {
        /// The node's message.
        message: String,
    },
    /// The node refused the registration for another reason (400: a field
    /// too long, an unknown tenant; 404: a node without registration).
    #[error("registration refused: HTTP {status} {}: {message}", code.map_or("", |c| c.as_str()))]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The error code, when the body carried one.
        code: Option<ErrorCode>,
        /// The node's message, or the start of the body.
        message: String,
    },
    /// No node could be reached, or it answered 5xx, 408, 429 or a
    /// `retryable` error (store unavailable): try again later.
    #[error("registration unavailable, retry later: {message}")]
    Unavailable {
        /// What went wrong.
        message: String,
    },
    /// The node answered 200/201 without the documented JSON.
    #[error("unexpected registration answer: {0}")]
    BadAnswer(String),
    /// The configuration is not usable (no URL, bad URL, TLS not built).
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl RegisterError {
    /// Whether the same request may succeed later ([`RegisterError::Unavailable`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegisterError::Unavailable { .. })
    }
}

/// Registers `config.device_id` described by `info`, or refreshes its token
/// when `current_token` is the device's current token (also when that
/// token has expired). Tries the base URLs of `config` in order while they
/// cannot be reached; bounded by `config.connect_timeout` per URL.
///
/// Errors: [`RegisterError::Taken`] (the id is registered and no current
/// token was given, or the one given is no longer current),
/// [`RegisterError::Mismatch`] and [`RegisterError::Invalid`] (the token
/// given), [`RegisterError::Unavailable`] (retryable), and the rest.
pub async fn register(
    config: &Config,
    info: &DeviceInfo,
    current_token: Option<&str>,
) -> Result<Registration, RegisterError> {
    let endpoints = config
        .endpoints()
        .map_err(|e| RegisterError::Config(e.to_string()))?;
    let body = RegisterRequest {
        device_id: config.device_id.clone(),
        kind: info.kind.clone(),
        model: info.model.clone(),
        os: info.os.clone(),
        os_version: info.os_version.clone(),
        app_version: info.app_version.clone(),
        department: info.department.clone(),
        user: info.user.clone(),
        tenant: info.tenant.clone(),
    };
    // Strings and numbers only: serializing cannot fail.
    let json = serde_json::to_vec(&body).map_err(|e| RegisterError::Config(e.to_string()))?;
    let mut last = None;
    for ep in &endpoints {
        let req = Exchange {
            method: http::Method::POST,
            path: REGISTER_PATH,
            headers: Vec::new(),
            bearer: current_token,
            json: Some(json.clone()),
        };
        match exchange(ep, req, config.connect_timeout).await {
            Ok((status, answer)) => {
                let result = parse_answer(status, &answer, &config.device_id);
                match &result {
                    Ok(r) => {
                        tracing::info!(device = %config.device_id, url = %ep, refreshed = r.refreshed, expires_at = r.expires_at, "device registered");
                    }
                    Err(e) => {
                        tracing::info!(device = %config.device_id, url = %ep, error = %e, "device registration failed");
                    }
                }
                // An answer is final, unless the node says to retry: then
                // the next URL may do better.
                match result {
                    Err(e @ RegisterError::Unavailable { .. }) => last = Some(e),
                    other => return other,
                }
            }
            Err(message) => {
                last = Some(RegisterError::Unavailable {
                    message: format!("{}: {message}", ep.http_url(REGISTER_PATH)),
                });
            }
        }
    }
    Err(last.unwrap_or_else(|| RegisterError::Config("no base URL given".into())))
}

/// Turns the node's answer into a registration or an error.
fn parse_answer(
    status: u16,
    body: &[u8],
    device: &DeviceId,
) -> Result<Registration, RegisterError> {
    if status == 200 || status == 201 {
        let a: RegisterResponse =
            serde_json::from_slice(body).map_err(|e| RegisterError::BadAnswer(e.to_string()))?;
        if a.device_id != *device {
            return Err(RegisterError::BadAnswer(format!(
                "token issued for {}, not {device}",
                a.device_id
            )));
        }
        if !crate::config::valid_token(&a.token) {
            return Err(RegisterError::BadAnswer(
                "the token is empty or holds characters a header cannot carry".into(),
            ));
        }
        return Ok(Registration {
            device_id: device.clone(),
            token: a.token,
            expires_at: a.expires_at,
            refreshed: status == 200,
        });
    }
    let detail = error_detail(body);
    let message = detail
        .as_ref()
        .map_or_else(|| body_excerpt(body), |d| d.message.clone());
    let code = detail.as_ref().map(|d| d.code);
    match code {
        Some(ErrorCode::DeviceExists) => return Err(RegisterError::Taken { message }),
        Some(ErrorCode::DeviceTokenMismatch) => return Err(RegisterError::Mismatch { message }),
        Some(ErrorCode::InvalidDeviceToken) => return Err(RegisterError::Invalid { message }),
        _ => {}
    }
    if status == 409 {
        return Err(RegisterError::Taken { message });
    }
    let retryable = status >= 500
        || status == 408
        || status == 429
        || detail.as_ref().is_some_and(|d| d.retryable);
    if retryable {
        return Err(RegisterError::Unavailable {
            message: format!("HTTP {status}: {message}"),
        });
    }
    Err(RegisterError::Rejected {
        status,
        code,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> DeviceId {
        DeviceId::parse("linux_1").unwrap()
    }

    fn err(code: &str, retryable: bool) -> String {
        format!(r#"{{"error":{{"code":"{code}","message":"m","retryable":{retryable}}}}}"#)
    }

    #[test]
    fn answers_map_to_registrations_and_typed_errors() {
        let ok = br#"{"device_id":"linux_1","token":"a.b.c","expires_at":99}"#;
        let r = parse_answer(201, ok, &dev()).unwrap();
        assert_eq!(
            (r.token.as_str(), r.expires_at, r.refreshed),
            ("a.b.c", 99, false)
        );
        assert!(parse_answer(200, ok, &dev()).unwrap().refreshed);
        assert!(!format!("{r:?}").contains("a.b.c"), "token redacted");

        let other = br#"{"device_id":"linux_2","token":"a.b.c","expires_at":99}"#;
        assert!(matches!(
            parse_answer(201, other, &dev()),
            Err(RegisterError::BadAnswer(_))
        ));
        let spaced = br#"{"device_id":"linux_1","token":"a b","expires_at":99}"#;
        assert!(matches!(
            parse_answer(201, spaced, &dev()),
            Err(RegisterError::BadAnswer(_))
        ));

        let cases = [
            (409, err("device_exists", false), "taken"),
            (409, String::new(), "taken"),
            (401, err("device_token_mismatch", false), "mismatch"),
            (401, err("invalid_device_token", false), "invalid"),
            (503, err("store_unavailable", true), "unavailable"),
            (502, "<html>".to_owned(), "unavailable"),
            (429, String::new(), "unavailable"),
            (400, err("bad_request", false), "rejected"),
            (404, err("not_found", false), "rejected"),
        ];
        for (status, body, want) in cases {
            let got = match parse_answer(status, body.as_bytes(), &dev()) {
                Err(RegisterError::Taken { .. }) => "taken",
                Err(RegisterError::Mismatch { .. }) => "mismatch",
                Err(RegisterError::Invalid { .. }) => "invalid",
                Err(RegisterError::Unavailable { .. }) => "unavailable",
                Err(RegisterError::Rejected { .. }) => "rejected",
                other => panic!("{status} {body}: {other:?}"),
            };
            assert_eq!(got, want, "{status} {body}");
        }
    }

    #[test]
    fn detected_info_fits_the_node_rules() {
        let info = DeviceInfo::detect(&DeviceId::parse("windows_x").unwrap(), "1.2.3\n");
        assert_eq!(info.kind, "windows", "type from the id prefix");
        assert_eq!(info.os, std::env::consts::OS);
        assert_eq!(info.app_version, "1.2.3");
        for f in [&info.kind, &info.model, &info.os, &info.os_version] {
            assert!(f.len() <= MAX_FIELD_LEN && !f.chars().any(char::is_control));
        }
        let other = DeviceInfo::detect(&DeviceId::parse("kiosk-7").unwrap(), "1");
        assert_eq!(other.kind, DeviceType::detect().as_str());
    }

    #[test]
    fn clean_cuts_on_characters() {
        let long = "é".repeat(100);
        let c = clean(&long);
        assert!(c.len() <= MAX_FIELD_LEN && c.chars().all(|ch| ch == 'é'));
        assert_eq!(clean(" a\tb\u{7}\n"), "ab");
    }
}
