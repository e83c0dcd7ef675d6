//! Reading a TOML config file into its serde schema, and the checks every validator uses.
//!
//! Every error names the file and the dotted field at fault (`kafka.isolation_level`,
//! `routes[0].topics[2]`), schema errors included: an unknown enum variant or a wrong type is
//! reported at its field, not only at its line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::de::DeserializeOwned;

/// A configuration problem, always naming the file and, where there is one, the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path:?}: cannot read: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML, or a document that matches no field (an unknown top-level key).
    #[error("config {path:?}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// toml's message, which names the line.
        message: String,
    },
    /// A field has a value the binary cannot use: a wrong type or unknown variant found by the
    /// schema, or a value the validator refuses.
    #[error("config {path:?}: {field}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Dotted path of the field, e.g. `topics.include[1]`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    /// The same error with `why` added to its message in parentheses.
    pub fn explained(self, why: &str) -> ConfigError {
        match self {
            ConfigError::Invalid {
                path,
                field,
                message,
            } => ConfigError::Invalid {
                path,
                field,
                message: format!("{message} ({why})"),
            },
            other => other,
        }
    }
}

/// Reads a config file's text.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Deserializes config text into its schema `T`; `path` names the file in errors.
pub fn from_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let parse = |e: toml::de::Error| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    };
    let document = toml::Deserializer::parse(text).map_err(parse)?;
    serde_path_to_error::deserialize(document).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if field == "." {
            parse(inner)
        } else {
            ConfigError::Invalid {
                path: path.to_owned(),
                field,
                message: inner.to_string().trim_end().to_owned(),
            }
        }
    })
}

/// An end of a numeric field's allowed range: a fixed number, or the value of another field of
/// the same table (named in the message, so the user knows which of the two to change).
#[derive(Debug, Clone, Copy)]
pub enum End<T> {
    /// A constant bound.
    Fixed(T),
    /// The value of the named sibling field.
    Field(&'static str, T),
}

impl<T: Copy> End<T> {
    fn value(self) -> T {
        match self {
            End::Fixed(v) | End::Field(_, v) => v,
        }
    }
}

impl<T: std::fmt::Display> std::fmt::Display for End<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Fixed(v) => write!(f, "{v}"),
            End::Field(name, v) => write!(f, "{name} ({v})"),
        }
    }
}

/// The checks of one config file: each error names the file and the field, and says the value
/// and what it missed.
#[derive(Debug, Clone, Copy)]
pub struct Checks<'a> {
    path: &'a Path,
}

impl<'a> Checks<'a> {
    /// Checks of the file at `path` (relative paths in it are resolved against its directory).
    pub fn new(path: &'a Path) -> Self {
        Self { path }
    }

    /// The config file.
    pub fn path(self) -> &'a Path {
        self.path
    }

    /// An error at `field`.
    pub fn invalid(self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// `field` holds `value`, which must be at least `min`.
    pub fn at_least<T>(self, field: &str, value: T, min: End<T>) -> Result<(), ConfigError>
    where
        T: PartialOrd + Copy + std::fmt::Display,
    {
        if value >= min.value() {
            return Ok(());
        }
        Err(self.invalid(field, format!("{value} is below the minimum of {min}")))
    }

    /// `field` holds `value`, which must lie in `min..=max`.
    pub fn within<T>(
        self,
        field: &str,
        value: T,
        min: End<T>,
        max: End<T>,
    ) -> Result<(), ConfigError>
    where
        T: PartialOrd + Copy + std::fmt::Display,
    {
        if value >= min.value() && value <= max.value() {
            return Ok(());
        }
        Err(self.invalid(field, format!("{value} is not in {min}..={max}")))
    }

    /// `field` must hold something other than blanks.
    pub fn not_blank(self, field: &str, value: &str) -> Result<(), ConfigError> {
        if value.trim().is_empty() {
            return Err(self.invalid(field, "must not be empty"));
        }
        Ok(())
    }

    /// Makes a relative path absolute against the config file's directory.
    pub fn absolute(self, file: &Path) -> PathBuf {
        if file.is_relative() {
            self.path.parent().unwrap_or(Path::new(".")).join(file)
        } else {
            file.to_owned()
        }
    }

    /// `field` names a file that must exist; returns its absolute path.
    pub fn existing_file(self, field: &str, file: &Path) -> Result<PathBuf, ConfigError> {
        let file = self.absolute(file);
        if !file.is_file() {
            return Err(self.invalid(field, format!("no such file {file:?}")));
        }
        Ok(file)
    }

    /// Compiles `field`'s list of whole-name regexes; an error names the element
    /// (`field[i]`).
    pub fn whole_matches(
        self,
        field: &str,
        patterns: &[String],
    ) -> Result<Vec<Regex>, ConfigError> {
        patterns
            .iter()
            .enumerate()
            .map(|(i, p)| whole_match(p).map_err(|m| self.invalid(&format!("{field}[{i}]"), m)))
            .collect()
    }

    /// The metrics endpoint at `field`, if set (see [`parse_metrics_listen`]).
    pub fn metrics_listen(
        self,
        field: &str,
        listen: Option<&str>,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        listen
            .map(parse_metrics_listen)
            .transpose()
            .map_err(|m| self.invalid(field, m))
    }
}

