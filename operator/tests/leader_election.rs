//! Leader election against the embedded cluster: one of two candidates leads, the other takes
//! over when the leader dies (without releasing) or shuts down (releasing), and a leader whose
//! Lease is taken stops leading.

use std::time::Duration;

use aigc_local_cluster::{Config, LocalCluster};
use aigc_operator::health::Role;
use aigc_operator::leader::{LeaderElector, LeaseTiming};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::SignedDuration;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const LEASE: &str = "aigc-operator";
/// Generous bound on any wait, so a broken elector fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

struct Candidate {
    role: watch::Receiver<Role>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn campaign(cluster: &LocalCluster, identity: &str) -> Candidate {
    let elector = LeaderElector::new(
        cluster.client(),
        "default",
        LEASE,
        identity,
        LeaseTiming::default(),
    );
    let (role_tx, role) = watch::channel(Role::Starting);
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(elector.run(role_tx, async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    Candidate { role, stop, task }
}

async fn until_role(candidate: &mut Candidate, wanted: impl Fn(&Role) -> bool) -> Role {
    tokio::time::timeout(PATIENCE, candidate.role.wait_for(|r| wanted(r)))
        .await
        .expect("the role changes in time")
        .expect("the elector is running")
        .clone()
}

async fn lease(cluster: &LocalCluster) -> Lease {
    Api::<Lease>::namespaced(cluster.client(), "default")
        .get(LEASE)
        .await
        .expect("the Lease exists")
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

async fn start_cluster() -> (LocalCluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cluster = LocalCluster::start(Config::new(dir.path().join("data")))
        .await
        .expect("the local cluster starts");
    (cluster, dir)
}

#[tokio::test]
async fn a_standby_takes_over_within_the_lease_duration_when_the_leader_dies() {
    let (cluster, _dir) = start_cluster().await;
    let mut a = campaign(&cluster, "replica-a");
    until_role(&mut a, |r| *r == Role::Leading).await;
    let mut b = campaign(&cluster, "replica-b");
    let standby = until_role(&mut b, |r| matches!(r, Role::Standby { .. })).await;
    assert_eq!(
        standby,
        Role::Standby {
            leader: Some("replica-a".into())
        }
    );
    let held = lease(&cluster).await;
    let spec = held.spec.clone().unwrap();
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(spec.lease_transitions, Some(0));

    // The leader dies: its task is dropped mid-campaign, so the Lease is never released.
    a.task.abort();
    let _ = a.task.await;
    let last_renewal = lease(&cluster).await.spec.unwrap().renew_time.unwrap().0;
    until_role(&mut b, |r| *r == Role::Leading).await;

    let taken = lease(&cluster).await.spec.unwrap();
    assert_eq!(taken.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(taken.lease_transitions, Some(1));
    let acquired = taken.acquire_time.unwrap().0;
    let gap = last_renewal.duration_until(acquired);
    // Never before the dead leader's lease expired, and as soon as it did (the standby wakes
    // at the expiry it read; the slack covers one API round trip on a busy machine).
    assert!(
        gap >= SignedDuration::from_secs(15),
        "took over {gap:?} after the last renewal"
    );
    assert!(
        gap < SignedDuration::from_secs(17),
        "took over {gap:?} after the last renewal"
    );
    b.task.abort();
}

#[tokio::test]
async fn a_leader_that_shuts_down_releases_the_lease_and_the_standby_takes_it_at_once() {
    let (cluster, _dir) = start_cluster().await;
    let mut a = campaign(&cluster, "replica-a");
    until_role(&mut a, |r| *r == Role::Leading).await;
    let mut b = campaign(&cluster, "replica-b");
    until_role(&mut b, |r| matches!(r, Role::Standby { .. })).await;

    let stopped_at = k8s_openapi::jiff::Timestamp::now();
    a.stop.send_replace(true);
    a.task.await.expect("the elector stops cleanly");
    until_role(&mut b, |r| *r == Role::Leading).await;
    let taken = lease(&cluster).await.spec.unwrap();
    assert_eq!(taken.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(taken.lease_transitions, Some(1));
    // Released, so the standby took it on its next look instead of waiting for the old lease
    // (renewed at most 2 s before the stop) to run out 13 s or more after it.
    let gap = stopped_at.duration_until(taken.acquire_time.unwrap().0);
    assert!(
        gap < SignedDuration::from_secs(12),
        "took over {gap:?} after the stop"
    );

    b.stop.send_replace(true);
    b.task.await.expect("the elector stops cleanly");
    assert_eq!(
        holder(&lease(&cluster).await),
        None,
        "the last leader released it"
    );
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_stops_leading() {
    let (cluster, _dir) = start_cluster().await;
    let mut a = campaign(&cluster, "replica-a");
    until_role(&mut a, |r| *r == Role::Leading).await;

    // Someone else writes the Lease (as after a network partition outlasting the lease).
    let leases = Api::<Lease>::namespaced(cluster.client(), "default");
    let mut lease = lease(&cluster).await;
    let spec = lease.spec.as_mut().unwrap();
    spec.holder_identity = Some("intruder".into());
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    loop {
        match leases.replace(LEASE, &PostParams::default(), &lease).await {
            Ok(_) => break,
            // The leader renewed in between; take the fresh one.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let fresh = leases.get(LEASE).await.unwrap();
                lease.metadata.resource_version = fresh.metadata.resource_version;
            }
            Err(e) => panic!("overwriting the Lease: {e}"),
        }
    }
    let role = until_role(&mut a, |r| *r != Role::Leading).await;
    assert_eq!(
        role,
        Role::Standby {
            leader: Some("intruder".into())
        }
    );
    a.stop.send_replace(true);
    a.task.await.unwrap();
    assert_eq!(
        holder(&leases.get(LEASE).await.unwrap()).as_deref(),
        Some("intruder"),
        "a replica releases only a Lease it holds"
    );
}
