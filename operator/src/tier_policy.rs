//! The tier policy engine: decides, from plain data, where each Dataset and Model should
//! live, and what each tier costs. Pure: no API calls; the controllers feed it what the
//! reflectors see and act on its decisions (migrations, conditions, Events, status).
//!
//! Rules, in order: a pinned item never moves; an item a starting workload needs is
//! promoted to its placement tier; an item idle for `demoteAfter` is demoted; no move may
//! put a tier above its capacity (moves already in flight count against it).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aigc_crds::storage_tier::TierClass;

const GIB: f64 = (1u64 << 30) as f64;

/// A StorageTier as the policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct TierView {
    /// StorageTier name.
    pub name: String,
    /// Temperature.
    pub class: TierClass,
    /// Most bytes it may hold; unlimited when `None`.
    pub capacity_bytes: Option<u64>,
    /// Price of one GiB for one month.
    pub cost_per_gib_month: Option<f64>,
}

/// A Dataset or Model as the policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemView {
    /// `kind/namespace/name`, unique.
    pub id: String,
    /// Bytes in its manifest.
    pub bytes: u64,
    /// Tier it is on now (`status.tier`).
    pub current_tier: String,
    /// Tier it belongs on when in use (`spec.placement.tier`).
    pub placement_tier: String,
    /// `spec.lifecycle.demoteAfter`.
    pub demote_after: Option<Duration>,
    /// `spec.lifecycle.demoteTo`.
    pub demote_to: Option<String>,
    /// `spec.lifecycle.promoteOnUse`.
    pub promote_on_use: bool,
    /// `spec.lifecycle.pinned`.
    pub pinned: bool,
    /// Last time a workload read it.
    pub last_access: Option<SystemTime>,
    /// A TrainingJob or InferenceService that uses it is waiting to start.
    pub wanted_by_workload: bool,
    /// A migration of this item to this tier is in flight.
    pub migrating_to: Option<String>,
}

/// What should happen to one item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Leave it where it is.
    Stay {
        /// Why, for the condition message.
        reason: StayReason,
    },
    /// Move it to a hotter tier before a workload starts.
    Promote {
        /// Destination tier.
        to: String,
    },
    /// Move it to a colder tier after it sat idle.
    Demote {
        /// Destination tier.
        to: String,
    },
    /// A move is due but the destination has no room.
    Blocked {
        /// The tier that is full.
        to: String,
        /// Bytes the move needs.
        needed_bytes: u64,
        /// Bytes free there.
        free_bytes: u64,
    },
}

/// Why an item stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StayReason {
    /// `pinned: true`.
    Pinned,
    /// Already moving.
    Migrating,
    /// Used recently enough, or no demotion configured.
    InUse,
    /// Already on the right tier.
    Placed,
    /// The tier it would move to does not exist.
    UnknownTier,
}

