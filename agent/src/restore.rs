//! The endpoints file: every registered endpoint, rewritten whole after each
//! registration and removal, and read at start so that an agent restart
//! re-attaches the pods networked before it (weir-cni tells the agent about
//! a pod only once, at CNI ADD).
//!
//! Kept beside the local API socket (`endpoints.json`), on the runtime file
//! system: it outlives the agent, not the node, and after a reboot the
//! interfaces it names are gone anyway.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weir_localapi::EndpointRegistration;

/// Version of the file's format.
const VERSION: u32 = 1;

/// Problems with the endpoints file.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// It could not be read or written.
    #[error("endpoints file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// It is not what this agent writes (truncated, edited, another version).
    #[error("endpoints file {}: not readable as Weir's endpoints file: {source}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    endpoints: Vec<EndpointRegistration>,
}

/// The endpoints file of one agent.
#[derive(Clone, Debug)]
pub struct EndpointsFile {
    path: PathBuf,
}

impl EndpointsFile {
    /// The file beside the local API socket `socket`.
    pub fn beside(socket: &Path) -> Self {
        let dir = socket.parent().unwrap_or(Path::new("."));
        Self {
            path: dir.join("endpoints.json"),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The endpoints written last; none when there is no file (a first start).
    pub fn load(&self) -> Result<Vec<EndpointRegistration>, RestoreError> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(RestoreError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let file: File = serde_json::from_slice(&text).map_err(|source| RestoreError::Format {
            path: self.path.clone(),
            source,
        })?;
        if file.version != VERSION {
            return Err(RestoreError::Format {
                path: self.path.clone(),
                source: serde::de::Error::custom(format!(
                    "version {} (this agent writes {VERSION})",
                    file.version
                )),
            });
        }
        Ok(file.endpoints)
    }

    /// Replaces the file with `endpoints` (a temporary file renamed over it,
    /// so a crash leaves the old or the new list, never half of one; mode
    /// 0600: it names every pod of the node).
    pub fn save(&self, endpoints: &[EndpointRegistration]) -> Result<(), RestoreError> {
        let io_err = |source| RestoreError::Io {
            path: self.path.clone(),
            source,
        };
        let file = File {
            version: VERSION,
            endpoints: endpoints.to_vec(),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| io_err(io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err)?
        };
        f.write_all(&text).map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
        std::fs::rename(&tmp, &self.path).map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str, ip: &str) -> EndpointRegistration {
        EndpointRegistration {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: format!("/var/run/netns/{id}"),
            namespace: "x".into(),
            pod: format!("pod-{id}"),
            host_ifname: format!("veth{id}"),
            host_ifindex: 7,
            ips: vec![ip.parse().unwrap()],
            mac: "02:00:00:00:00:01".into(),
        }
    }

    #[test]
    fn saved_endpoints_load_back_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let f = EndpointsFile::beside(&dir.path().join("weir.sock"));
        assert_eq!(f.path(), dir.path().join("endpoints.json"));
        assert!(f.load().unwrap().is_empty(), "first start: no file");
        let eps = vec![reg("a", "10.244.0.2"), reg("b", "fd00:10:244::3")];
        f.save(&eps).unwrap();
        assert_eq!(f.load().unwrap(), eps);
        f.save(&eps[1..]).unwrap();
        assert_eq!(f.load().unwrap(), eps[1..].to_vec(), "replaced whole");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!f.path().with_extension("json.tmp").exists());
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = EndpointsFile::beside(&dir.path().join("weir.sock"));
        std::fs::write(f.path(), "{\"version\": 1, \"endpoints\": [").unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(
            e.contains("endpoints.json") && e.contains("not readable"),
            "{e}"
        );
        std::fs::write(f.path(), "{\"version\": 9, \"endpoints\": []}").unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
    }
}
