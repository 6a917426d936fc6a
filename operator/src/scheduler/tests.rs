//! One readable test per scheduling rule, on small hand-written clusters.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use aigc_crds::common::Accelerator;

use super::*;

const GI: u64 = 1 << 30;

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
}

fn node(name: &str, cores: u64, memory_gi: u64, gpus: u32) -> Node {
    Node {
        name: name.into(),
        allocatable: Amounts::new(cores * 1000, memory_gi * GI, gpus),
        ..Node::default()
    }
}

fn gpu_job(name: &str, replicas: u32, gpus: u32) -> Workload {
    Workload {
        key: WorkloadKey::new("ml", name),
        kind: WorkloadKind::Training,
        queue: DEFAULT_QUEUE.into(),
        priority: 0,
        queued_at: at(0),
        replicas,
        replica: ReplicaRequest {
            accelerator: Accelerator::Gpu,
            gpus: Gpus(gpus),
            cpu: Millicores(1000),
            memory: Bytes(GI),
            ..ReplicaRequest::default()
        },
        dataset: None,
    }
}

fn cpu_job(name: &str, replicas: u32, cores: u64) -> Workload {
    let mut job = gpu_job(name, replicas, 0);
    job.replica.accelerator = Accelerator::Cpu;
    job.replica.cpu = Millicores(cores * 1000);
    job
}

fn inference(name: &str, replicas: u32, cores: u64) -> Workload {
    Workload {
        kind: WorkloadKind::Inference,
        ..cpu_job(name, replicas, cores)
    }
}

fn with_priority(mut workload: Workload, priority: i32) -> Workload {
    workload.priority = priority;
    workload
}

/// A running pod of `workload`, admitted through `queue`.
fn pod_of(workload: &Workload, replica: u32, node: &str, requests: Amounts) -> RunningPod {
    RunningPod {
        namespace: workload.key.namespace.clone(),
        name: format!("{}-{replica}", workload.key.name),
        node: node.into(),
        requests,
        owner: Some(PodOwner {
            workload: workload.key.clone(),
            kind: workload.kind,
            queue: workload.queue.clone(),
            priority: workload.priority,
        }),
    }
}

/// A pod this operator does not own: it uses capacity and is never preempted.
fn other_pod(node: &str, requests: Amounts) -> RunningPod {
    RunningPod {
        namespace: "other".into(),
        name: format!("on-{node}"),
        node: node.into(),
        requests,
        owner: None,
    }
}

fn cluster(nodes: Vec<Node>, pods: Vec<RunningPod>) -> ClusterSnapshot {
    ClusterSnapshot {
        nodes,
        pods,
        now: at(60),
    }
}

fn plan(config: &SchedulerConfig, cluster: &ClusterSnapshot, pending: &[Workload]) -> Plan {
    Scheduler::new(config).unwrap().plan(cluster, pending)
}

fn default_plan(cluster: &ClusterSnapshot, pending: &[Workload]) -> Plan {
    plan(&SchedulerConfig::default(), cluster, pending)
}

fn admitted<'p>(plan: &'p Plan, name: &str) -> &'p Admission {
    plan.admissions
        .iter()
        .find(|a| a.workload.name == name)
        .unwrap_or_else(|| panic!("{name} not admitted: {plan:#?}"))
}

fn waiting<'p>(plan: &'p Plan, name: &str) -> &'p Waiting {
    plan.waiting
        .iter()
        .find(|w| w.workload.name == name)
        .unwrap_or_else(|| panic!("{name} not waiting: {plan:#?}"))
}

fn gpu_queues(cohort: Option<&str>, quotas: &[(&str, u32)]) -> SchedulerConfig {
    SchedulerConfig {
        queues: quotas
            .iter()
            .map(|(name, gpus)| QueueConfig {
                name: (*name).into(),
                namespaces: BTreeSet::new(),
                cohort: cohort.map(Into::into),
                quota: Quota {
                    gpu: Some(Gpus(*gpus)),
                    ..Quota::default()
                },
            })
            .collect(),
        ..SchedulerConfig::default()
    }
}