/// Compiles a regex that must match the whole name, with a message naming the pattern.
pub fn whole_match(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("invalid regex {pattern:?}: {e}"))
}

/// Parses the metrics endpoint address: an `ip:port` socket address with a port other than 0.
pub fn parse_metrics_listen(listen: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = listen.parse().map_err(|e| {
        format!("{listen:?} is not an `ip:port` socket address (e.g. \"127.0.0.1:9464\"): {e}")
    })?;
    if addr.port() == 0 {
        return Err(format!(
            "{listen:?}: port 0 would pick a random port that no scraper knows"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        kafka: Kafka,
        #[serde(default)]
        routes: Vec<Route>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Kafka {
        level: Level,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Route {
        priority: i32,
    }
    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Level {
        ReadCommitted,
        ReadUncommitted,
    }

    fn err(text: &str) -> String {
        from_toml::<Doc>(Path::new("a.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn schema_errors_name_the_dotted_field_and_the_line() {
        let doc: Doc =
            from_toml(Path::new("a.toml"), "[kafka]\nlevel = \"read_committed\"\n").unwrap();
        assert_eq!(doc.kafka.level, Level::ReadCommitted);
        let doc: Doc = from_toml(
            Path::new("a.toml"),
            "[kafka]\nlevel = \"read_uncommitted\"\n[[routes]]\npriority = 3\n",
        )
        .unwrap();
        assert_eq!(doc.kafka.level, Level::ReadUncommitted);
        assert_eq!(doc.routes[0].priority, 3);

        let e = err("[kafka]\nlevel = \"dirty\"\n");
        assert!(e.starts_with("config \"a.toml\": kafka.level: "), "{e}");
        assert!(
            e.contains("line 2") && e.contains("read_uncommitted"),
            "{e}"
        );

        let e = err("[kafka]\nlevel = \"read_committed\"\n[[routes]]\npriority = \"high\"\n");
        assert!(e.contains("routes[0].priority: "), "{e}");

        let e = err("[kafka]\nlevel = \"read_committed\"\nspeed = 1\n");
        assert!(e.contains("kafka") && e.contains("speed"), "{e}");

        let e = err("kafka = [");
        assert!(e.starts_with("config \"a.toml\": TOML parse error"), "{e}");
    }

    #[test]
    fn range_errors_say_the_value_and_the_range_it_missed() {
        let c = Checks::new(Path::new("a.toml"));
        assert!(c.at_least("x", 5, End::Fixed(5)).is_ok());
        let e = c.at_least("t.x", 4, End::Fixed(5)).unwrap_err().to_string();
        assert_eq!(e, "config \"a.toml\": t.x: 4 is below the minimum of 5");
        let e = c
            .within("t.min", 9, End::Fixed(1), End::Field("max", 8))
            .unwrap_err()
            .explained("why")
            .to_string();
        assert_eq!(e, "config \"a.toml\": t.min: 9 is not in 1..=max (8) (why)");
    }

    #[test]
    fn regexes_match_whole_names_and_bad_ones_name_their_element() {
        let c = Checks::new(Path::new("a.toml"));
        let r = c
            .whole_matches("topics.include", &["a.*".into(), "b".into()])
            .unwrap();
        assert!(r[0].is_match("abc") && !r[1].is_match("ab"));
        let e = c
            .whole_matches("topics.include", &["a".into(), "(".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("topics.include[1]: invalid regex \"(\""), "{e}");
    }

    #[test]
    fn files_resolve_against_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        let config = dir.path().join("a.toml");
        let c = Checks::new(&config);
        assert_eq!(
            c.existing_file("tls.ca_cert", Path::new("ca.pem")).unwrap(),
            dir.path().join("ca.pem")
        );
        let e = c
            .existing_file("tls.cert", Path::new("no.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.cert: no such file"), "{e}");
    }

    #[test]
    fn metrics_listen_needs_an_ip_and_a_real_port() {
        assert!(parse_metrics_listen("127.0.0.1:9464").is_ok());
        assert!(parse_metrics_listen("[::1]:9464").is_ok());
        assert!(parse_metrics_listen("localhost:9464").is_err());
        assert!(
            parse_metrics_listen("127.0.0.1:0")
                .unwrap_err()
                .contains("port 0")
        );
        let c = Checks::new(Path::new("a.toml"));
        assert_eq!(c.metrics_listen("metrics.listen", None).unwrap(), None);
    }
}