/// Decide every item's move. Deterministic: promotions first (a workload is waiting),
/// then demotions oldest-idle first; items are otherwise taken in `id` order.
pub fn decide(
    items: &[ItemView],
    tiers: &[TierView],
    now: SystemTime,
) -> BTreeMap<String, Decision> {
    let tier = |name: &str| tiers.iter().find(|t| t.name == name);
    let mut used: BTreeMap<&str, u64> = BTreeMap::new();
    for item in items {
        *used.entry(item.current_tier.as_str()).or_default() += item.bytes;
        if let Some(to) = &item.migrating_to {
            *used.entry(to.as_str()).or_default() += item.bytes;
        }
    }
    let mut decisions = BTreeMap::new();
    let mut wanted: Vec<(&ItemView, Decision)> = Vec::new();
    for item in items {
        let stay = |reason| Decision::Stay { reason };
        let decision = if item.pinned {
            stay(StayReason::Pinned)
        } else if item.migrating_to.is_some() {
            stay(StayReason::Migrating)
        } else if item.wanted_by_workload && item.promote_on_use {
            if item.current_tier == item.placement_tier {
                stay(StayReason::Placed)
            } else {
                Decision::Promote {
                    to: item.placement_tier.clone(),
                }
            }
        } else if let (Some(after), Some(to)) = (item.demote_after, &item.demote_to) {
            let idle = item
                .last_access
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or(Duration::MAX);
            if item.current_tier == *to {
                stay(StayReason::Placed)
            } else if idle >= after && !item.wanted_by_workload {
                Decision::Demote { to: to.clone() }
            } else {
                stay(StayReason::InUse)
            }
        } else {
            stay(StayReason::InUse)
        };
        match decision {
            Decision::Promote { ref to } | Decision::Demote { ref to } if tier(to).is_none() => {
                decisions.insert(item.id.clone(), stay(StayReason::UnknownTier));
            }
            Decision::Promote { .. } | Decision::Demote { .. } => wanted.push((item, decision)),
            other => {
                decisions.insert(item.id.clone(), other);
            }
        }
    }
    wanted.sort_by(|(a, da), (b, db)| {
        let rank = |d: &Decision| matches!(d, Decision::Demote { .. }) as u8;
        rank(da)
            .cmp(&rank(db))
            .then(a.last_access.cmp(&b.last_access))
            .then(a.id.cmp(&b.id))
    });
    for (item, decision) in wanted {
        let (Decision::Promote { to } | Decision::Demote { to }) = &decision else {
            continue;
        };
        let capacity = tier(to).and_then(|t| t.capacity_bytes);
        let in_use = used.get(to.as_str()).copied().unwrap_or(0);
        match capacity {
            Some(cap) if in_use + item.bytes > cap => {
                decisions.insert(
                    item.id.clone(),
                    Decision::Blocked {
                        to: to.clone(),
                        needed_bytes: item.bytes,
                        free_bytes: cap.saturating_sub(in_use),
                    },
                );
            }
            _ => {
                // The copy needs room at the destination while the source still holds its bytes.
                if let Some(t) = tier(to) {
                    *used.entry(t.name.as_str()).or_default() += item.bytes;
                }
                decisions.insert(item.id.clone(), decision.clone());
            }
        }
    }
    decisions
}

/// Usage and monthly cost of one tier.
#[derive(Clone, Debug, PartialEq)]
pub struct TierCost {
    /// StorageTier name.
    pub tier: String,
    /// Bytes stored.
    pub used_bytes: u64,
    /// Items stored.
    pub objects: u64,
    /// GiB stored for a month: what the price applies to.
    pub gib_months: f64,
    /// `gib_months * costPerGiBMonth`; `None` when the tier has no price.
    pub monthly_cost: Option<f64>,
}

