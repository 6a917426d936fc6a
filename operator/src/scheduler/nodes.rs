//! Node capacity and placement: which nodes a gang may use, how many replicas each can hold,
//! and which nodes to pick.
//!
//! Built once per plan from the snapshot. Filtering is the hot path, so it works on indexes:
//! nodes by label pair, the GPU nodes, and taint sets shared by many nodes (each checked
//! once per request instead of once per node). Capacity is kept as used amounts per node so
//! tentative preemptions undo exactly.

use std::cmp::{Ordering, Reverse};
use std::collections::HashMap;
use std::fmt::Write as _;

use super::model::{Node, Taint, TaintEffect, Toleration};
use super::resources::Amounts;

/// How replicas are laid out over nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    /// Fewest nodes, fullest first: GPU training.
    Pack,
    /// One replica per node where possible, emptiest first: inference and CPU work.
    Spread,
}

/// A gang's request on one device.
pub(super) struct Shape<'w> {
    pub(super) per_replica: Amounts,
    pub(super) replicas: u32,
    pub(super) layout: Layout,
    /// Required labels, including the GPU product.
    pub(super) selector: Vec<(&'w str, &'w str)>,
    pub(super) tolerations: &'w [Toleration],
    /// Further taints tolerated because the shape runs on GPUs (empty on CPU).
    pub(super) gpu_tolerations: &'w [Toleration],
    pub(super) dataset: Option<&'w str>,
    /// Nodes already running replicas of the same workload (spread counts them).
    pub(super) existing: Vec<u32>,
}

/// Why a gang does not fit, counted over nodes.
#[derive(Debug, Default)]
pub(super) struct Shortfall {
    pub(super) per_replica: Amounts,
    pub(super) replicas: u32,
    /// Replicas that would fit at once.
    pub(super) fitting: u32,
    /// Nodes without any GPU, for a GPU request.
    pub(super) without_gpus: usize,
    /// Nodes failing the node selector or GPU product.
    pub(super) unmatched: usize,
    pub(super) untolerated: usize,
    /// Nodes too small for one replica even when empty.
    pub(super) too_small: usize,
    /// Nodes big enough but without room now, by first missing resource: gpu, cpu, memory.
    pub(super) busy: [usize; 3],
    /// Nodes with room that are held for an earlier workload; the first holder.
    pub(super) reserved: usize,
    pub(super) reserved_for: Option<usize>,
}

#[derive(Clone, Copy)]
struct Candidate {
    node: u32,
    capacity: u32,
    local: bool,
    existing: u32,
    has_gpus: bool,
    free: Amounts,
}

pub(super) struct NodeTable<'a> {
    nodes: &'a [Node],
    used: Vec<Amounts>,
    taint_class: Vec<u32>,
    taint_classes: Vec<&'a [Taint]>,
    by_label: HashMap<(&'a str, &'a str), Vec<u32>>,
    schedulable: Vec<u32>,
    gpu_nodes: Vec<u32>,
    by_name: HashMap<&'a str, u32>,
    hot: HashMap<&'a str, Vec<u32>>,
    /// The pending workload each node is held for, if any.
    reserved_for: Vec<Option<usize>>,
    /// Per-node scratch for one placement: stamp of the request that marked it local, and
    /// replicas of the same workload already there.
    local_stamp: Vec<u32>,
    existing_stamp: Vec<(u32, u32)>,
    stamp: u32,
}

