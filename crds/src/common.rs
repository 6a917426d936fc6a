//! Field types shared by several kinds: references, quantities, durations, placement,
//! lifecycle policy and compute resources.
//!
//! Each newtype carries the validation pattern that the CRD schema enforces at apply time,
//! so a value that reached the operator already has the accepted shape.

use std::borrow::Cow;
use std::fmt;

use kube::KubeSchema;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::Error;

/// A DNS-1123 subdomain, the name format of every namespaced Kubernetes object.
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A Kubernetes resource quantity such as `500m`, `2`, `16Gi` or `1.5T`.
pub const QUANTITY_PATTERN: &str =
    r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E|[eE][+-]?[0-9]+)?$";

/// A duration made of number-unit pairs, e.g. `90s`, `15m`, `36h`, `7d`, `1h30m`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d))+$";

/// An S3 object URI: `s3://bucket` or `s3://bucket/prefix`.
pub const S3_URI_PATTERN: &str = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$";

/// An HTTP or HTTPS URL.
pub const HTTP_URL_PATTERN: &str = r"^https?://[^\s/$.?#][^\s]*$";

/// A hex-encoded SHA-256 digest.
pub const SHA256_PATTERN: &str = "^[a-f0-9]{64}$";

/// A reference to an object of a known kind in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LocalObjectRef {
    /// Name of the referenced object, in the same namespace as this resource.
    #[schemars(pattern(NAME_PATTERN), length(max = 253))]
    pub name: String,
}

/// A reference to a Secret, possibly in another namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(pattern(NAME_PATTERN), length(max = 253))]
    pub name: String,
    /// Namespace of the Secret. Required for cluster-scoped resources such as StorageTier;
    /// when omitted the operator's own namespace is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(NAME_PATTERN), length(max = 63))]
    pub namespace: Option<String>,
}

/// A Kubernetes resource quantity (`500m`, `4`, `16Gi`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Quantity(pub String);

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": QUANTITY_PATTERN,
            "description": "A Kubernetes quantity, e.g. 500m, 4, 16Gi."
        })
    }
}

impl Quantity {
    /// The quantity in thousandths of its unit, rounded up as Kubernetes rounds requests:
    /// `500m` is 500, `2` is 2000, `1Ki` is 1_024_000, `1.5T` is 1_500_000_000_000_000.
    pub fn to_milli(&self) -> Result<u128, Error> {
        let invalid = |reason: &'static str| Error::InvalidQuantity {
            value: self.0.clone(),
            reason,
        };
        let text = self.0.as_str();
        let number_len = text
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let (number, suffix) = text.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(invalid("no digits before the suffix"));
        }
        if fraction.contains('.') {
            return Err(invalid("more than one decimal point"));
        }
        // The digits without the decimal point, and how many of them follow it.
        let mut mantissa: u128 = 0;
        for digit in whole.bytes().chain(fraction.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(u128::from(digit - b'0')))
                .ok_or_else(|| invalid("too many digits"))?;
        }
        let fraction_digits =
            i32::try_from(fraction.len()).map_err(|_| invalid("too many digits"))?;
        let (decimal_exponent, binary_exponent) = match suffix {
            "" => (0, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            exponent if exponent.starts_with(['e', 'E']) => {
                let value: i32 = exponent[1..]
                    .trim_start_matches('+')
                    .parse()
                    .map_err(|_| invalid("the exponent is not a whole number"))?;
                (value, 0)
            }
            _ => return Err(invalid("unknown suffix")),
        };
        let too_large = || invalid("too large");
        let scaled = mantissa
            .checked_mul(1u128 << binary_exponent)
            .ok_or_else(too_large)?;
        // Thousandths: one more factor of 10^3 on top of the suffix.
        let power = decimal_exponent + 3 - fraction_digits;
        if power >= 0 {
            let factor = 10u128
                .checked_pow(power.unsigned_abs())
                .ok_or_else(too_large)?;
            scaled.checked_mul(factor).ok_or_else(too_large)
        } else {
            match 10u128.checked_pow(power.unsigned_abs()) {
                Some(divisor) => Ok(scaled.div_ceil(divisor)),
                // Smaller than any representable thousandth: rounds up to one unless zero.
                None => Ok(u128::from(scaled > 0)),
            }
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A duration such as `90s`, `15m`, `36h`, `7d` or `1h30m`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub String);

impl Duration {
    /// The duration as a standard library value. Units: `ms`, `s`, `m`, `h`, `d` (24h).
    pub fn to_std(&self) -> Result<std::time::Duration, Error> {
        let invalid = || Error::InvalidDuration(self.0.clone());
        let mut total_ms: u64 = 0;
        let mut rest = self.0.as_str();
        if rest.is_empty() {
            return Err(invalid());
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(invalid());
            }
            let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
            let factor_ms = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(invalid()),
            };
            rest = &rest[unit_len..];
            total_ms = value
                .checked_mul(factor_ms)
                .and_then(|ms| total_ms.checked_add(ms))
                .ok_or_else(invalid)?;
        }
        Ok(std::time::Duration::from_millis(total_ms))
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration of number-unit pairs with units ms, s, m, h, d, e.g. 90s, 36h, 7d, 1h30m."
        })
    }
}

