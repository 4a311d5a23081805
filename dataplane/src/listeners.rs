//! Which ports a worker listens on: the published configuration's, followed
//! as it changes (a Gateway listener added in the cluster opens its port
//! without a restart; one removed closes it, connections on it go on).

use crate::config::GatewayConfig;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// The listener ports of the configuration a worker last looked at.
pub struct ListenerPorts {
    config: Arc<ArcSwap<GatewayConfig>>,
    seen: Arc<GatewayConfig>,
    ports: Vec<u16>,
}

/// Ports to open and to close after a configuration change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PortChanges {
    pub opened: Vec<u16>,
    pub closed: Vec<u16>,
}

impl ListenerPorts {
    pub fn new(config: Arc<ArcSwap<GatewayConfig>>) -> Self {
        let seen = config.load_full();
        let ports = seen.ports.keys().copied().collect();
        Self {
            config,
            seen,
            ports,
        }
    }

    /// The ports to listen on now.
    pub fn current(&self) -> &[u16] {
        &self.ports
    }

    /// What changed since the last look; `None` while the configuration is
    /// the same one (a pointer comparison: cheap enough for every tick).
    pub fn changes(&mut self) -> Option<PortChanges> {
        if Arc::ptr_eq(&self.config.load(), &self.seen) {
            return None;
        }
        self.seen = self.config.load_full();
        let ports: Vec<u16> = self.seen.ports.keys().copied().collect();
        let changes = PortChanges {
            opened: ports
                .iter()
                .filter(|p| !self.ports.contains(p))
                .copied()
                .collect(),
            closed: self
                .ports
                .iter()
                .filter(|p| !ports.contains(p))
                .copied()
                .collect(),
        };
        self.ports = ports;
        Some(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortListeners;

    fn config(ports: &[u16]) -> GatewayConfig {
        GatewayConfig {
            ports: ports
                .iter()
                .map(|&p| (p, PortListeners::new(Vec::new())))
                .collect(),
        }
    }

    #[test]
    fn follows_the_published_ports() {
        let shared = Arc::new(ArcSwap::from_pointee(config(&[80, 8080])));
        let mut ports = ListenerPorts::new(shared.clone());
        assert_eq!(ports.current(), &[80, 8080]);
        assert_eq!(ports.changes(), None);
        shared.store(Arc::new(config(&[80, 9090])));
        assert_eq!(
            ports.changes(),
            Some(PortChanges {
                opened: vec![9090],
                closed: vec![8080]
            })
        );
        assert_eq!(ports.current(), &[80, 9090]);
        assert_eq!(ports.changes(), None);
    }
}
