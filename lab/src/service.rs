//! Knit config the lab writes into knitd's directory: Services (with VIPs
//! and the pods' hosts entries) and arbitrary files for tests of bad config.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::config;
use crate::error::{LabError, Result};
use crate::lab::{Lab, MAX_INDEX, ServiceState, index_to_ip};
use crate::spec::ServiceSpec;

impl Lab {
    /// Writes a file into knitd's config dir atomically (any content, for
    /// tests of bad config too).
    pub fn write_config(&self, file: &str, yaml: &str) -> Result<()> {
        config::validate_file_name(file)?;
        let dir = self.config_dir();
        config::write_atomic(&dir.join(format!(".{file}.tmp")), &dir.join(file), yaml)
    }

    /// Removes a file from knitd's config dir.
    pub fn remove_config(&self, file: &str) -> Result<()> {
        config::validate_file_name(file)?;
        let path = self.config_dir().join(file);
        std::fs::remove_file(&path)
            .map_err(|e| LabError::io(format!("removing config {}", path.display()), e))
    }

    // ---- services ----

    /// Writes the Service file (`svc-<name>.yaml`, or `svc-<ns>-<name>.yaml`
    /// outside `default`), updates every pod's hosts file, returns the
    /// (IPv4) VIP; [`Lab::service_vip6`] has the IPv6 one.
    pub fn add_service(&mut self, spec: ServiceSpec) -> Result<Ipv4Addr> {
        spec.validate()?;
        let key = (spec.namespace.clone(), spec.name.clone());
        if self.services.contains_key(&key) {
            return Err(LabError::AlreadyExists {
                kind: "service",
                name: format!("{}/{}", spec.namespace, spec.name),
            });
        }
        let vip = match spec.vip {
            Some(vip) => {
                if let Some(other) = self.services.values().find(|s| s.vip == vip) {
                    return Err(LabError::invalid(
                        format!("service `{}` vip", spec.name),
                        format!(
                            "{vip} is already used by {}/{}",
                            other.namespace, other.name
                        ),
                    ));
                }
                vip
            }
            None => self.allocate_vip()?,
        };
        let vip6 = match spec.vip6 {
            Some(v6) => Some(v6),
            None if self.dual_stack && !spec.ipv4_only => Some(crate::netns::vip_ipv6(vip)),
            None => None,
        };
        if let Some(v6) = vip6
            && let Some(other) = self.services.values().find(|s| s.vip6 == Some(v6))
        {
            return Err(LabError::invalid(
                format!("service `{}` vip6", spec.name),
                format!("{v6} is already used by {}/{}", other.namespace, other.name),
            ));
        }
        let file = if spec.namespace == "default" {
            format!("svc-{}.yaml", spec.name)
        } else {
            format!("svc-{}-{}.yaml", spec.namespace, spec.name)
        };
        let yaml = config::service_yaml(
            &spec.name,
            &spec.namespace,
            vip,
            vip6,
            &spec.ports,
            &spec.selector,
        );
        self.write_config(&file, &yaml)?;
        self.services.insert(
            key,
            ServiceState {
                name: spec.name,
                namespace: spec.namespace,
                vip,
                vip6,
                file,
            },
        );
        self.write_all_hosts()?;
        Ok(vip)
    }

    /// Removes a Service's file and its hosts entries.
    pub fn remove_service(&mut self, namespace: &str, name: &str) -> Result<()> {
        let svc = self
            .services
            .remove(&(namespace.to_string(), name.to_string()))
            .ok_or_else(|| LabError::NotFound {
                kind: "service",
                name: format!("{namespace}/{name}"),
            })?;
        self.remove_config(&svc.file)?;
        self.write_all_hosts()
    }

    /// The VIP of a service.
    pub fn service_vip(&self, namespace: &str, name: &str) -> Result<Ipv4Addr> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
            .map(|s| s.vip)
            .ok_or_else(|| LabError::NotFound {
                kind: "service",
                name: format!("{namespace}/{name}"),
            })
    }

    /// The IPv6 VIP of a service, if it has one.
    pub fn service_vip6(&self, namespace: &str, name: &str) -> Result<Option<Ipv6Addr>> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
            .map(|s| s.vip6)
            .ok_or_else(|| LabError::NotFound {
                kind: "service",
                name: format!("{namespace}/{name}"),
            })
    }

    fn allocate_vip(&mut self) -> Result<Ipv4Addr> {
        while self.next_vip_index <= MAX_INDEX {
            let index = self.next_vip_index;
            self.next_vip_index += 1;
            if let Some(vip) = index_to_ip(19, index)
                && !self.services.values().any(|s| s.vip == vip)
            {
                return Ok(vip);
            }
        }
        Err(LabError::AddressesExhausted {
            range: "198.19.0.0/16",
        })
    }

    pub(crate) fn hosts_services(&self) -> Vec<config::HostsService> {
        self.services
            .values()
            .map(|s| config::HostsService {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                vip: s.vip,
                vip6: s.vip6,
            })
            .collect()
    }
}
