//! The Pace device client library.
//!
//! This first part gives a device its identity: a stable device id,
//! created once and kept in a file the caller chooses, in the form
//! `<device-type>_<uuid>` with the full UUID (an 8-hex-character suffix
//! collides after about 65,000 devices; a full v4 UUID does not in
//! practice). The connection client (connect with header + query,
//! reconnect with backoff, resume) builds on it.
//!
//! # Layout
//!
//! - [`identity`]: device type detection, id creation and persistence.

pub mod identity;

pub use identity::{DeviceType, IdentityError, load_or_create_device_id};
