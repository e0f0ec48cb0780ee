//! A device's stable identity: its type, detected from the OS, and its id,
//! created once and persisted.

use std::fs;
use std::io::Write;
use std::path::Path;

use pace_protocol::DeviceId;

/// The kind of device, the prefix of its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceType {
    /// A Linux machine.
    Linux,
    /// A Windows machine.
    Windows,
    /// A macOS machine.
    Mac,
    /// An Android device.
    Android,
    /// An iOS device.
    Ios,
    /// Anything else.
    Other,
}

impl DeviceType {
    /// The type of the machine this code runs on.
    pub fn detect() -> DeviceType {
        match std::env::consts::OS {
            "linux" => DeviceType::Linux,
            "windows" => DeviceType::Windows,
            "macos" => DeviceType::Mac,
            "android" => DeviceType::Android,
            "ios" => DeviceType::Ios,
            _ => DeviceType::Other,
        }
    }

    /// The id prefix for this type.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::Linux => "linux",
            DeviceType::Windows => "windows",
            DeviceType::Mac => "mac",
            DeviceType::Android => "android",
            DeviceType::Ios => "ios",
            DeviceType::Other => "device",
        }
    }

    /// The type named by an id's prefix (`linux_…` → [`DeviceType::Linux`]),
    /// if it has one of the prefixes [`DeviceType::new_id`] writes.
    pub fn from_id(id: &DeviceId) -> Option<DeviceType> {
        let (prefix, _) = id.as_str().split_once('_')?;
        [
            DeviceType::Linux,
            DeviceType::Windows,
            DeviceType::Mac,
            DeviceType::Android,
            DeviceType::Ios,
            DeviceType::Other,
        ]
        .into_iter()
        .find(|t| t.as_str() == prefix)
    }

    /// A new id for a device of this type: `<type>_<full uuid v4>`.
    pub fn new_id(self) -> DeviceId {
        let id = format!("{}_{}", self.as_str(), uuid::Uuid::new_v4().hyphenated());
        // Prefix and UUID use only characters the id rules allow.
        DeviceId::parse(&id).unwrap_or_else(|e| unreachable!("generated id {id} invalid: {e}"))
    }
}

/// Why the identity file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the file failed.
    #[error("device id file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file holds something that is not a valid device id.
    #[error("device id file {path} holds an invalid id ({reason}); fix or remove it")]
    Invalid {
        /// The file.
        path: String,
        /// Why the id is invalid.
        reason: pace_protocol::IdError,
    },
}

/// Reads the device id from `path`, or creates one for `kind` and writes it
/// there (atomically: a temporary file renamed into place, so a crash never
/// leaves half an id). The same path always yields the same id.
pub fn load_or_create_device_id(path: &Path, kind: DeviceType) -> Result<DeviceId, IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    };
    match fs::read_to_string(path) {
        Ok(text) => {
            return DeviceId::parse(text.trim()).map_err(|reason| IdentityError::Invalid {
                path: path.display().to_string(),
                reason,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let id = kind.new_id();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(format!("{id}\n").as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_carry_the_type_and_a_full_uuid() {
        let id = DeviceType::Windows.new_id();
        let (kind, rest) = id.as_str().split_once('_').unwrap();
        assert_eq!(kind, "windows");
        assert_eq!(uuid::Uuid::parse_str(rest).unwrap().get_version_num(), 4);
        assert_eq!(rest.len(), 36, "the full UUID, not a truncated one");
    }

    #[test]
    fn ids_do_not_collide() {
        let ids: HashSet<_> = (0..100_000).map(|_| DeviceType::Linux.new_id()).collect();
        assert_eq!(ids.len(), 100_000);
    }

    #[test]
    fn the_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/device-id");
        let first = load_or_create_device_id(&path, DeviceType::Linux).unwrap();
        let again = load_or_create_device_id(&path, DeviceType::Mac).unwrap();
        assert_eq!(first, again, "a stored id wins over the type given");
        assert!(first.as_str().starts_with("linux_"));
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn a_corrupt_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device-id");
        fs::write(&path, "not a valid id!\n").unwrap();
        let err = load_or_create_device_id(&path, DeviceType::Linux).unwrap_err();
        assert!(matches!(err, IdentityError::Invalid { .. }), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "not a valid id!\n");
    }

    #[test]
    fn the_type_is_read_back_from_the_id() {
        for t in [DeviceType::Linux, DeviceType::Mac, DeviceType::Other] {
            assert_eq!(DeviceType::from_id(&t.new_id()), Some(t));
        }
        assert_eq!(
            DeviceType::from_id(&DeviceId::parse("kiosk_1").unwrap()),
            None
        );
        assert_eq!(
            DeviceType::from_id(&DeviceId::parse("linux").unwrap()),
            None
        );
    }

    #[test]
    fn detects_this_machine() {
        assert_ne!(DeviceType::detect().as_str(), "");
    }
}
