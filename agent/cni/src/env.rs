//! The runtime's half of a CNI invocation that arrives in environment variables:
//! `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`.
//!
//! This module only parses and validates; it never touches the kernel or the
//! filesystem. Every failure here maps to CNI error code 4 (invalid environment
//! variables) and names the variable.

use std::fmt;
use std::path::PathBuf;

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// A bad or missing environment variable.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A variable the command needs is not set or is empty.
    #[error("{var} is not set")]
    Missing {
        /// The variable's name.
        var: &'static str,
    },
    /// A variable is set but its value is not acceptable.
    #[error("{var}={value:?}: {reason}")]
    Invalid {
        /// The variable's name.
        var: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `CNI_COMMAND` names a command this plugin does not implement.
    #[error("CNI_COMMAND={0:?} is not a command weir-cni implements (ADD, DEL, CHECK, VERSION)")]
    UnknownCommand(String),
}

/// The CNI operations this plugin implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach the container to the network.
    Add,
    /// Detach it and release what ADD took.
    Del,
    /// Verify that what ADD made is still there.
    Check,
    /// Report the supported CNI versions.
    Version,
}

impl Command {
    /// Parses `CNI_COMMAND` (the spec spells commands in upper case).
    pub fn parse(value: &str) -> Result<Self, EnvError> {
        match value {
            "ADD" => Ok(Self::Add),
            "DEL" => Ok(Self::Del),
            "CHECK" => Ok(Self::Check),
            "VERSION" => Ok(Self::Version),
            other => Err(EnvError::UnknownCommand(other.to_string())),
        }
    }

    /// The spelling used in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
///
/// Keys we do not know are kept and ignored (whether or not the runtime sent
/// `IgnoreUnknown=1`): kubelet and container runtimes add keys over time and a
/// network plugin must not fail a pod start because of that.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

impl CniArgs {
    /// Parses the value of `CNI_ARGS`. Empty segments (a trailing `;`) are
    /// skipped; a segment without `=` or with an empty key is an error.
    pub fn parse(value: &str) -> Result<Self, EnvError> {
        let mut pairs = Vec::new();
        for segment in value.split(';') {
            let segment = segment.trim();
            if segment.is_empty() {
                continue;
            }
            let Some((key, val)) = segment.split_once('=') else {
                return Err(EnvError::Invalid {
                    var: "CNI_ARGS",
                    value: value.to_string(),
                    reason: format!("{segment:?} is not KEY=VALUE"),
                });
            };
            if key.is_empty() {
                return Err(EnvError::Invalid {
                    var: "CNI_ARGS",
                    value: value.to_string(),
                    reason: format!("{segment:?} has an empty key"),
                });
            }
            pairs.push((key.to_string(), val.to_string()));
        }
        Ok(Self { pairs })
    }

    /// The value of `key`; the last one wins if a key repeats.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `K8S_POD_NAMESPACE`, empty when not run by Kubernetes.
    pub fn pod_namespace(&self) -> &str {
        self.get("K8S_POD_NAMESPACE").unwrap_or("")
    }

    /// `K8S_POD_NAME`, empty when not run by Kubernetes.
    pub fn pod_name(&self) -> &str {
        self.get("K8S_POD_NAME").unwrap_or("")
    }

