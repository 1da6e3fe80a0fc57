//! The capabilities JSON of `VERSION` (the "version data": a NUL-terminated
//! UTF-8 JSON object), typed. The server emits [`VersionData::server`]; the
//! client sends [`VersionData::client`] and parses the reply with
//! [`VersionData::parse`]; the server parses the client's the same way.
//!
//! Keys serialise in alphabetical order (what `serde_json::json!` produced
//! before this type existed), so what sbnet advertises is unchanged.

use crate::wire::{page_size, MAX_DATA_XFER, MAX_FDS};
use serde::{Deserialize, Deserializer, Serialize};

/// The whole version data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionData {
    /// `capabilities`; when present it must be an object.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub capabilities: Option<Capabilities>,
}

/// The `capabilities` object. Fields are in alphabetical order (see the
/// module documentation). Each numeric field, when present, must be a
/// non-negative integer; unknown keys are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Largest `count` of one region access.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_data_xfer_size: Option<u64>,
    /// Most DMA maps.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_dma_maps: Option<u64>,
    /// Most descriptors in one message.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_msg_fds: Option<u64>,
    /// Migration capabilities. sbnet does not migrate: it is not checked,
    /// and one that does not parse is ignored.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub migration: Option<Migration>,
    /// Supported DMA page sizes (a bit mask; sbnet sends its page size).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub pgsizes: Option<u64>,
}

/// The `migration` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    /// Dirty-page tracking page size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgsize: Option<u64>,
}

/// A key that is present must hold a `T` (not `null`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Any value is accepted; one that is not a `T` reads as absent.
fn lenient<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(
    d: D,
) -> Result<Option<T>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).ok())
}

impl VersionData {
    /// What sbnet's server advertises: `max_dma_maps` is the backend's own
    /// limit ([`crate::server::Backend::max_dma_maps`]); no `migration`
    /// (sbnet does not migrate).
    pub fn server(max_dma_maps: u32) -> VersionData {
        let pgsize = page_size();
        VersionData {
            capabilities: Some(Capabilities {
                max_data_xfer_size: Some(u64::from(MAX_DATA_XFER)),
                max_dma_maps: Some(u64::from(max_dma_maps)),
                max_msg_fds: Some(MAX_FDS as u64),
                migration: None,
                pgsizes: Some(pgsize),
            }),
        }
    }

    /// What sbnet's client proposes.
    pub fn client() -> VersionData {
        VersionData {
            capabilities: Some(Capabilities {
                max_data_xfer_size: Some(u64::from(MAX_DATA_XFER)),
                max_msg_fds: Some(MAX_FDS as u64),
                ..Capabilities::default()
            }),
        }
    }

    /// The version data as sent: JSON and a terminating NUL.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain integers and options cannot fail.
        let mut out = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        out.push(0);
        out
    }

    /// Parses version data as received: empty (the data is optional:
    /// `Ok(None)`), or NUL-terminated UTF-8 JSON holding an object whose
    /// `capabilities`, when present, is an object.
    pub fn parse(data: &[u8]) -> Result<Option<VersionData>, &'static str> {
        let Some((&last, text)) = data.split_last() else {
            return Ok(None); // "version data ... Optional."
        };
        if last != 0 {
            return Err("version data is not NUL-terminated");
        }
        let text = std::str::from_utf8(text).map_err(|_| "version data is not UTF-8")?;
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|_| "version data is not valid JSON")?;
        let obj = value
            .as_object()
            .ok_or("version data is not a JSON object")?;
        if obj.get("capabilities").is_some_and(|c| !c.is_object()) {
            return Err("\"capabilities\" is not an object");
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|_| "a numeric capability is not a non-negative integer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_data_is_checked() {
        assert_eq!(VersionData::parse(b""), Ok(None));
        assert!(VersionData::parse(b"{}\0").is_ok());
        let caps = VersionData::parse(b"{\"capabilities\":{\"max_msg_fds\":8}}\0")
            .expect("valid")
            .and_then(|v| v.capabilities)
            .expect("capabilities");
        assert_eq!(caps.max_msg_fds, Some(8));
        assert!(VersionData::parse(b"{\"capabilities\":{\"migration\":5,\"x\":[]}}\0").is_ok());
        for bad in [
            &b"{}"[..],
            b"{not json}\0",
            b"\xff\xfe\0",
            b"[1,2]\0",
            b"{\"capabilities\":3}\0",
            b"{\"capabilities\":null}\0",
            b"{\"capabilities\":{\"max_msg_fds\":-1}}\0",
            b"{\"capabilities\":{\"pgsizes\":null}}\0",
            b"{\"capabilities\":{\"max_dma_maps\":1.5}}\0",
            b"{}\0{}\0",
        ] {
            assert!(VersionData::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Byte-for-byte what the server and client send: the backend's map
    /// limit, no migration.
    #[test]
    fn advertised_json_is_unchanged() {
        let pg = page_size();
        let server = serde_json::json!({
            "capabilities": {
                "max_msg_fds": MAX_FDS,
                "max_data_xfer_size": MAX_DATA_XFER,
                "pgsizes": pg,
                "max_dma_maps": 1024,
            }
        });
        let mut want = server.to_string().into_bytes();
        want.push(0);
        assert_eq!(VersionData::server(1024).to_bytes(), want);
        let client = serde_json::json!({
            "capabilities": {
                "max_msg_fds": MAX_FDS,
                "max_data_xfer_size": MAX_DATA_XFER,
            }
        });
        let mut want = client.to_string().into_bytes();
        want.push(0);
        assert_eq!(VersionData::client().to_bytes(), want);
    }
}