fn in_queue(mut workload: Workload, queue: &str) -> Workload {
    workload.queue = queue.into();
    workload
}

#[test]
fn a_gpu_job_lands_on_a_node_with_the_requested_gpu_product() {
    let mut a100 = node("a100", 32, 256, 8);
    a100.labels
        .insert(GPU_PRODUCT_LABEL.into(), "NVIDIA-A100".into());
    let mut h100 = node("h100", 32, 256, 8);
    h100.labels
        .insert(GPU_PRODUCT_LABEL.into(), "NVIDIA-H100".into());
    let mut job = gpu_job("train", 1, 4);
    job.replica.gpu_product = Some("NVIDIA-H100".into());
    let cluster = cluster(vec![node("cpu", 64, 256, 0), a100, h100], vec![]);

    let plan = default_plan(&cluster, &[job]);

    let admission = admitted(&plan, "train");
    assert_eq!(admission.nodes, ["h100"]);
    assert_eq!(admission.placement().accelerator, Some(Accelerator::Gpu));
}

#[test]
fn a_full_queue_explains_its_quota() {
    let config = gpu_queues(None, &[("gpu-team", 8)]);
    let running = in_queue(gpu_job("running", 1, 8), "gpu-team");
    let pods = vec![pod_of(&running, 0, "g1", Amounts::new(1000, GI, 8))];
    let cluster = cluster(vec![node("g1", 32, 256, 8), node("g2", 32, 256, 8)], pods);

    let plan = plan(
        &config,
        &cluster,
        &[in_queue(gpu_job("next", 1, 4), "gpu-team")],
    );

    let waiting = waiting(&plan, "next");
    assert_eq!(waiting.reason, WaitReason::QuotaExceeded);
    assert_eq!(
        waiting.message,
        "queue gpu-team: quota 8/8 GPUs in use, needs 4"
    );
}

#[test]
fn a_job_without_free_gpus_says_how_many_it_needs() {
    let other = other_pod("g1", Amounts::new(0, 0, 6));
    let cluster = cluster(vec![node("g1", 32, 256, 8)], vec![other]);

    let plan = default_plan(&cluster, &[gpu_job("train", 1, 4)]);

    let waiting = waiting(&plan, "train");
    assert_eq!(waiting.reason, WaitReason::Unschedulable);
    assert!(
        waiting
            .message
            .starts_with("no node with 4 free nvidia.com/gpu"),
        "{}",
        waiting.message
    );
}

#[test]
fn higher_priority_goes_first_then_first_come_first_served() {
    let cluster = cluster(vec![node("g1", 32, 256, 8)], vec![]);
    let early = gpu_job("early", 1, 8);
    let mut late = gpu_job("late", 1, 8);
    late.queued_at = at(10);
    let urgent = with_priority(
        Workload {
            queued_at: at(20),
            ..gpu_job("urgent", 1, 8)
        },
        5,
    );

    let plan = default_plan(&cluster, &[late.clone(), early.clone(), urgent]);
    assert_eq!(plan.admissions.len(), 1);
    admitted(&plan, "urgent");

    let plan = default_plan(&cluster, &[late, early]);
    admitted(&plan, "early");
    waiting(&plan, "late");
}

#[test]
fn a_gang_is_admitted_whole_or_not_at_all() {
    let mut h100 = node("h100", 32, 256, 4);
    h100.labels
        .insert(GPU_PRODUCT_LABEL.into(), "NVIDIA-H100".into());
    let cluster = cluster(vec![h100, node("plain", 32, 256, 4)], vec![]);
    // Three H100 replicas cannot fit on the one H100 node, even when it is empty.
    let mut big = with_priority(gpu_job("big", 3, 4), 10);
    big.replica.gpu_product = Some("NVIDIA-H100".into());

    let plan = default_plan(&cluster, &[big, gpu_job("small", 2, 4)]);

    let waiting = waiting(&plan, "big");
    assert!(
        waiting.message.starts_with("only 1 of 3 replicas fit now"),
        "{}",
        waiting.message
    );
    assert_eq!(plan.admissions.len(), 1);
    // The failed gang left nothing on the H100 node: the next gang uses both nodes.
    let mut nodes = admitted(&plan, "small").nodes.clone();
    nodes.sort();
    assert_eq!(nodes, ["h100", "plain"]);
}