/// Where a Dataset or Model should live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Placement {
    /// Name of the StorageTier that holds the data.
    #[schemars(pattern(NAME_PATTERN), length(max = 253))]
    pub tier: String,
}

/// How data moves between tiers over its life.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.demoteTo) || has(self.demoteAfter)").message("demoteTo requires demoteAfter: say how long the data must stay unused before it moves"))]
#[x_kube(validation = Rule::new("!(has(self.pinned) && self.pinned) || !has(self.demoteAfter)").message("a pinned resource never moves: remove demoteAfter or set pinned to false"))]
pub struct Lifecycle {
    /// Move the data to `demoteTo` once nothing has read it for this long (e.g. `7d`, `36h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demote_after: Option<Duration>,
    /// StorageTier to demote to. Requires `demoteAfter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(NAME_PATTERN), length(max = 253))]
    pub demote_to: Option<String>,
    /// Copy the data back to the placement tier before a TrainingJob or InferenceService that
    /// uses it starts.
    #[serde(default)]
    pub promote_on_use: bool,
    /// Keep the data on its placement tier forever; the policy engine never moves it.
    #[serde(default)]
    pub pinned: bool,
}

/// Where a workload may run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// Run on CPU nodes only.
    #[default]
    Cpu,
    /// Run on GPU nodes only; waits until GPUs are free.
    Gpu,
    /// Take a GPU when one is free, fall back to CPU after the operator's `autoFallbackAfter`.
    Auto,
}

/// Compute resources for each replica of a workload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.accelerator != 'cpu' || !has(self.gpus) || self.gpus == 0").message("gpus must be 0 or unset when accelerator is cpu"))]
#[x_kube(validation = Rule::new("self.accelerator != 'cpu' || !has(self.gpuProduct)").message("gpuProduct applies only when accelerator is gpu or auto"))]
pub struct Resources {
    /// `cpu`, `gpu` or `auto` (GPU when one is free, otherwise CPU). Defaults to `cpu`.
    #[serde(default)]
    pub accelerator: Accelerator,
    /// GPUs per replica (`nvidia.com/gpu`) when running on a GPU. Defaults to 1 for `gpu` and `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub gpus: Option<u32>,
    /// Required GPU product, matched against the node label `nvidia.com/gpu.product`
    /// (e.g. `NVIDIA-H100-80GB-HBM3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub gpu_product: Option<String>,
    /// CPU request per replica, e.g. `500m` or `4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory request per replica, e.g. `2Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// An object in S3-compatible storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Source {
    /// Object or prefix URI, `s3://bucket/prefix`.
    #[schemars(pattern(S3_URI_PATTERN))]
    pub uri: String,
    /// Endpoint URL of an S3-compatible service; AWS when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(HTTP_URL_PATTERN))]
    pub endpoint: Option<String>,
    /// Region of the bucket. Defaults to `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// Secret in this namespace with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`;
    /// the default credential chain is used when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalObjectRef>,
}

/// Files on a PersistentVolumeClaim in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// Name of the PersistentVolumeClaim.
    #[schemars(pattern(NAME_PATTERN), length(max = 253))]
    pub claim_name: String,
    /// Path of the file or directory inside the volume. Defaults to the volume root.
    #[serde(default = "root_path")]
    #[schemars(pattern(r"^/"))]
    pub path: String,
}

fn root_path() -> String {
    "/".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn milli(s: &str) -> u128 {
        Quantity(s.into()).to_milli().unwrap()
    }

    #[test]
    fn quantities_parse_into_thousandths() {
        assert_eq!(milli("500m"), 500);
        assert_eq!(milli("4"), 4_000);
        assert_eq!(milli("0.5"), 500);
        assert_eq!(milli(".25"), 250);
        assert_eq!(milli("16Gi"), 16 * (1 << 30) * 1_000);
        assert_eq!(milli("1.5T"), 1_500_000_000_000_000);
        assert_eq!(milli("2k"), 2_000_000);
        assert_eq!(milli("1e3"), 1_000_000);
        assert_eq!(milli("1E-3"), 1);
        assert_eq!(milli("1.5Ki"), 1_536_000);
    }

    #[test]
    fn quantities_round_up_below_a_thousandth() {
        assert_eq!(milli("0.1m"), 1);
        assert_eq!(milli("1e-9"), 1);
        assert_eq!(milli("0m"), 0);
    }

    #[test]
    fn malformed_quantities_are_rejected_with_the_value() {
        for bad in [
            "",
            "m",
            "1.2.3",
            "5x",
            "4gi",
            "1e",
            "1e1.5",
            "-1",
            "99999999999999999999999999999999999999999",
        ] {
            let err = Quantity(bad.into()).to_milli().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn durations_parse_into_milliseconds() {
        let ms = |s: &str| Duration(s.into()).to_std().unwrap().as_millis();
        assert_eq!(ms("90s"), 90_000);
        assert_eq!(ms("1h30m"), 5_400_000);
        assert_eq!(ms("7d"), 604_800_000);
        assert_eq!(ms("250ms"), 250);
    }

    #[test]
    fn malformed_durations_are_rejected_with_the_value() {
        for bad in ["", "10", "m", "5w", "1.5h", "99999999999999999999d"] {
            let err = Duration(bad.into()).to_std().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
