//! The pod template every `aigc-worker` pod shares: image by accelerator, resource requests,
//! GPU limits and tolerations, tier volumes, a hardened security context. Controllers add the
//! subcommand's arguments and their own labels.

use std::collections::BTreeMap;

use aigc_crds::common::{Accelerator, Resources};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, PodSecurityContext, PodSpec,
    ResourceRequirements, SeccompProfile, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::layout::TierAccess;

/// Extended resource name of NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Images the operator runs worker pods with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerImages {
    /// CPU build of `aigc-worker`.
    pub cpu: String,
    /// CUDA build of `aigc-worker`, used when a pod gets GPUs.
    pub gpu: String,
}

impl Default for WorkerImages {
    fn default() -> Self {
        WorkerImages {
            cpu: concat!("aigc-worker:", env!("CARGO_PKG_VERSION")).to_owned(),
            gpu: concat!("aigc-worker:", env!("CARGO_PKG_VERSION"), "-cuda").to_owned(),
        }
    }
}

/// GPUs one replica gets when it runs on a GPU: the spec's `gpus`, at least one.
pub fn gpus_per_replica(resources: &Resources) -> u32 {
    resources.gpus.unwrap_or(1).max(1)
}

/// The pod spec of one worker: the single container `worker` running `args`, with the
/// resources of `resources` on `accelerator` (already decided: `cpu` or `gpu`) and access to
/// `tiers`.
pub fn worker_pod_spec(
    images: &WorkerImages,
    args: Vec<String>,
    resources: &Resources,
    accelerator: Accelerator,
    tiers: &[&TierAccess],
) -> PodSpec {
    let on_gpu = accelerator == Accelerator::Gpu;
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if let Some(cpu) = &resources.cpu {
        requests.insert("cpu".to_owned(), Quantity(cpu.0.clone()));
    }
    if let Some(memory) = &resources.memory {
        requests.insert("memory".to_owned(), Quantity(memory.0.clone()));
        limits.insert("memory".to_owned(), Quantity(memory.0.clone()));
    }
    if on_gpu {
        let gpus = Quantity(gpus_per_replica(resources).to_string());
        requests.insert(GPU_RESOURCE.to_owned(), gpus.clone());
        limits.insert(GPU_RESOURCE.to_owned(), gpus);
    }
    // The root filesystem is read-only; scratch space lives in an emptyDir.
    let mut volumes = vec![Volume {
        name: "tmp".to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "tmp".to_owned(),
        mount_path: "/tmp".to_owned(),
        ..VolumeMount::default()
    }];
    let mut env = Vec::new();
    for tier in tiers {
        if let (Some(volume), Some(mount)) = (&tier.volume, &tier.mount)
            && !volumes.iter().any(|v| v.name == volume.name)
        {
            volumes.push(volume.clone());
            mounts.push(mount.clone());
        }
        for var in &tier.env {
            if !env.iter().any(|e: &EnvVar| e.name == var.name) {
                env.push(var.clone());
            }
        }
    }
    let container = Container {
        name: "worker".to_owned(),
        image: Some(if on_gpu {
            images.gpu.clone()
        } else {
            images.cpu.clone()
        }),
        args: Some(args),
        env: (!env.is_empty()).then_some(env),
        resources: Some(ResourceRequirements {
            requests: (!requests.is_empty()).then_some(requests),
            limits: (!limits.is_empty()).then_some(limits),
            ..ResourceRequirements::default()
        }),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    };
    PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        tolerations: on_gpu.then(|| {
            vec![Toleration {
                key: Some(GPU_RESOURCE.to_owned()),
                operator: Some("Exists".to_owned()),
                effect: Some("NoSchedule".to_owned()),
                ..Toleration::default()
            }]
        }),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        automount_service_account_token: Some(false),
        ..PodSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigc_crds::common::Quantity as CrdQuantity;

    fn resources(gpus: Option<u32>) -> Resources {
        Resources {
            accelerator: Accelerator::Auto,
            gpus,
            gpu_product: None,
            cpu: Some(CrdQuantity("2".into())),
            memory: Some(CrdQuantity("4Gi".into())),
        }
    }

    #[test]
    fn gpu_pods_get_the_cuda_image_gpu_limits_and_the_toleration() {
        let spec = worker_pod_spec(
            &WorkerImages::default(),
            vec!["train".into()],
            &resources(Some(2)),
            Accelerator::Gpu,
            &[],
        );
        let c = &spec.containers[0];
        assert!(c.image.as_ref().unwrap().ends_with("-cuda"));
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits[GPU_RESOURCE], Quantity("2".into()));
        assert_eq!(
            spec.tolerations.unwrap()[0].key.as_deref(),
            Some(GPU_RESOURCE)
        );
    }

    #[test]
    fn cpu_pods_request_no_gpu_and_tolerate_nothing() {
        let spec = worker_pod_spec(
            &WorkerImages::default(),
            vec!["serve".into()],
            &resources(Some(2)),
            Accelerator::Cpu,
            &[],
        );
        let c = &spec.containers[0];
        assert!(!c.image.as_ref().unwrap().ends_with("-cuda"));
        let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(requests["cpu"], Quantity("2".into()));
        assert!(!requests.contains_key(GPU_RESOURCE));
        assert!(spec.tolerations.is_none());
    }

    #[test]
    fn worker_pods_are_hardened() {
        let spec = worker_pod_spec(
            &WorkerImages::default(),
            vec![],
            &Resources::default(),
            Accelerator::Cpu,
            &[],
        );
        let sc = spec.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert_eq!(
            spec.security_context
                .unwrap()
                .seccomp_profile
                .unwrap()
                .type_,
            "RuntimeDefault"
        );
    }
}