#[test]
fn backfill_never_takes_the_nodes_held_for_the_queue_head() {
    // a: 4 of 8 GPUs busy, b: free, c: 6 of 8 busy. The head needs two whole nodes.
    let busy = |node: &str, gpus| other_pod(node, Amounts::new(0, 0, gpus));
    let nodes = vec![
        node("a", 32, 256, 8),
        node("b", 32, 256, 8),
        node("c", 32, 256, 8),
    ];
    let cluster = cluster(nodes, vec![busy("a", 4), busy("c", 6)]);
    let head = with_priority(gpu_job("head", 2, 8), 10);
    let small = gpu_job("small", 1, 2);
    let medium = gpu_job("medium", 1, 4);

    let plan = default_plan(&cluster, &[head, small, medium]);

    assert!(
        waiting(&plan, "head")
            .message
            .starts_with("only 1 of 2 replicas fit now")
    );
    assert_eq!(admitted(&plan, "small").nodes, ["c"]);
    let medium = waiting(&plan, "medium");
    assert!(
        medium.message.contains("held for ml/head"),
        "{}",
        medium.message
    );
}

#[test]
fn a_queue_borrows_idle_quota_from_its_cohort() {
    let config = gpu_queues(Some("shared"), &[("a", 4), ("b", 4)]);
    let cluster = cluster(vec![node("g1", 32, 256, 8)], vec![]);

    let plan = plan(&config, &cluster, &[in_queue(gpu_job("wide", 1, 6), "a")]);

    let admission = admitted(&plan, "wide");
    assert!(admission.borrowing);
    assert!(
        admission.message.contains("borrowing"),
        "{}",
        admission.message
    );
}

#[test]
fn the_owner_reclaims_lent_quota_by_preempting_the_borrower() {
    let config = gpu_queues(Some("shared"), &[("a", 4), ("b", 4)]);
    let borrower = with_priority(in_queue(gpu_job("borrower", 1, 6), "a"), 100);
    let pods = vec![pod_of(&borrower, 0, "g1", Amounts::new(1000, GI, 6))];
    let cluster = cluster(vec![node("g1", 32, 256, 8), node("g2", 32, 256, 8)], pods);

    let plan = plan(&config, &cluster, &[in_queue(gpu_job("owner", 1, 4), "b")]);

    let admission = admitted(&plan, "owner");
    assert_eq!(admission.reason, AdmitReason::Preempting);
    assert_eq!(plan.preemptions.len(), 1);
    let preemption = &plan.preemptions[0];
    assert_eq!(preemption.victim.name, "borrower");
    assert_eq!(preemption.pods, ["ml/borrower-0"]);
    assert!(preemption.resume_from_checkpoint);
    assert!(
        preemption
            .message
            .contains("resumes from its last checkpoint")
    );
}

#[test]
fn preemption_evicts_the_fewest_lowest_priority_training_pods() {
    let one_pod = with_priority(gpu_job("one-pod", 1, 8), 1);
    let two_pods = with_priority(gpu_job("two-pods", 2, 4), 1);
    let important = with_priority(gpu_job("important", 1, 8), 5);
    let pods = vec![
        pod_of(&two_pods, 0, "a", Amounts::new(0, 0, 4)),
        pod_of(&two_pods, 1, "a", Amounts::new(0, 0, 4)),
        pod_of(&one_pod, 0, "b", Amounts::new(0, 0, 8)),
        pod_of(&important, 0, "c", Amounts::new(0, 0, 8)),
    ];
    let nodes = vec![
        node("a", 32, 256, 8),
        node("b", 32, 256, 8),
        node("c", 32, 256, 8),
    ];
    let cluster = cluster(nodes, pods);

    let plan = default_plan(&cluster, &[with_priority(gpu_job("urgent", 1, 8), 10)]);

    assert_eq!(admitted(&plan, "urgent").nodes, ["b"]);
    let victims: Vec<&str> = plan
        .preemptions
        .iter()
        .map(|p| p.victim.name.as_str())
        .collect();
    assert_eq!(victims, ["one-pod"]);
}