impl<'a> NodeTable<'a> {
    pub(super) fn new(nodes: &'a [Node]) -> Self {
        let mut taint_classes: Vec<&'a [Taint]> = Vec::new();
        let mut class_of: HashMap<&'a [Taint], u32> = HashMap::new();
        let mut taint_class = Vec::with_capacity(nodes.len());
        let mut by_label: HashMap<(&'a str, &'a str), Vec<u32>> = HashMap::new();
        let mut schedulable = Vec::new();
        let mut gpu_nodes = Vec::new();
        let mut by_name = HashMap::with_capacity(nodes.len());
        let mut hot: HashMap<&'a str, Vec<u32>> = HashMap::new();
        for (index, node) in nodes.iter().enumerate() {
            let index = index as u32;
            let class = *class_of.entry(node.taints.as_slice()).or_insert_with(|| {
                taint_classes.push(node.taints.as_slice());
                (taint_classes.len() - 1) as u32
            });
            taint_class.push(class);
            by_name.insert(node.name.as_str(), index);
            if node.unschedulable {
                continue;
            }
            schedulable.push(index);
            if node.allocatable.gpu.0 > 0 {
                gpu_nodes.push(index);
            }
            for (key, value) in &node.labels {
                by_label.entry((key, value)).or_default().push(index);
            }
            for dataset in &node.hot_datasets {
                hot.entry(dataset).or_default().push(index);
            }
        }
        NodeTable {
            nodes,
            used: vec![Amounts::ZERO; nodes.len()],
            taint_class,
            taint_classes,
            by_label,
            schedulable,
            gpu_nodes,
            by_name,
            hot,
            reserved_for: vec![None; nodes.len()],
            local_stamp: vec![0; nodes.len()],
            existing_stamp: vec![(0, 0); nodes.len()],
            stamp: 0,
        }
    }

    pub(super) fn index(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    pub(super) fn name(&self, node: u32) -> &'a str {
        &self.nodes[node as usize].name
    }

    /// Requests of a pod now on `node`.
    pub(super) fn occupy(&mut self, node: u32, requests: Amounts) {
        self.used[node as usize] += requests;
    }

    /// Requests of a pod that leaves `node`.
    pub(super) fn release(&mut self, node: u32, requests: Amounts) {
        self.used[node as usize] = self.used[node as usize] - requests;
    }

    fn free(&self, node: u32) -> Amounts {
        self.nodes[node as usize].allocatable - self.used[node as usize]
    }

    /// Takes one replica's requests on every node of a placement.
    pub(super) fn commit(&mut self, placement: &[u32], per_replica: Amounts) {
        for &node in placement {
            self.occupy(node, per_replica);
        }
    }

    /// Calls `visit` with every schedulable node that passes the request's selector, GPU
    /// and taint filters; returns how many nodes failed the taint filter.
    fn for_each_eligible(&self, shape: &Shape<'_>, mut visit: impl FnMut(u32)) -> usize {
        let tolerated: Vec<bool> = self
            .taint_classes
            .iter()
            .map(|taints| {
                taints.iter().all(|taint| {
                    taint.effect == TaintEffect::PreferNoSchedule
                        || shape
                            .tolerations
                            .iter()
                            .chain(shape.gpu_tolerations)
                            .any(|t| t.tolerates(taint))
                })
            })
            .collect();
        let mut base: &[u32] = if shape.per_replica.gpu.0 > 0 {
            &self.gpu_nodes
        } else {
            &self.schedulable
        };
        let mut base_pair = None;
        for (position, pair) in shape.selector.iter().enumerate() {
            let list = self.by_label.get(pair).map_or(&[][..], Vec::as_slice);
            if list.len() < base.len() {
                base = list;
                base_pair = Some(position);
            }
        }
        let mut untolerated = 0;
        for &node in base {
            let spec = &self.nodes[node as usize];
            let matches = shape
                .selector
                .iter()
                .enumerate()
                .all(|(position, (key, value))| {
                    Some(position) == base_pair || spec.labels.get(*key).is_some_and(|v| v == value)
                });
            if !matches || (shape.per_replica.gpu.0 > 0 && spec.allocatable.gpu.0 == 0) {
                continue;
            }
            if !tolerated[self.taint_class[node as usize] as usize] {
                untolerated += 1;
                continue;
            }
            visit(node);
        }
        untolerated
    }