    /// All pairs in the order given.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}

/// The environment of one invocation, validated for its command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`; empty for VERSION.
    pub container_id: String,
    /// `CNI_NETNS`; `None` when unset or empty (allowed for DEL and VERSION only).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`; empty for VERSION.
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: CniArgs,
    /// `CNI_PATH`, unused by this plugin (it delegates to no other plugin) but kept for logs.
    pub path: String,
}

impl CniEnv {
    /// Reads the process environment.
    pub fn from_process() -> Result<Self, EnvError> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// Parses the variables through `lookup` (a test passes a map).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Self, EnvError> {
        let get = |var: &'static str| -> Result<Option<String>, EnvError> {
            match lookup(var) {
                None => Ok(None),
                Some(v) => match v.into_string() {
                    Ok(s) if s.is_empty() => Ok(None),
                    Ok(s) => Ok(Some(s)),
                    Err(raw) => Err(EnvError::Invalid {
                        var,
                        value: raw.to_string_lossy().into_owned(),
                        reason: "not valid UTF-8".to_string(),
                    }),
                },
            }
        };
        let command =
            Command::parse(&get("CNI_COMMAND")?.ok_or(EnvError::Missing { var: "CNI_COMMAND" })?)?;
        let args = CniArgs::parse(&get("CNI_ARGS")?.unwrap_or_default())?;
        let path = get("CNI_PATH")?.unwrap_or_default();
        if command == Command::Version {
            return Ok(Self {
                command,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
                args,
                path,
            });
        }
        let container_id = get("CNI_CONTAINERID")?.ok_or(EnvError::Missing {
            var: "CNI_CONTAINERID",
        })?;
        validate_container_id(&container_id)?;
        let ifname = get("CNI_IFNAME")?.ok_or(EnvError::Missing { var: "CNI_IFNAME" })?;
        validate_ifname(&ifname)?;
        let netns = get("CNI_NETNS")?.map(PathBuf::from);
        match (&netns, command) {
            (None, Command::Add | Command::Check) => {
                return Err(EnvError::Missing { var: "CNI_NETNS" });
            }
            (Some(p), _) if !p.is_absolute() => {
                return Err(EnvError::Invalid {
                    var: "CNI_NETNS",
                    value: p.display().to_string(),
                    reason: "must be an absolute path".to_string(),
                });
            }
            _ => {}
        }
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

/// The spec allows letters, digits, `_`, `.` and `-`, starting with a letter or
/// digit. We also use the id in IPAM files, so this keeps paths and JSON safe.
fn validate_container_id(id: &str) -> Result<(), EnvError> {
    let ok_first = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok_first && ok_rest {
        Ok(())
    } else {
        Err(EnvError::Invalid {
            var: "CNI_CONTAINERID",
            value: id.to_string(),
            reason:
                "must start with a letter or digit and contain only letters, digits, '_', '.', '-'"
                    .to_string(),
        })
    }
}

/// What the kernel accepts as an interface name (dev_valid_name).
fn validate_ifname(name: &str) -> Result<(), EnvError> {
    let reason = if name.len() > MAX_IFNAME_LEN {
        Some(format!("longer than {MAX_IFNAME_LEN} bytes"))
    } else if name == "." || name == ".." {
        Some("reserved name".to_string())
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("contains '/', ':', whitespace or a control character".to_string())
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(EnvError::Invalid {
            var: "CNI_IFNAME",
            value: name.to_string(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, EnvError> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        CniEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn cni_args_kubernetes_style() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1-2",
        )
        .expect("valid CNI_ARGS");
        assert_eq!(a.pod_namespace(), "default");
        assert_eq!(a.pod_name(), "web-0");
        assert_eq!(a.get("IgnoreUnknown"), Some("1"));
        assert_eq!(a.get("K8S_POD_UID"), Some("1-2"));
        assert_eq!(a.get("nope"), None);
        assert_eq!(a.pairs().len(), 5);
    }

    #[test]
    fn cni_args_edge_cases() {
        let a = CniArgs::parse("").expect("empty is fine");
        assert_eq!(a.pod_name(), "");
        let a = CniArgs::parse("A=1;;B=x=y;").expect("empty segments and '=' in value");
        assert_eq!(a.get("A"), Some("1"));
        assert_eq!(a.get("B"), Some("x=y"));
        let a = CniArgs::parse("K8S_POD_NAME=a;K8S_POD_NAME=b").expect("repeated key");
        assert_eq!(a.pod_name(), "b", "last value wins");
        let a = CniArgs::parse("K8S_POD_NAMESPACE=").expect("empty value");
        assert_eq!(a.pod_namespace(), "");
        assert!(matches!(
            CniArgs::parse("A=1;garbage"),
            Err(EnvError::Invalid {
                var: "CNI_ARGS",
                ..
            })
        ));
        assert!(matches!(
            CniArgs::parse("=1"),
            Err(EnvError::Invalid {
                var: "CNI_ARGS",
                ..
            })
        ));
    }

    #[test]
    fn full_add_environment() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"),
            ("CNI_PATH", "/opt/cni/bin"),
        ])
        .expect("valid");
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id, "abc123");
        assert_eq!(e.netns, Some(PathBuf::from("/var/run/netns/x")));
        assert_eq!(e.ifname, "eth0");
        assert_eq!(e.args.pod_name(), "p");
    }

    #[test]
    fn missing_and_invalid_variables() {
        assert!(matches!(
            env(&[]),
            Err(EnvError::Missing { var: "CNI_COMMAND" })
        ));
        assert!(matches!(
            env(&[("CNI_COMMAND", "FROB")]),
            Err(EnvError::UnknownCommand(_))
        ));
        assert!(matches!(
            env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/x")
            ]),
            Err(EnvError::Missing {
                var: "CNI_CONTAINERID"
            })
        ));
        assert!(matches!(
            env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "eth0")
            ]),
            Err(EnvError::Missing { var: "CNI_NETNS" })
        ));
        assert!(matches!(
            env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "relative")
            ]),
            Err(EnvError::Invalid {
                var: "CNI_NETNS",
                ..
            })
        ));
        assert!(matches!(
            env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "../etc"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/x")
            ]),
            Err(EnvError::Invalid {
                var: "CNI_CONTAINERID",
                ..
            })
        ));
        assert!(matches!(
            env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "a-very-long-interface-name"),
                ("CNI_NETNS", "/x")
            ]),
            Err(EnvError::Invalid {
                var: "CNI_IFNAME",
                ..
            })
        ));
    }

    #[test]
    fn del_without_netns_and_version_without_anything() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ])
        .expect("DEL may omit CNI_NETNS");
        assert_eq!(e.netns, None);
        let e = env(&[("CNI_COMMAND", "VERSION")]).expect("VERSION needs nothing else");
        assert_eq!(e.command, Command::Version);
    }
}