#[test]
fn training_never_preempts_inference() {
    let serving = inference("serving", 1, 16);
    let pods = vec![pod_of(&serving, 0, "n1", Amounts::new(16_000, GI, 0))];
    let cluster = cluster(vec![node("n1", 16, 64, 0)], pods);

    let plan = default_plan(&cluster, &[with_priority(cpu_job("train", 1, 8), 1000)]);

    assert!(plan.preemptions.is_empty());
    assert_eq!(waiting(&plan, "train").reason, WaitReason::Unschedulable);
}

#[test]
fn inference_preempts_lower_priority_training() {
    let train = cpu_job("train", 1, 16);
    let pods = vec![pod_of(&train, 0, "n1", Amounts::new(16_000, GI, 0))];
    let cluster = cluster(vec![node("n1", 16, 64, 0)], pods);

    let plan = default_plan(&cluster, &[with_priority(inference("serve", 1, 8), 100)]);

    assert_eq!(admitted(&plan, "serve").nodes, ["n1"]);
    assert_eq!(plan.preemptions[0].victim.name, "train");
}

#[test]
fn auto_waits_for_a_gpu_then_falls_back_to_cpu() {
    let mut job = gpu_job("auto", 1, 1);
    job.replica.accelerator = Accelerator::Auto;
    let config = SchedulerConfig {
        auto_fallback_after: aigc_crds::common::Duration("5m".into()),
        ..SchedulerConfig::default()
    };
    let gpu_busy = other_pod("g1", Amounts::new(0, 0, 8));
    let mut snapshot = cluster(
        vec![node("g1", 8, 64, 8), node("c1", 8, 64, 0)],
        vec![gpu_busy],
    );

    snapshot.now = at(120);
    let plan_early = plan(&config, &snapshot, std::slice::from_ref(&job));
    let waiting = waiting(&plan_early, "auto");
    assert_eq!(waiting.reason, WaitReason::WaitingForGpu);
    assert!(
        waiting.message.ends_with("falls back to CPU in 3m0s"),
        "{}",
        waiting.message
    );

    snapshot.now = at(300);
    let plan_late = plan(&config, &snapshot, &[job]);
    let admission = admitted(&plan_late, "auto");
    assert_eq!(admission.reason, AdmitReason::CpuFallback);
    assert_eq!(admission.placement().accelerator, Some(Accelerator::Cpu));
    assert_eq!(admission.nodes, ["c1"]);
    assert!(
        admission.message.contains("no GPU after 5m0s"),
        "{}",
        admission.message
    );
}

#[test]
fn auto_takes_a_free_gpu() {
    let mut job = gpu_job("auto", 1, 1);
    job.replica.accelerator = Accelerator::Auto;
    let cluster = cluster(vec![node("c1", 8, 64, 0), node("g1", 8, 64, 8)], vec![]);

    let plan = default_plan(&cluster, &[job]);

    let admission = admitted(&plan, "auto");
    assert_eq!(
        (admission.device, admission.nodes.as_slice()),
        (Device::Gpu, &["g1".to_owned()][..])
    );
}

