//! What a link is made of ([`LinkSpec`]: a name, two sockets, [`Params`])
//! and where specs come from: the `--config` TOML file ([`load`]), the
//! one-link CLI shorthand and the control socket's `add`. Every source is
//! checked by the same rules ([`LinkSpec::check`]); a file's errors name the
//! line and the field.

use sbnet_abi::net::MAX_QUEUE_PAIRS;
use sbnet_abi::shm::{GeometryError, SlotGeometry};
use sbnet_device::pair::{ConfigError as PairRule, PairConfig};
use sbnet_device::switch::SwitchConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Declares the per-link parameters once: [`Params`] (resolved, with the
/// defaults), [`FileParams`] (the TOML keys, with spans) and [`CtlParams`]
/// (the control socket's JSON keys).
macro_rules! params {
    ($($(#[$m:meta])* $f:ident: $t:ty = $d:expr => [$($a:tt)*],)*) => {
        /// The parameters of one link; every one has a default and may be
        /// set in `[defaults]`, per `[[link]]` or in a `ctl add`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
        pub struct Params {
            $($(#[$m])* pub $f: $t,)*
        }

        impl Params {
            /// Every key, in declaration order.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($f),)*];
        }

        impl Default for Params {
            fn default() -> Self {
                Self { $($f: $d,)* }
            }
        }

        /// The parameter keys of a TOML table, each optional, with spans.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FileParams {
            $($(#[$m])* $f: Option<Spanned<$t>>,)*
        }

        /// One `[[link]]` table: a name, two sockets and parameter keys.
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileLink {
            name: Spanned<String>,
            sockets: Spanned<Vec<PathBuf>>,
            $($f: Option<Spanned<$t>>,)*
        }

        impl FileLink {
            /// The parameter keys of this table.
            fn params(&self) -> FileParams {
                FileParams { $($f: self.$f.clone(),)* }
            }
        }

        impl FileParams {
            /// `base` with the keys this table sets.
            fn apply(&self, mut base: Params) -> Params {
                $(if let Some(v) = &self.$f { base.$f = *v.get_ref(); })*
                base
            }

            /// The byte span of key `field`, when this table sets it.
            fn span(&self, field: &str) -> Option<std::ops::Range<usize>> {
                match field {
                    $(stringify!($f) => self.$f.as_ref().map(|v| v.span()),)*
                    _ => None,
                }
            }
        }

        /// The parameter keys of a control `add` request (and the flags of
        /// `serve --socket` and `ctl add`), each optional.
        #[derive(Debug, Default, Clone, serde::Serialize, Deserialize, clap::Args)]
        #[serde(deny_unknown_fields)]
        pub struct CtlParams {
            $(
                $(#[$m])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                #[arg(long, $($a)*)]
                pub $f: Option<$t>,
            )*
        }

        impl CtlParams {
            /// `base` with the keys this request sets.
            pub fn apply(&self, mut base: Params) -> Params {
                $(if let Some(v) = self.$f { base.$f = v; })*
                base
            }
        }
    };
}

params! {
    /// Slots in the link's Shared Buffers region (power of two, 2..=32768; default 512).
    slots: u32 = 512 => [value_name = "N"],
    /// Bytes per slot (power of two, 2048..=131072; default 2048); the largest frame is this minus 12.
    slot_size: u32 = 2048 => [value_name = "BYTES"],
    /// Largest virtqueue size a driver may choose (power of two, 2..=32768, at least
    /// slots/2 + 128; default 1024).
    queue_size: u16 = 1024 => [value_name = "N"],
    /// Queue pairs per function (power of two, 1..=16, at most slots/2; default 1). Above 1 the
    /// functions offer VIRTIO_NET_F_MQ with a control queue (`ethtool -L eth0 combined N`) and the
    /// slots are split into sub-pairs: the queue size must then be at least slots/N/2 + 128.
    queue_pairs: u16 = 1 => [value_name = "N"],
    /// Back the Shared Buffers region with huge pages (a hugetlb memfd): the region size
    /// (slots x slot size) must be a multiple of the huge page size, and enough pages must be
    /// reserved (vm.nr_hugepages). Default off.
    huge_pages: bool = false => [value_name = "BOOL", num_args = 0..=1, default_missing_value = "true"],
    /// Most TX chains handled per side and polling round (default 64).
    burst: usize = 64 => [value_name = "N"],
    /// How long a TX may wait for the peer's RX buffer, in microseconds (docs/abi.md §6,
    /// "Zero-copy mode": Wait; default 20000).
    tx_wait_us: u64 = 20_000 => [value_name = "US"],
}

/// One link as the service runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    /// `[A-Za-z0-9_.-]{1,64}`.
    pub name: String,
    /// Side 0's socket, then side 1's.
    pub sockets: [PathBuf; 2],
    /// Geometry and tunables.
    pub params: Params,
}

/// A rule a link breaks: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {msg}")]
pub struct FieldError {
    /// The key (`slots`, `name`, `sockets`...).
    pub field: &'static str,
    /// What is wrong and what to do.
    pub msg: String,
}

impl FieldError {
    /// The error in the CLI's words: each backquoted key `x_y` becomes
    /// its flag `--x-y`.
    pub fn cli(&self) -> String {
        let mut msg = format!("`{}`: {}", self.field, self.msg);
        for key in Params::KEYS.iter().chain(&["name", "sockets"]) {
            msg = msg.replace(&format!("`{key}`"), &format!("--{}", key.replace('_', "-")));
        }
        msg.replace("--sockets", "--socket")
    }
}

fn field_err(field: &'static str, msg: impl Into<String>) -> FieldError {
    FieldError {
        field,
        msg: msg.into(),
    }
}

/// Whether `name` is a valid link name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl LinkSpec {
    /// A spec from a name, socket paths and parameters: checks the name and
    /// the sockets (exactly two, distinct).
    pub fn new(name: &str, sockets: &[PathBuf], params: Params) -> Result<Self, FieldError> {
        if !valid_name(name) {
            return Err(field_err(
                "name",
                format!("{name:?} is not 1 to 64 characters of A-Z a-z 0-9 _ . -"),
            ));
        }
        let sockets: [PathBuf; 2] = sockets.to_vec().try_into().map_err(|s: Vec<PathBuf>| {
            field_err(
                "sockets",
                format!(
                    "give exactly two socket paths (side 0 and side 1), got {}",
                    s.len()
                ),
            )
        })?;
        if sockets[0] == sockets[1] {
            return Err(field_err(
                "sockets",
                format!(
                    "the two socket paths are the same: {}",
                    sockets[0].display()
                ),
            ));
        }
        Ok(Self {
            name: name.to_string(),
            sockets,
            params,
        })
    }

    /// The pair configuration, once every parameter rule holds.
    pub fn check(&self) -> Result<PairConfig, FieldError> {
        let p = &self.params;
        let geometry = SlotGeometry::new(p.slot_size, p.slots).map_err(|e| {
            let field = match e {
                GeometryError::SlotSize(_) => "slot_size",
                GeometryError::SlotCount(_) => "slots",
            };
            field_err(field, e.to_string())
        })?;
        if p.burst == 0 {
            return Err(field_err("burst", "must be at least 1"));
        }
        let cfg = PairConfig {
            geometry,
            max_queue_size: p.queue_size,
            switch: SwitchConfig {
                burst: p.burst,
                tx_wait: Duration::from_micros(p.tx_wait_us),
            },
            huge_pages: p.huge_pages,
            queue_pairs: p.queue_pairs,
        };
        cfg.validate().map_err(|e| match e {
            PairRule::QueueSizeNotPowerOfTwo(q) => field_err(
                "queue_size",
                format!("{q} is not a power of two between 2 and 32768"),
            ),
            PairRule::QueueTooSmall {
                queue_size,
                slots,
                queue_pairs,
                need,
            } => field_err(
                "queue_size",
                format!(
                    "{queue_size} is too small for {slots} slots in {queue_pairs} queue pair(s): each side's receive \
                     queue must hold the slots its peer may own plus classic buffers (at least \
                     slots/queue_pairs/2 + 128 = {need}); raise `queue_size` or lower `slots`"
                ),
            ),
            PairRule::QueuePairs { queue_pairs, slots } => field_err(
                "queue_pairs",
                format!(
                    "{queue_pairs} queue pairs: must be a power of two between 1 and {MAX_QUEUE_PAIRS}, and at \
                     most half the {slots} slots ({})",
                    slots / 2
                ),
            ),
        })?;
        Ok(cfg)
    }
}

/// Checks that `new` shares no name and no socket path with `others`.
pub fn check_unique<'a>(
    new: &LinkSpec,
    others: impl IntoIterator<Item = &'a LinkSpec>,
) -> Result<(), FieldError> {
    for o in others {
        if o.name == new.name {
            return Err(field_err(
                "name",
                format!("a link named {:?} already exists", new.name),
            ));
        }
        if let Some(s) = new.sockets.iter().find(|s| o.sockets.contains(s)) {
            return Err(field_err(
                "sockets",
                format!("{} is already a socket of link {:?}", s.display(), o.name),
            ));
        }
    }
    Ok(())
}

/// The `--config` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: FileParams,
    #[serde(default)]
    link: Vec<Spanned<FileLink>>,
}

/// Why a config file is refused: where, and which rule.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A syntax error, an unknown key, a missing key or a value of the
    /// wrong type (the TOML parser's words).
    #[error("{path}: line {line}{}: {msg}", key.as_ref().map(|k| format!(", field `{k}`")).unwrap_or_default())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// The key on that line, when there is one.
        key: Option<String>,
        /// The parser's message.
        msg: String,
    },
    /// A link breaks a rule.
    #[error("{path}: line {line}, link {link:?}: {err}")]
    Rule {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending key (or of the link's table).
        line: usize,
        /// The link's name.
        link: String,
        /// The field and the rule.
        err: FieldError,
    },
    /// No `[[link]]` table.
    #[error("{path}: no [[link]] table: a config file serves at least one link")]
    NoLinks {
        /// The file.
        path: PathBuf,
    },
}

/// 1-based line of byte offset `at` in `src`.
fn line_of(src: &str, at: usize) -> usize {
    src.as_bytes()[..at.min(src.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The key assigned on the line holding byte `at`, if any (`key = ...`).
fn key_at(src: &str, at: usize) -> Option<String> {
    let at = at.min(src.len());
    let start = src[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = src[at..].find('\n').map_or(src.len(), |i| at + i);
    let (key, _) = src[start..end].split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('#')).then(|| key.to_string())
}

/// A checked config file.
#[derive(Debug)]
pub struct Loaded {
    /// `[defaults]` over the built-in defaults: what a `ctl add` starts from.
    pub defaults: Params,
    /// The links, in file order.
    pub links: Vec<LinkSpec>,
}

/// Parses and checks a config file's text.
pub fn parse(path: &Path, src: &str) -> Result<Loaded, ConfigError> {
    let file: File = toml::from_str(src).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        ConfigError::Syntax {
            path: path.to_path_buf(),
            line: line_of(src, at),
            key: e.span().and_then(|s| key_at(src, s.start)),
            msg: e.message().trim().to_string(),
        }
    })?;
    let defaults = file.defaults.apply(Params::default());
    let mut specs: Vec<LinkSpec> = Vec::new();
    for l in &file.link {
        let table = l.span();
        let l = l.get_ref();
        let params = l.params();
        let rule = |err: FieldError| {
            let span = match err.field {
                "name" => Some(l.name.span()),
                "sockets" => Some(l.sockets.span()),
                // The queue size is too small for the slots: when no
                // table sets it, the slots key is what made it so.
                "queue_size" => ["queue_size", "slots"]
                    .iter()
                    .find_map(|f| params.span(f).or_else(|| file.defaults.span(f))),
                f => params.span(f).or_else(|| file.defaults.span(f)),
            };
            ConfigError::Rule {
                path: path.to_path_buf(),
                line: line_of(src, span.unwrap_or(table.clone()).start),
                link: l.name.get_ref().clone(),
                err,
            }
        };
        let spec = LinkSpec::new(
            l.name.get_ref(),
            l.sockets.get_ref(),
            params.apply(defaults),
        )
        .map_err(&rule)?;
        spec.check().map_err(&rule)?;
        check_unique(&spec, &specs).map_err(&rule)?;
        specs.push(spec);
    }
    if specs.is_empty() {
        return Err(ConfigError::NoLinks {
            path: path.to_path_buf(),
        });
    }
    Ok(Loaded {
        defaults,
        links: specs,
    })
}

/// Reads, parses and checks a config file.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &src)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> String {
        parse(Path::new("t.toml"), src).unwrap_err().to_string()
    }

    const TWO: &str = r#"
[defaults]
slots = 256
queue_size = 512

[[link]]
name = "a-b"
sockets = ["/r/a-b.0", "/r/a-b.1"]

[[link]]
name = "b-c"
sockets = ["/r/b-c.0", "/r/b-c.1"]
slots = 1024
queue_size = 1024
burst = 32
"#;

    #[test]
    fn defaults_then_overrides() {
        let l = parse(Path::new("t.toml"), TWO).unwrap();
        assert_eq!(l.defaults.slots, 256);
        let s = l.links;
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "a-b");
        assert_eq!(s[0].params.slots, 256);
        assert_eq!(s[0].params.queue_size, 512);
        assert_eq!(s[0].params.burst, 64);
        assert_eq!(s[1].params.slots, 1024);
        assert_eq!(s[1].params.burst, 32);
        assert_eq!(s[1].sockets[1], PathBuf::from("/r/b-c.1"));
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        const L: &str = "[[link]]\nname = \"x\"\nsockets = [\"a\", \"b\"]\n";
        let cases: &[(String, &[&str])] = &[
            // Unknown key, wrong type, missing key (the link's table).
            (format!("{L}slotz = 3\n"), &["line 4", "slotz"]),
            (
                format!("[defaults]\nslots = \"many\"\n{L}"),
                &["line 2", "field `slots`"],
            ),
            ("[[link]]\nname = \"x\"\n".into(), &["line 1", "sockets"]),
            // A rule broken by a default names the default's line...
            (
                format!("[defaults]\nslots = 100\n{L}"),
                &["line 2", "field `slots`", "\"x\""],
            ),
            // ... and by an override, the override's line.
            (
                format!("{L}slots = 2048\n"),
                &["line 4", "field `queue_size`"],
            ),
            (
                format!("{L}slot_size = 1000\n"),
                &["line 4", "field `slot_size`"],
            ),
            (
                format!("{L}\nqueue_pairs = 3\n"),
                &["line 5", "field `queue_pairs`"],
            ),
            (format!("{L}burst = 0\n"), &["line 4", "field `burst`"]),
            (
                "[[link]]\nname = \"x y\"\nsockets = [\"a\", \"b\"]\n".into(),
                &["line 2", "field `name`"],
            ),
            (
                "[[link]]\nname = \"x\"\nsockets = [\"a\"]\n".into(),
                &["line 3", "exactly two"],
            ),
            (
                "[[link]]\nname = \"x\"\nsockets = [\"a\", \"a\"]\n".into(),
                &["line 3", "the same"],
            ),
            // Duplicates across links.
            (
                format!("{L}[[link]]\nname = \"x\"\nsockets = [\"c\", \"d\"]\n"),
                &["line 5", "already exists"],
            ),
            (
                format!("{L}[[link]]\nname = \"y\"\nsockets = [\"c\", \"b\"]\n"),
                &["line 6", "already a socket"],
            ),
            // Syntax, and no link at all.
            ("[[link]\n".into(), &["line 1"]),
            ("[defaults]\n".into(), &["no [[link]]"]),
            ("[nonsense]\n".into(), &["nonsense"]),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(want.iter().all(|w| e.contains(w)), "{text}\n{e}");
        }
    }

    #[test]
    fn names() {
        assert!(valid_name("a-b.c_9"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"x".repeat(65)));
        assert!(valid_name(&"x".repeat(64)));
    }

    #[test]
    fn ctl_params_refuse_unknown_keys() {
        let p: CtlParams = serde_json::from_str(r#"{"slots":64}"#).unwrap();
        assert_eq!(p.apply(Params::default()).slots, 64);
        assert!(serde_json::from_str::<CtlParams>(r#"{"slotz":64}"#).is_err());
    }
}
