//! The benchmark's mesh as knitd's config directory: Services and the
//! WorkloadEntries they select (file mode has no EndpointSlice; an endpoint
//! of a Service is a WorkloadEntry of its namespace whose labels match its
//! selector), and the endpoint changes the benchmark makes.
//!
//! Addresses are config data only; nothing ever connects to them. They come
//! from the RFC 2544 benchmarking ranges so they can never name a real host:
//! - endpoints start at 198.18.0.0/16 (endpoint `e` is `198.18.e/256.e%256`);
//! - change `seq` moves its endpoint to 198.19.seq/256.seq%256, inside
//!   198.19.0.0/17, so a proxy can tell from an address alone which change
//!   it reflects;
//! - Service VIPs are 198.19.128.0/17.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::{BenchError, Result};

/// At most this many endpoints fit 198.18.0.0/16.
pub const MAX_ENDPOINTS: u32 = 1 << 16;
/// At most this many services fit 198.19.128.0/17.
pub const MAX_SERVICES: u32 = 1 << 15;
/// At most this many changes fit 198.19.0.0/17.
pub const MAX_CHANGES: u32 = 1 << 15;
/// Services per namespace, so a large mesh spans several namespaces.
const SERVICES_PER_NAMESPACE: u32 = 100;

/// How the objects are spread over files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileLayout {
    /// One file per Service holding it and its WorkloadEntries.
    PerService,
    /// One file per object, as the lab writes them.
    PerObject,
}

/// The shape of the mesh: `services` Services over `endpoints`
/// WorkloadEntries, endpoint `e` belonging to service `e % services`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshShape {
    pub services: u32,
    pub endpoints: u32,
}

impl MeshShape {
    pub fn check(&self) -> Result<()> {
        if self.services == 0 || self.services > MAX_SERVICES {
            return Err(BenchError::invalid(
                "services",
                format!("{} is not in 1..={MAX_SERVICES}", self.services),
            ));
        }
        if self.endpoints < self.services || self.endpoints > MAX_ENDPOINTS {
            return Err(BenchError::invalid(
                "endpoints",
                format!(
                    "{} is not in {}..={MAX_ENDPOINTS} (every service needs one)",
                    self.endpoints, self.services
                ),
            ));
        }
        Ok(())
    }

    pub fn service_of(&self, endpoint: u32) -> u32 {
        endpoint % self.services
    }

    pub fn service_name(service: u32) -> String {
        format!("svc-{service:05}")
    }

    pub fn namespace_of(service: u32) -> String {
        format!("bench-{:03}", service / SERVICES_PER_NAMESPACE)
    }

    pub fn workload_name(endpoint: u32) -> String {
        format!("ep-{endpoint:05}")
    }

    pub fn service_account(service: u32) -> String {
        format!("sa-{service:05}")
    }

    /// The address endpoint `e` starts with.
    pub fn base_address(endpoint: u32) -> Ipv4Addr {
        let [_, _, hi, lo] = endpoint.to_be_bytes();
        Ipv4Addr::new(198, 18, hi, lo)
    }

    fn vip(service: u32) -> Ipv4Addr {
        let [_, _, hi, lo] = service.to_be_bytes();
        Ipv4Addr::new(198, 19, 128 | hi, lo)
    }

    /// The endpoint change `seq` moves. A prime stride spreads consecutive
    /// changes over services (different files), and unless the endpoint
    /// count is a multiple of it, every endpoint moves once before any
    /// moves again.
    pub fn change_target(&self, seq: u32) -> u32 {
        ((u64::from(seq) * 7919 + 1) % u64::from(self.endpoints)) as u32
    }
}

/// The address change `seq` gives its endpoint.
pub fn change_address(seq: u32) -> Ipv4Addr {
    let [_, _, hi, lo] = seq.to_be_bytes();
    Ipv4Addr::new(198, 19, hi, lo)
}

/// Which change an address reflects, if it is a change address.
pub fn change_of(address: Ipv4Addr) -> Option<u32> {
    match address.octets() {
        [198, 19, hi, lo] if hi < 128 => Some((u32::from(hi) << 8) | u32::from(lo)),
        _ => None,
    }
}

/// The config directory and the current address of every endpoint, so a
/// change rewrites its file with every earlier change in it.
#[derive(Debug)]
pub struct ConfigDir {
    dir: PathBuf,
    shape: MeshShape,
    layout: FileLayout,
    addresses: Vec<Ipv4Addr>,
    /// Sum of the files' sizes as first written.
    pub bytes: u64,
    pub files: u32,
}

