//! Leader election on a coordination.k8s.io/v1 Lease, so that one of several operator replicas
//! reconciles and another takes over within the lease duration of the leader's death.
//!
//! [`decide`] is the whole policy as a pure function of the Lease as read: renew our own lease,
//! take a free or expired one, or wait for the holder's lease to expire. [`LeaderElector`]
//! applies it every `renew_every` with optimistic concurrency (every write carries the
//! resourceVersion it read, so two candidates cannot both win a round). A leader that cannot
//! renew for `renew_deadline` (shorter than the lease duration) steps down before anyone else
//! may take over; on shutdown it releases the Lease so a standby takes over at once.
//!
//! The elector uses exactly `get`, `create` and `update` on leases (`rbac::LEADER_ELECTION`).

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

use crate::Error;
use crate::health::Role;

/// How long a lease lasts, how often the leader renews it and when it gives up renewing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// `leaseDurationSeconds`: a standby takes over this long after the last renewal.
    pub duration: Duration,
    /// How often the leader renews and a standby looks at the Lease.
    pub renew_every: Duration,
    /// A leader whose renewals fail for this long stops its controllers (before `duration`
    /// runs out, so two replicas never reconcile at once).
    pub renew_deadline: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(10),
        }
    }
}

/// What a candidate does with the Lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Take the Lease (it is absent, released or expired), counting a transition.
    Acquire,
    /// We hold it: renew.
    Renew,
    /// `leader` holds a live lease until `expires`.
    Wait {
        /// The holder's identity.
        leader: String,
        /// When its lease runs out unless renewed.
        expires: Timestamp,
    },
}

/// The policy: renew our own lease, take a free or expired one, otherwise wait.
pub fn decide(lease: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let last = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(0).into());
    match last.and_then(|last| last.checked_add(duration).ok()) {
        Some(expires) if expires > now => Decision::Wait {
            leader: holder.to_owned(),
            expires,
        },
        _ => Decision::Acquire,
    }
}

/// The Lease spec after `decision` (Acquire or Renew) by `identity` at `now`.
pub fn claimed(
    lease: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    timing: &LeaseTiming,
) -> LeaseSpec {
    let previous = lease.cloned().unwrap_or_default();
    let ours = previous.holder_identity.as_deref() == Some(identity);
    let transitions = previous.lease_transitions.unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(i32::try_from(timing.duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: if ours {
            previous.acquire_time.clone()
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(match (ours, lease.is_some()) {
            (true, _) | (false, false) => transitions,
            (false, true) => transitions + 1,
        }),
        ..previous
    }
}

/// The Lease spec after its holder lets go at `now`: no holder, so any standby takes it on its
/// next look instead of waiting for the lease to expire.
pub fn released(lease: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        ..lease.clone()
    }
}

/// Outcome of one election round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Round {
    /// We hold the Lease, renewed just now.
    Leading,
    /// Someone else holds it until `expires`.
    Standby {
        /// The holder.
        leader: String,
        /// When its lease runs out unless renewed.
        expires: Timestamp,
    },
    /// Another candidate wrote the Lease between our read and our write; try again.
    Conflict,
}

/// One candidate for the Lease `namespace/name`.
pub struct LeaderElector {
    leases: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    timing: LeaseTiming,
}

