//! Typed resource amounts: millicores of CPU, bytes of memory and whole GPUs, and the
//! triple the scheduler adds and subtracts.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};

use aigc_crds::common::Quantity;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// CPU in thousandths of a core (`500m` is 500, `2` is 2000).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millicores(pub u64);

/// Memory in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

/// A whole number of `nvidia.com/gpu` devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gpus(pub u32);

fn milli_of(field: &str, quantity: &Quantity) -> Result<u128, Error> {
    quantity.to_milli().map_err(|source| Error::Quantity {
        field: field.to_owned(),
        source,
    })
}

fn out_of_range(field: &str, quantity: &Quantity, problem: &'static str) -> Error {
    Error::QuantityOutOfRange {
        field: field.to_owned(),
        value: quantity.0.clone(),
        problem,
    }
}

impl Millicores {
    /// Parses a CPU quantity; `field` names it in the error.
    pub fn parse(field: &str, quantity: &Quantity) -> Result<Self, Error> {
        let milli = milli_of(field, quantity)?;
        u64::try_from(milli)
            .map(Millicores)
            .map_err(|_| out_of_range(field, quantity, "is more CPU than any node has"))
    }
}

impl Bytes {
    /// Parses a memory quantity, rounding a fractional byte up; `field` names it in the error.
    pub fn parse(field: &str, quantity: &Quantity) -> Result<Self, Error> {
        let bytes = milli_of(field, quantity)?.div_ceil(1000);
        u64::try_from(bytes)
            .map(Bytes)
            .map_err(|_| out_of_range(field, quantity, "is more memory than any node has"))
    }
}

impl Gpus {
    /// Parses a GPU count, which must be whole; `field` names it in the error.
    pub fn parse(field: &str, quantity: &Quantity) -> Result<Self, Error> {
        let milli = milli_of(field, quantity)?;
        if !milli.is_multiple_of(1000) {
            return Err(out_of_range(
                field,
                quantity,
                "is not a whole number of GPUs; nvidia.com/gpu counts whole devices",
            ));
        }
        u32::try_from(milli / 1000)
            .map(Gpus)
            .map_err(|_| out_of_range(field, quantity, "is more GPUs than any cluster has"))
    }
}

impl fmt::Display for Millicores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u32); 5] =
            [("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
        for (suffix, shift) in UNITS {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{suffix}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Gpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let noun = if self.0 == 1 { "GPU" } else { "GPUs" };
        write!(f, "{} {noun}", self.0)
    }
}

/// A quantity in configuration: a string such as `16Gi`, or a plain YAML number.
#[derive(Deserialize)]
#[serde(untagged)]
enum QuantityText {
    Text(String),
    Whole(u64),
}

impl From<QuantityText> for Quantity {
    fn from(text: QuantityText) -> Self {
        match text {
            QuantityText::Text(text) => Quantity(text),
            QuantityText::Whole(n) => Quantity(n.to_string()),
        }
    }
}

macro_rules! quantity_serde {
    ($ty:ty, $what:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let quantity = Quantity::from(QuantityText::deserialize(deserializer)?);
                <$ty>::parse($what, &quantity).map_err(serde::de::Error::custom)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.quantity_text())
            }
        }
    };
}

quantity_serde!(Millicores, "cpu");
quantity_serde!(Bytes, "memory");
quantity_serde!(Gpus, "nvidia.com/gpu");

impl Millicores {
    fn quantity_text(&self) -> String {
        self.to_string()
    }
}

impl Bytes {
    fn quantity_text(&self) -> String {
        self.to_string()
    }
}

impl Gpus {
    fn quantity_text(&self) -> String {
        self.0.to_string()
    }
}

/// CPU, memory and GPUs together: a request, a node's free capacity or a queue's usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Amounts {
    /// CPU.
    pub cpu: Millicores,
    /// Memory.
    pub memory: Bytes,
    /// `nvidia.com/gpu`.
    pub gpu: Gpus,
}

impl Amounts {
    /// Nothing at all.
    pub const ZERO: Amounts = Amounts {
        cpu: Millicores(0),
        memory: Bytes(0),
        gpu: Gpus(0),
    };

    /// Shorthand for tests and conversions: cores in millicores, memory in bytes, GPUs.
    pub const fn new(cpu_millis: u64, memory_bytes: u64, gpus: u32) -> Self {
        Amounts {
            cpu: Millicores(cpu_millis),
            memory: Bytes(memory_bytes),
            gpu: Gpus(gpus),
        }
    }

    /// Whether every component of `self` is at most the same component of `other`.
    pub fn fits_in(&self, other: &Amounts) -> bool {
        self.cpu <= other.cpu && self.memory <= other.memory && self.gpu <= other.gpu
    }