#[test]
fn taints_keep_out_workloads_that_do_not_tolerate_them() {
    let mut tainted = node("g1", 32, 256, 8);
    tainted.taints.push(Taint {
        key: "nvidia.com/gpu".into(),
        value: None,
        effect: TaintEffect::NoSchedule,
    });
    let cluster = cluster(vec![tainted], vec![]);
    let intolerant = gpu_job("intolerant", 1, 1);
    let mut tolerant = gpu_job("tolerant", 1, 1);
    tolerant.replica.tolerations.push(Toleration {
        key: Some("nvidia.com/gpu".into()),
        operator: TolerationOperator::Exists,
        ..Toleration::default()
    });

    let plan = default_plan(&cluster, &[intolerant, tolerant]);

    admitted(&plan, "tolerant");
    let waiting = waiting(&plan, "intolerant");
    assert!(
        waiting
            .message
            .contains("1 with taints it does not tolerate"),
        "{}",
        waiting.message
    );
}

#[test]
fn node_selectors_restrict_placement() {
    let mut zone_b = node("b", 16, 64, 0);
    zone_b.labels = BTreeMap::from([("zone".to_owned(), "b".to_owned())]);
    let cluster = cluster(vec![node("a", 16, 64, 0), zone_b], vec![]);
    let mut job = cpu_job("zoned", 1, 2);
    job.replica.node_selector.insert("zone".into(), "b".into());

    let plan = default_plan(&cluster, &[job]);

    assert_eq!(admitted(&plan, "zoned").nodes, ["b"]);
}

#[test]
fn gpu_training_packs_onto_the_fewest_fullest_nodes() {
    let pods = vec![other_pod("half", Amounts::new(0, 0, 4))];
    let nodes = vec![
        node("empty", 32, 256, 8),
        node("half", 32, 256, 8),
        node("empty2", 32, 256, 8),
    ];
    let cluster = cluster(nodes, pods);

    let plan = default_plan(&cluster, &[gpu_job("pair", 2, 2), gpu_job("quad", 4, 2)]);

    assert_eq!(admitted(&plan, "pair").nodes, ["half", "half"]);
    assert_eq!(
        admitted(&plan, "quad").nodes,
        ["empty", "empty", "empty", "empty"]
    );
}

#[test]
fn inference_replicas_spread_across_nodes() {
    let nodes = vec![
        node("a", 16, 64, 0),
        node("b", 16, 64, 0),
        node("c", 16, 64, 0),
    ];
    let cluster = cluster(nodes, vec![]);

    let plan = default_plan(&cluster, &[inference("serve", 3, 1)]);

    let mut nodes = admitted(&plan, "serve").nodes.clone();
    nodes.sort();
    assert_eq!(nodes, ["a", "b", "c"]);
}

#[test]
fn scaling_up_inference_avoids_nodes_already_serving_it() {
    let serve = inference("serve", 1, 1);
    let pods = vec![pod_of(&serve, 0, "a", Amounts::new(1000, GI, 0))];
    let cluster = cluster(vec![node("a", 16, 64, 0), node("b", 8, 64, 0)], pods);

    let plan = default_plan(&cluster, &[serve]);

    assert_eq!(admitted(&plan, "serve").nodes, ["b"]);
}

#[test]
fn nodes_holding_the_dataset_in_a_hot_tier_are_preferred() {
    let mut local = node("local", 8, 64, 0);
    local.hot_datasets.insert("ml/corpus".into());
    let cluster = cluster(vec![node("big", 64, 256, 0), local], vec![]);
    let mut job = cpu_job("train", 1, 4);
    job.dataset = Some("ml/corpus".into());

    let plan = default_plan(&cluster, &[job]);

    assert_eq!(admitted(&plan, "train").nodes, ["local"]);
}

#[test]
fn cpu_work_stays_off_gpu_nodes_when_it_can() {
    let cluster = cluster(vec![node("gpu", 64, 256, 8), node("cpu", 8, 64, 0)], vec![]);

    let plan = default_plan(&cluster, &[cpu_job("train", 1, 4)]);

    assert_eq!(admitted(&plan, "train").nodes, ["cpu"]);
}

