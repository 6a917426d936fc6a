//! Readiness of the operator process, served at `/readyz`: a replica standing by for the
//! leader Lease is ready (it is healthy and waiting); a leading replica is ready once the
//! caches of every controller it runs have synced (`controllers::Context::controller` reports
//! them).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// What this replica does in the leader election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not yet known: the first Lease read has not returned.
    Starting,
    /// Another replica (or none yet) holds the Lease; this one waits to take over.
    Standby {
        /// Holder of the Lease, if any.
        leader: Option<String>,
    },
    /// This replica runs the controllers (it holds the Lease, or leader election is off).
    Leading,
}

/// Shared readiness state of one process.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    role: Role,
    /// Cache per controller kind: whether its initial list has completed.
    caches: BTreeMap<String, bool>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            inner: Arc::new(Mutex::new(State {
                role: Role::Starting,
                caches: BTreeMap::new(),
            })),
        }
    }
}

impl Health {
    /// A process that has not decided its role yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Record the role; leaving `Leading` forgets the controllers' caches, which stop with it.
    pub fn set_role(&self, role: Role) {
        let mut state = self.state();
        if role != Role::Leading {
            state.caches.clear();
        }
        state.role = role;
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.state().role.clone()
    }

    /// Count `kind`'s cache as not synced until [`Health::cache_synced`].
    pub fn expect_cache(&self, kind: &str) {
        self.state().caches.insert(kind.to_owned(), false);
    }

    /// `kind`'s cache has completed its first list.
    pub fn cache_synced(&self, kind: &str) {
        if let Some(synced) = self.state().caches.get_mut(kind) {
            *synced = true;
        }
    }

    /// `Ok(why ready)` or `Err(why not)`.
    pub fn readiness(&self) -> Result<String, String> {
        let state = self.state();
        readiness(&state.role, &state.caches)
    }
}

/// Ready while standing by, or while leading with every controller cache synced.
pub fn readiness(role: &Role, caches: &BTreeMap<String, bool>) -> Result<String, String> {
    match role {
        Role::Starting => Err("starting: the leader Lease has not been read yet".to_owned()),
        Role::Standby { leader } => Ok(match leader {
            Some(leader) => format!("standing by; {leader} leads"),
            None => "standing by; no leader yet".to_owned(),
        }),
        Role::Leading if caches.is_empty() => {
            Err("leading; the controllers have not started yet".to_owned())
        }
        Role::Leading => {
            let unsynced: Vec<&str> = caches
                .iter()
                .filter(|(_, synced)| !**synced)
                .map(|(kind, _)| kind.as_str())
                .collect();
            if unsynced.is_empty() {
                Ok(format!("leading; caches synced: {}", caches.len()))
            } else {
                Err(format!(
                    "leading; caches not synced yet: {}",
                    unsynced.join(", ")
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caches(entries: &[(&str, bool)]) -> BTreeMap<String, bool> {
        entries.iter().map(|(k, s)| ((*k).to_owned(), *s)).collect()
    }

    #[test]
    fn a_standby_is_ready_and_names_the_leader() {
        let role = Role::Standby {
            leader: Some("pod-a".into()),
        };
        assert_eq!(
            readiness(&role, &caches(&[])),
            Ok("standing by; pod-a leads".to_owned())
        );
        assert!(readiness(&Role::Starting, &caches(&[])).is_err());
    }

    #[test]
    fn a_leader_is_ready_only_once_every_cache_synced() {
        assert!(readiness(&Role::Leading, &caches(&[])).is_err());
        let err = readiness(
            &Role::Leading,
            &caches(&[("Dataset", true), ("Model", false)]),
        )
        .unwrap_err();
        assert!(err.contains("Model") && !err.contains("Dataset"), "{err}");
        assert!(readiness(&Role::Leading, &caches(&[("Dataset", true)])).is_ok());
    }

    #[test]
    fn losing_the_lead_forgets_the_caches() {
        let health = Health::new();
        health.set_role(Role::Leading);
        health.expect_cache("Dataset");
        assert!(health.readiness().is_err());
        health.cache_synced("Dataset");
        assert!(health.readiness().is_ok());
        health.set_role(Role::Standby { leader: None });
        health.set_role(Role::Leading);
        assert!(health.readiness().is_err());
    }
}