    /// Subtraction that stops at zero in each component.
    pub fn saturating_sub(&self, other: &Amounts) -> Amounts {
        Amounts {
            cpu: Millicores(self.cpu.0.saturating_sub(other.cpu.0)),
            memory: Bytes(self.memory.0.saturating_sub(other.memory.0)),
            gpu: Gpus(self.gpu.0.saturating_sub(other.gpu.0)),
        }
    }

    /// `self` taken `n` times, saturating rather than overflowing.
    pub fn times(&self, n: u32) -> Amounts {
        Amounts {
            cpu: Millicores(self.cpu.0.saturating_mul(u64::from(n))),
            memory: Bytes(self.memory.0.saturating_mul(u64::from(n))),
            gpu: Gpus(self.gpu.0.saturating_mul(n)),
        }
    }

    /// How many copies of `request` fit in `self` (`u32::MAX` when the request is empty).
    pub fn copies_of(&self, request: &Amounts) -> u32 {
        fn per(free: u64, each: u64) -> u64 {
            free.checked_div(each).unwrap_or(u64::MAX)
        }
        let copies = per(self.cpu.0, request.cpu.0)
            .min(per(self.memory.0, request.memory.0))
            .min(per(u64::from(self.gpu.0), u64::from(request.gpu.0)));
        u32::try_from(copies).unwrap_or(u32::MAX)
    }
}

impl Add for Amounts {
    type Output = Amounts;

    fn add(self, other: Amounts) -> Amounts {
        Amounts {
            cpu: Millicores(self.cpu.0.saturating_add(other.cpu.0)),
            memory: Bytes(self.memory.0.saturating_add(other.memory.0)),
            gpu: Gpus(self.gpu.0.saturating_add(other.gpu.0)),
        }
    }
}

impl AddAssign for Amounts {
    fn add_assign(&mut self, other: Amounts) {
        *self = *self + other;
    }
}

impl Sub for Amounts {
    type Output = Amounts;

    /// Component-wise difference, stopping at zero.
    fn sub(self, other: Amounts) -> Amounts {
        self.saturating_sub(&other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.into())
    }

    #[test]
    fn cpu_memory_and_gpu_quantities_parse_into_their_units() {
        assert_eq!(
            Millicores::parse("cpu", &q("500m")).unwrap(),
            Millicores(500)
        );
        assert_eq!(Millicores::parse("cpu", &q("4")).unwrap(), Millicores(4000));
        assert_eq!(Bytes::parse("memory", &q("16Gi")).unwrap(), Bytes(16 << 30));
        assert_eq!(
            Bytes::parse("memory", &q("1.5T")).unwrap(),
            Bytes(1_500_000_000_000)
        );
        assert_eq!(Bytes::parse("memory", &q("1500m")).unwrap(), Bytes(2));
        assert_eq!(Gpus::parse("gpus", &q("4")).unwrap(), Gpus(4));
    }

    #[test]
    fn fractional_gpus_are_rejected_naming_the_field() {
        let err = Gpus::parse("queues[a].quota.gpu", &q("500m")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("queues[a].quota.gpu") && text.contains("\"500m\""),
            "{text}"
        );
        assert!(text.contains("whole"), "{text}");
    }

    #[test]
    fn malformed_quantities_name_the_field_and_value() {
        let text = Millicores::parse("resources.cpu", &q("four"))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("resources.cpu") && text.contains("\"four\""),
            "{text}"
        );
    }

    #[test]
    fn amounts_display_like_kubernetes_quantities() {
        assert_eq!(Millicores(1500).to_string(), "1500m");
        assert_eq!(Millicores(2000).to_string(), "2");
        assert_eq!(Bytes(16 << 30).to_string(), "16Gi");
        assert_eq!(Bytes(1000).to_string(), "1000");
        assert_eq!(Gpus(1).to_string(), "1 GPU");
        assert_eq!(Gpus(8).to_string(), "8 GPUs");
    }

    #[test]
    fn copies_of_counts_the_scarcest_resource() {
        let free = Amounts::new(8000, 64 << 30, 8);
        assert_eq!(free.copies_of(&Amounts::new(1000, 4 << 30, 2)), 4);
        assert_eq!(free.copies_of(&Amounts::new(3000, 1 << 30, 0)), 2);
        assert_eq!(Amounts::ZERO.copies_of(&Amounts::new(1, 0, 0)), 0);
    }

    #[test]
    fn configuration_accepts_strings_and_plain_numbers() {
        let gpus: Gpus = serde_yaml::from_str("8").unwrap();
        let memory: Bytes = serde_yaml::from_str("\"512Gi\"").unwrap();
        assert_eq!((gpus, memory), (Gpus(8), Bytes(512 << 30)));
        assert!(serde_yaml::from_str::<Gpus>("\"1.5\"").is_err());
    }
}