/// Per-tier usage and monthly cost of what is stored there now.
pub fn cost_report(items: &[ItemView], tiers: &[TierView]) -> Vec<TierCost> {
    tiers
        .iter()
        .map(|t| {
            let here = items.iter().filter(|i| i.current_tier == t.name);
            let used_bytes: u64 = here.clone().map(|i| i.bytes).sum();
            let gib_months = used_bytes as f64 / GIB;
            TierCost {
                tier: t.name.clone(),
                used_bytes,
                objects: here.count() as u64,
                gib_months,
                monthly_cost: t.cost_per_gib_month.map(|c| c * gib_months),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn tiers() -> Vec<TierView> {
        vec![
            TierView {
                name: "hot".into(),
                class: TierClass::Hot,
                capacity_bytes: Some(100),
                cost_per_gib_month: Some(0.10),
            },
            TierView {
                name: "cold".into(),
                class: TierClass::Cold,
                capacity_bytes: None,
                cost_per_gib_month: Some(0.01),
            },
        ]
    }

    fn item(id: &str, bytes: u64, on: &str) -> ItemView {
        ItemView {
            id: id.into(),
            bytes,
            current_tier: on.into(),
            placement_tier: "hot".into(),
            demote_after: Some(7 * DAY),
            demote_to: Some("cold".into()),
            promote_on_use: true,
            pinned: false,
            last_access: None,
            wanted_by_workload: false,
            migrating_to: None,
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + 1000 * DAY
    }

    #[test]
    fn idle_data_is_demoted_and_recent_data_stays() {
        let mut idle = item("idle", 10, "hot");
        idle.last_access = Some(now() - 8 * DAY);
        let mut recent = item("recent", 10, "hot");
        recent.last_access = Some(now() - DAY);
        let d = decide(&[idle, recent], &tiers(), now());
        assert_eq!(d["idle"], Decision::Demote { to: "cold".into() });
        assert_eq!(
            d["recent"],
            Decision::Stay {
                reason: StayReason::InUse
            }
        );
    }

    #[test]
    fn pinned_never_moves() {
        let mut pinned = item("pinned", 10, "cold");
        pinned.pinned = true;
        pinned.wanted_by_workload = true;
        let mut idle_pinned = item("idle-pinned", 10, "hot");
        idle_pinned.pinned = true;
        let d = decide(&[pinned, idle_pinned], &tiers(), now());
        assert!(d.values().all(|x| *x
            == Decision::Stay {
                reason: StayReason::Pinned
            }));
    }

    #[test]
    fn use_promotes_before_the_workload_starts() {
        let mut wanted = item("wanted", 10, "cold");
        wanted.wanted_by_workload = true;
        let mut not_opted_in = item("manual", 10, "cold");
        not_opted_in.wanted_by_workload = true;
        not_opted_in.promote_on_use = false;
        let d = decide(&[wanted, not_opted_in], &tiers(), now());
        assert_eq!(d["wanted"], Decision::Promote { to: "hot".into() });
        assert_eq!(
            // Not opted in to promotion: it stays on the cold tier it was demoted to.
            d["manual"],
            Decision::Stay {
                reason: StayReason::Placed
            }
        );
    }

    #[test]
    fn capacity_is_respected_counting_moves_in_flight() {
        let resident = item("resident", 50, "hot");
        let mut moving = item("moving", 30, "cold");
        moving.migrating_to = Some("hot".into());
        let mut fits = item("a-fits", 20, "cold");
        fits.wanted_by_workload = true;
        let mut too_big = item("b-too-big", 5, "cold");
        too_big.wanted_by_workload = true;
        let d = decide(&[resident, moving, fits, too_big], &tiers(), now());
        assert_eq!(d["a-fits"], Decision::Promote { to: "hot".into() });
        assert_eq!(
            d["b-too-big"],
            Decision::Blocked {
                to: "hot".into(),
                needed_bytes: 5,
                free_bytes: 0
            }
        );
        assert_eq!(
            d["moving"],
            Decision::Stay {
                reason: StayReason::Migrating
            }
        );
    }

    #[test]
    fn moves_to_unknown_tiers_are_not_made() {
        let mut odd = item("odd", 1, "hot");
        odd.demote_to = Some("nowhere".into());
        let d = decide(&[odd], &tiers(), now());
        assert_eq!(
            d["odd"],
            Decision::Stay {
                reason: StayReason::UnknownTier
            }
        );
    }

    #[test]
    fn cost_report_prices_gib_months_per_tier() {
        let items = [
            item("a", 3 << 30, "hot"),
            item("b", 1 << 30, "hot"),
            item("c", 10 << 30, "cold"),
        ];
        let report = cost_report(&items, &tiers());
        assert_eq!(report[0].tier, "hot");
        assert_eq!((report[0].used_bytes, report[0].objects), (4 << 30, 2));
        assert!((report[0].monthly_cost.unwrap() - 0.40).abs() < 1e-9);
        assert!((report[1].monthly_cost.unwrap() - 0.10).abs() < 1e-9);
        assert!((report[1].gib_months - 10.0).abs() < 1e-9);
    }
}