    /// One node per replica for the whole gang, or why there is none. Changes nothing.
    pub(super) fn place(&mut self, shape: &Shape<'_>) -> Result<Vec<u32>, Shortfall> {
        self.stamp = self.stamp.wrapping_add(1).max(1);
        let stamp = self.stamp;
        if let Some(nodes) = shape.dataset.and_then(|d| self.hot.get(d)) {
            for &node in nodes {
                self.local_stamp[node as usize] = stamp;
            }
        }
        for &node in &shape.existing {
            let slot = &mut self.existing_stamp[node as usize];
            *slot = if slot.0 == stamp {
                (stamp, slot.1 + 1)
            } else {
                (stamp, 1)
            };
        }
        let mut shortfall = Shortfall {
            per_replica: shape.per_replica,
            replicas: shape.replicas,
            ..Shortfall::default()
        };
        let mut candidates = Vec::new();
        let mut eligible = 0;
        let untolerated = self.for_each_eligible(shape, |node| {
            eligible += 1;
            let spec = &self.nodes[node as usize];
            let free = spec.allocatable - self.used[node as usize];
            let capacity = free.copies_of(&shape.per_replica);
            if capacity == 0 {
                if !shape.per_replica.fits_in(&spec.allocatable) {
                    shortfall.too_small += 1;
                } else if free.gpu < shape.per_replica.gpu {
                    shortfall.busy[0] += 1;
                } else if free.cpu < shape.per_replica.cpu {
                    shortfall.busy[1] += 1;
                } else {
                    shortfall.busy[2] += 1;
                }
                return;
            }
            if let Some(holder) = self.reserved_for[node as usize] {
                shortfall.reserved += 1;
                shortfall.reserved_for.get_or_insert(holder);
                return;
            }
            let existing = self.existing_stamp[node as usize];
            candidates.push(Candidate {
                node,
                capacity: capacity.min(shape.replicas),
                local: self.local_stamp[node as usize] == stamp,
                existing: if existing.0 == stamp { existing.1 } else { 0 },
                has_gpus: spec.allocatable.gpu.0 > 0,
                free,
            });
        });
        let fitting: u64 = candidates.iter().map(|c| u64::from(c.capacity)).sum();
        if fitting < u64::from(shape.replicas) {
            shortfall.fitting = fitting as u32;
            shortfall.untolerated = untolerated;
            let considered = if shape.per_replica.gpu.0 > 0 {
                shortfall.without_gpus = self.schedulable.len() - self.gpu_nodes.len();
                self.gpu_nodes.len()
            } else {
                self.schedulable.len()
            };
            shortfall.unmatched = considered.saturating_sub(eligible + untolerated);
            return Err(shortfall);
        }
        Ok(choose(&mut candidates, shape))
    }

    /// Holds whole nodes for a blocked workload so later ones cannot take what frees up
    /// there. Picks nodes that could hold the gang when empty, the least busy first.
    /// Returns false when the gang would not fit even on empty nodes.
    pub(super) fn reserve(&mut self, shape: &Shape<'_>, holder: usize) -> bool {
        let mut options: Vec<(u32, u32, u32)> = Vec::new();
        self.for_each_eligible(shape, |node| {
            if self.reserved_for[node as usize].is_some() {
                return;
            }
            let when_empty = self.nodes[node as usize]
                .allocatable
                .copies_of(&shape.per_replica);
            if when_empty > 0 {
                let now = self.free(node).copies_of(&shape.per_replica);
                options.push((node, now, when_empty.min(shape.replicas)));
            }
        });
        options.sort_unstable_by_key(|&(node, now, when_empty)| {
            (Reverse(now), Reverse(when_empty), node)
        });
        let mut needed = shape.replicas;
        let mut chosen = Vec::new();
        for (node, _, when_empty) in options {
            if needed == 0 {
                break;
            }
            chosen.push(node);
            needed = needed.saturating_sub(when_empty);
        }
        if needed > 0 {
            return false;
        }
        for node in chosen {
            self.reserved_for[node as usize] = Some(holder);
        }
        true
    }
}

fn compare(a: &Candidate, b: &Candidate, layout: Layout) -> Ordering {
    // Dataset locality first: reading from a node-local hot tier beats any packing gain.
    let by_layout = match layout {
        Layout::Pack => b
            .capacity
            .cmp(&a.capacity)
            .then(a.free.gpu.cmp(&b.free.gpu))
            .then(a.free.cpu.cmp(&b.free.cpu)),
        Layout::Spread => a
            .existing
            .cmp(&b.existing)
            .then(a.has_gpus.cmp(&b.has_gpus))
            .then(b.free.cpu.cmp(&a.free.cpu))
            .then(b.free.memory.cmp(&a.free.memory)),
    };
    b.local
        .cmp(&a.local)
        .then(by_layout)
        .then(a.node.cmp(&b.node))
}