#[test]
fn running_pods_use_up_allocatable_capacity() {
    let other = other_pod("n1", Amounts::new(12_000, GI, 0));
    let cluster = cluster(vec![node("n1", 16, 64, 0)], vec![other]);

    let late = Workload {
        queued_at: at(1),
        ..cpu_job("does-not", 1, 1)
    };

    let plan = default_plan(&cluster, &[cpu_job("fits", 1, 4), late]);

    admitted(&plan, "fits");
    assert!(
        waiting(&plan, "does-not")
            .message
            .starts_with("no node with 1 free cpu")
    );
}

#[test]
fn unknown_queues_and_foreign_namespaces_are_named() {
    let mut config = gpu_queues(None, &[("gpu-team", 8)]);
    config.queues[0].namespaces.insert("research".into());
    let cluster = cluster(vec![node("g1", 32, 256, 8)], vec![]);

    let plan = plan(
        &config,
        &cluster,
        &[
            in_queue(gpu_job("lost", 1, 1), "nope"),
            in_queue(gpu_job("outsider", 1, 1), "gpu-team"),
        ],
    );

    let lost = waiting(&plan, "lost");
    assert_eq!(lost.reason, WaitReason::UnknownQueue);
    assert_eq!(
        lost.message,
        "queue \"nope\" is not configured; configured queues: gpu-team"
    );
    let outsider = waiting(&plan, "outsider");
    assert_eq!(outsider.reason, WaitReason::NamespaceNotAllowed);
    assert_eq!(
        outsider.message,
        "queue gpu-team does not admit namespace ml; it admits: research"
    );
}

#[test]
fn a_quota_blocked_head_keeps_smaller_jobs_of_its_queue_from_overtaking_it() {
    let config = gpu_queues(None, &[("team", 8), ("other", 8)]);
    // Running at a higher priority than the head, so it is not preempted.
    let running = with_priority(in_queue(gpu_job("running", 1, 4), "team"), 20);
    let pods = vec![pod_of(&running, 0, "g1", Amounts::new(1000, GI, 4))];
    let cluster = cluster(vec![node("g1", 32, 256, 8), node("g2", 32, 256, 8)], pods);
    let head = with_priority(in_queue(gpu_job("head", 1, 8), "team"), 10);
    let small = in_queue(gpu_job("small", 1, 2), "team");
    let elsewhere = in_queue(gpu_job("elsewhere", 1, 2), "other");

    let plan = plan(&config, &cluster, &[head, small, elsewhere]);

    assert_eq!(waiting(&plan, "head").reason, WaitReason::QuotaExceeded);
    let small = waiting(&plan, "small");
    assert_eq!(
        small.message,
        "queue team: quota 4/8 GPUs in use, 8 held for a higher-priority workload of this queue, needs 2"
    );
    admitted(&plan, "elsewhere");
}

#[test]
fn gpu_only_tolerations_keep_a_cpu_fallback_off_tainted_gpu_nodes() {
    let mut tainted = node("g1", 64, 256, 2);
    tainted.taints.push(Taint {
        key: "nvidia.com/gpu".into(),
        value: Some("present".into()),
        effect: TaintEffect::NoSchedule,
    });
    let mut job = gpu_job("auto", 1, 1);
    job.replica.accelerator = Accelerator::Auto;
    job.replica.gpu_tolerations.push(Toleration {
        key: Some("nvidia.com/gpu".into()),
        operator: TolerationOperator::Exists,
        ..Toleration::default()
    });

    let free = cluster(vec![tainted.clone(), node("c1", 4, 16, 0)], vec![]);
    let on_gpu = default_plan(&free, std::slice::from_ref(&job));
    assert_eq!(admitted(&on_gpu, "auto").nodes, ["g1"]);

    let mut busy = cluster(
        vec![tainted, node("c1", 4, 16, 0)],
        vec![other_pod("g1", Amounts::new(0, 0, 2))],
    );
    busy.now = at(600);
    let fallback = default_plan(&busy, &[job]);
    let admission = admitted(&fallback, "auto");
    assert_eq!(
        (admission.device, admission.nodes.as_slice()),
        (Device::Cpu, &["c1".to_owned()][..]),
        "the bigger but tainted GPU node is not a CPU node"
    );
}