impl LeaderElector {
    /// A candidate named `identity` for the Lease `namespace/name`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaseTiming,
    ) -> Self {
        LeaderElector {
            leases: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn error(&self, action: &str, source: kube::Error) -> Error {
        Error::Kube {
            action: format!(
                "leader election: {action} Lease {}/{}",
                self.namespace, self.name
            ),
            source,
        }
    }

    /// Read the Lease, decide, and write it when taking or renewing.
    pub async fn round(&self) -> Result<Round, Error> {
        let current = self
            .leases
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error("reading", e))?;
        let now = Timestamp::now();
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let decision = decide(spec, &self.identity, now);
        if let Decision::Wait { leader, expires } = decision {
            return Ok(Round::Standby { leader, expires });
        }
        let desired = claimed(spec, &self.identity, now, &self.timing);
        let written = match current {
            Some(mut lease) => {
                // resourceVersion stays as read: a concurrent write makes this one fail.
                lease.spec = Some(desired);
                self.leases
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(desired),
                };
                self.leases.create(&PostParams::default(), &lease).await
            }
        };
        match written {
            Ok(_) => Ok(Round::Leading),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Round::Conflict),
            Err(e) => Err(self.error("writing", e)),
        }
    }

    /// Give the Lease up if we hold it.
    pub async fn release(&self) -> Result<(), Error> {
        let Some(mut lease) = self
            .leases
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error("reading", e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_ref() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(released(spec, Timestamp::now()));
        match self
            .leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            // Someone else wrote it meanwhile: it is no longer ours to release.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            result => result.map(|_| ()).map_err(|e| self.error("releasing", e)),
        }
    }

    /// Campaign until `stop` completes, publishing this replica's role on `role`; then
    /// release the Lease if held.
    pub async fn run(self, role: watch::Sender<Role>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut last_renewal: Option<Instant> = None;
        loop {
            let wait = match self.round().await {
                Ok(Round::Leading) => {
                    last_renewal = Some(Instant::now());
                    publish(&role, Role::Leading, &self.identity);
                    self.timing.renew_every
                }
                Ok(Round::Standby { leader, expires }) => {
                    last_renewal = None;
                    publish(
                        &role,
                        Role::Standby {
                            leader: Some(leader),
                        },
                        &self.identity,
                    );
                    // Look again when the holder's lease runs out, if that is sooner.
                    let until_expiry = Timestamp::now()
                        .duration_until(expires)
                        .try_into()
                        .unwrap_or(Duration::ZERO);
                    self.timing
                        .renew_every
                        .min(until_expiry + Duration::from_millis(10))
                }
                failed => {
                    match failed {
                        Err(error) => tracing::warn!(%error, "leader election round failed"),
                        _ => tracing::debug!("another candidate wrote the Lease first"),
                    }
                    if let Some(renewed) = last_renewal
                        && renewed.elapsed() > self.timing.renew_deadline
                    {
                        tracing::warn!(
                            identity = %self.identity,
                            "could not renew the leader Lease in time; stepping down"
                        );
                        last_renewal = None;
                        publish(&role, Role::Standby { leader: None }, &self.identity);
                    }
                    self.timing.renew_every / 4
                }
            };
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        if let Err(error) = self.release().await {
            tracing::warn!(%error, "could not release the leader Lease");
        } else {
            tracing::info!(identity = %self.identity, lease = %self.name, "released the leader Lease");
        }
        publish(&role, Role::Standby { leader: None }, &self.identity);
    }
}

/// Publish `next` if it differs from the current role, logging transitions.
fn publish(role: &watch::Sender<Role>, next: Role, identity: &str) {
    role.send_if_modified(|current| {
        if *current == next {
            return false;
        }
        match &next {
            Role::Leading => tracing::info!(%identity, "became the leader"),
            Role::Standby { leader } if *current == Role::Leading => {
                tracing::warn!(%identity, leader = ?leader, "lost the leader Lease")
            }
            Role::Standby { leader } => {
                tracing::info!(%identity, leader = ?leader, "standing by")
            }
            Role::Starting => {}
        }
        *current = next;
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(at(0))),
            renew_time: Some(MicroTime(at(renewed))),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn an_absent_or_released_lease_is_taken() {
        assert_eq!(decide(None, "a", at(0)), Decision::Acquire);
        let free = released(&held_by("b", 5), at(6));
        assert_eq!(decide(Some(&free), "a", at(6)), Decision::Acquire);
        let taken = claimed(Some(&free), "a", at(6), &LeaseTiming::default());
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(6))));
        assert_eq!(taken.lease_duration_seconds, Some(15));
    }

    #[test]
    fn a_live_lease_of_another_holder_is_waited_on_until_it_expires() {
        let lease = held_by("b", 10);
        assert_eq!(
            decide(Some(&lease), "a", at(24)),
            Decision::Wait {
                leader: "b".into(),
                expires: at(25)
            }
        );
        assert_eq!(decide(Some(&lease), "a", at(25)), Decision::Acquire);
        let taken = claimed(Some(&lease), "a", at(25), &LeaseTiming::default());
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.renew_time, Some(MicroTime(at(25))));
    }

    #[test]
    fn the_holder_renews_without_a_transition() {
        let lease = held_by("a", 10);
        assert_eq!(decide(Some(&lease), "a", at(11)), Decision::Renew);
        let renewed = claimed(Some(&lease), "a", at(12), &LeaseTiming::default());
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(12))));
    }

    #[test]
    fn a_new_lease_starts_without_transitions() {
        let created = claimed(None, "a", at(0), &LeaseTiming::default());
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.acquire_time, Some(MicroTime(at(0))));
    }

    #[test]
    fn a_lease_without_times_counts_as_expired() {
        let lease = LeaseSpec {
            holder_identity: Some("b".into()),
            ..LeaseSpec::default()
        };
        assert_eq!(decide(Some(&lease), "a", at(0)), Decision::Acquire);
    }
}