/// Picks nodes from candidates that together hold the gang (the caller checked they do).
fn choose(candidates: &mut [Candidate], shape: &Shape<'_>) -> Vec<u32> {
    // Every candidate holds at least one replica, so the best `replicas` ones suffice;
    // selecting them first keeps this linear in the node count.
    let wanted = (shape.replicas as usize).min(candidates.len());
    if wanted < candidates.len() {
        candidates.select_nth_unstable_by(wanted, |a, b| compare(a, b, shape.layout));
    }
    let keep = wanted.max(1).min(candidates.len());
    let best = &mut candidates[..keep];
    best.sort_unstable_by(|a, b| compare(a, b, shape.layout));
    let mut placement = Vec::with_capacity(shape.replicas as usize);
    match shape.layout {
        Layout::Pack => {
            for candidate in best.iter() {
                let take = candidate
                    .capacity
                    .min(shape.replicas - placement.len() as u32);
                placement.extend(std::iter::repeat_n(candidate.node, take as usize));
                if placement.len() as u32 == shape.replicas {
                    break;
                }
            }
        }
        Layout::Spread => {
            let mut taken = vec![0u32; best.len()];
            // One replica per node per round; the capacities add up to the gang (checked by
            // the caller), and a round that places nothing ends the loop regardless.
            loop {
                let before = placement.len();
                for (slot, candidate) in best.iter().enumerate() {
                    if taken[slot] < candidate.capacity && (placement.len() as u32) < shape.replicas
                    {
                        taken[slot] += 1;
                        placement.push(candidate.node);
                    }
                }
                if placement.len() as u32 >= shape.replicas || placement.len() == before {
                    break;
                }
            }
        }
    }
    placement
}

impl Shortfall {
    /// A sentence saying why the gang does not fit; `holder` names a reserving workload.
    pub(super) fn message(&self, holder: Option<&str>) -> String {
        let request = self.per_replica;
        let [gpu, cpu, memory] = self.busy;
        let mut message = if self.fitting > 0 {
            format!(
                "only {} of {} replicas fit now; the gang starts when all fit",
                self.fitting, self.replicas
            )
        } else if gpu + cpu + memory == 0 && self.reserved > 0 {
            "every node with room is held for a higher-priority workload".to_owned()
        } else if gpu + cpu + memory == 0 {
            format!(
                "no node can run a replica needing {} nvidia.com/gpu, {} cpu, {} memory",
                request.gpu.0, request.cpu, request.memory
            )
        } else if gpu >= cpu && gpu >= memory {
            format!("no node with {} free nvidia.com/gpu", request.gpu.0)
        } else if cpu >= memory {
            format!("no node with {} free cpu", request.cpu)
        } else {
            format!("no node with {} free memory", request.memory)
        };
        let mut details = Vec::new();
        let busy: usize = self.busy.iter().sum();
        if busy > 0 {
            details.push(format!("{busy} without room now"));
        }
        if self.reserved > 0 {
            match holder {
                Some(holder) => details.push(format!("{} held for {holder}", self.reserved)),
                None => details.push(format!(
                    "{} held for a higher-priority workload",
                    self.reserved
                )),
            }
        }
        if self.too_small > 0 {
            details.push(format!("{} too small even when empty", self.too_small));
        }
        if self.untolerated > 0 {
            details.push(format!(
                "{} with taints it does not tolerate",
                self.untolerated
            ));
        }
        if self.unmatched > 0 {
            details.push(format!(
                "{} not matching its node selector or GPU product",
                self.unmatched
            ));
        }
        if self.without_gpus > 0 {
            details.push(format!("{} without GPUs", self.without_gpus));
        }
        if !details.is_empty() {
            let _ = write!(message, " (nodes: {})", details.join(", "));
        }
        message
    }
}