impl ConfigDir {
    /// Writes the whole mesh into `dir` (which must exist and be empty).
    pub fn create(dir: &Path, shape: MeshShape, layout: FileLayout) -> Result<ConfigDir> {
        shape.check()?;
        let mut config = ConfigDir {
            dir: dir.to_path_buf(),
            shape,
            layout,
            addresses: (0..shape.endpoints).map(MeshShape::base_address).collect(),
            bytes: 0,
            files: 0,
        };
        for service in 0..shape.services {
            config.write_service(service)?;
        }
        Ok(config)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Applies change `seq`: its endpoint moves to the change's address.
    /// Returns the endpoint changed.
    pub fn apply_change(&mut self, seq: u32) -> Result<u32> {
        if seq >= MAX_CHANGES {
            return Err(BenchError::invalid(
                "change",
                format!("change {seq} is past the last one ({MAX_CHANGES} fit the address range)"),
            ));
        }
        let endpoint = self.shape.change_target(seq);
        let Some(slot) = self.addresses.get_mut(endpoint as usize) else {
            return Err(BenchError::invalid(
                "change",
                format!("endpoint {endpoint} of change {seq} is outside the mesh"),
            ));
        };
        *slot = change_address(seq);
        match self.layout {
            FileLayout::PerService => self.write_service(self.shape.service_of(endpoint))?,
            FileLayout::PerObject => {
                let service = self.shape.service_of(endpoint);
                let text = self.workload_entry_yaml(endpoint, service);
                self.write_file(
                    &format!("{}.yaml", MeshShape::workload_name(endpoint)),
                    &text,
                )?;
            }
        }
        Ok(endpoint)
    }

    fn endpoints_of(&self, service: u32) -> impl Iterator<Item = u32> + use<> {
        (service..self.shape.endpoints).step_by(self.shape.services as usize)
    }

    fn write_service(&mut self, service: u32) -> Result<()> {
        let service_yaml = service_yaml(service);
        match self.layout {
            FileLayout::PerService => {
                let mut text = service_yaml;
                for endpoint in self.endpoints_of(service) {
                    text.push_str("---\n");
                    text.push_str(&self.workload_entry_yaml(endpoint, service));
                }
                self.write_file(&format!("{}.yaml", MeshShape::service_name(service)), &text)
            }
            FileLayout::PerObject => {
                self.write_file(
                    &format!("{}.yaml", MeshShape::service_name(service)),
                    &service_yaml,
                )?;
                for endpoint in self.endpoints_of(service) {
                    let text = self.workload_entry_yaml(endpoint, service);
                    self.write_file(
                        &format!("{}.yaml", MeshShape::workload_name(endpoint)),
                        &text,
                    )?;
                }
                Ok(())
            }
        }
    }

    fn workload_entry_yaml(&self, endpoint: u32, service: u32) -> String {
        let address = self
            .addresses
            .get(endpoint as usize)
            .copied()
            .unwrap_or_else(|| MeshShape::base_address(endpoint));
        let mut text = String::with_capacity(256);
        let _ = write!(
            text,
            "apiVersion: mesh.knit.dev/v1alpha1\nkind: WorkloadEntry\nmetadata:\n  \
             name: {}\n  namespace: {}\nspec:\n  address: \"{address}\"\n  labels:\n    \
             app: {}\n  serviceAccount: {}\n",
            MeshShape::workload_name(endpoint),
            MeshShape::namespace_of(service),
            MeshShape::service_name(service),
            MeshShape::service_account(service),
        );
        text
    }

    /// Writes `name` atomically: a hidden temporary file (knitd skips
    /// hidden names) renamed over the old one, so knitd never reads half a
    /// file.
    fn write_file(&mut self, name: &str, text: &str) -> Result<()> {
        let path = self.dir.join(name);
        let temporary = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&temporary, text).map_err(|source| BenchError::Write {
            path: temporary.clone(),
            source,
        })?;
        std::fs::rename(&temporary, &path).map_err(|source| BenchError::Write {
            path: path.clone(),
            source,
        })?;
        if self.files < self.file_count() {
            self.files += 1;
            self.bytes += text.len() as u64;
        }
        Ok(())
    }

    fn file_count(&self) -> u32 {
        match self.layout {
            FileLayout::PerService => self.shape.services,
            FileLayout::PerObject => self.shape.services + self.shape.endpoints,
        }
    }
}

fn service_yaml(service: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  \
         clusterIP: \"{}\"\n  selector:\n    app: {}\n  ports:\n  - name: http\n    \
         port: 80\n    targetPort: 8080\n",
        MeshShape::service_name(service),
        MeshShape::namespace_of(service),
        MeshShape::vip(service),
        MeshShape::service_name(service),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_addresses_round_trip_and_stay_apart_from_the_rest() {
        for seq in [0, 1, 255, 256, MAX_CHANGES - 1] {
            assert_eq!(change_of(change_address(seq)), Some(seq));
        }
        assert_eq!(change_of(MeshShape::base_address(7)), None);
        assert_eq!(change_of(MeshShape::vip(3)), None);
    }

    #[test]
    fn changes_spread_over_every_endpoint() {
        let shape = MeshShape {
            services: 20,
            endpoints: 100,
        };
        let targets: std::collections::BTreeSet<u32> =
            (0..100).map(|seq| shape.change_target(seq)).collect();
        assert_eq!(targets.len(), 100);
    }

    #[test]
    fn a_change_rewrites_the_file_of_its_endpoint() {
        let dir = tempfile::tempdir().expect("temp dir");
        let shape = MeshShape {
            services: 3,
            endpoints: 7,
        };
        for layout in [FileLayout::PerService, FileLayout::PerObject] {
            let sub = dir.path().join(format!("{layout:?}"));
            std::fs::create_dir(&sub).expect("sub dir");
            let mut config = ConfigDir::create(&sub, shape, layout).expect("create");
            let endpoint = config.apply_change(5).expect("change");
            let file = match layout {
                FileLayout::PerService => MeshShape::service_name(shape.service_of(endpoint)),
                FileLayout::PerObject => MeshShape::workload_name(endpoint),
            };
            let text = std::fs::read_to_string(sub.join(format!("{file}.yaml"))).expect("read");
            assert!(text.contains("address: \"198.19.0.5\""), "{text}");
            let names = std::fs::read_dir(&sub).expect("list").count() as u32;
            assert_eq!(names, config.files, "{layout:?}");
        }
    }
}
