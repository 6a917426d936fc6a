//! Multilayer perceptron for tabular classification and regression.
//!
//! Inputs are the feature columns, normalised with the training split's mean and standard
//! deviation (stored in the config; nulls become the mean). Classification outputs one logit
//! per class label; regression outputs the normalised target.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{
    ArchitectureConfig, Builder, Dense, InputColumn, InputKind, ParamSource, Params, Predictor,
    read_model,
};
use crate::rng::Rng;
use crate::{Result, WorkerError};

/// What a tabular model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// One of a fixed set of labels.
    Classification,
    /// A number.
    Regression,
}

/// One input feature and its normalisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    /// Column name.
    pub name: String,
    /// Mean over the training split; also the value used for nulls.
    pub mean: f64,
    /// Standard deviation over the training split (1 when the column is constant).
    pub std: f64,
}

/// Configuration of a trained MLP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MlpConfig {
    /// Classification or regression.
    pub task: Task,
    /// Input columns in order, with normalisation.
    pub features: Vec<Feature>,
    /// The predicted column.
    pub target: String,
    /// Class labels in output order (classification).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Mean of the target over the training split (regression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_mean: Option<f64>,
    /// Standard deviation of the target over the training split (regression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_std: Option<f64>,
    /// Widths of the hidden layers (ReLU).
    pub hidden: Vec<usize>,
}

impl MlpConfig {
    /// Width of the output layer.
    pub fn outputs(&self) -> usize {
        match self.task {
            Task::Classification => self.labels.len(),
            Task::Regression => 1,
        }
    }
}

/// One prediction.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Prediction {
    /// The most likely label and every label's probability.
    Class {
        /// Most likely label.
        label: String,
        /// Probability of each label.
        probabilities: BTreeMap<String, f64>,
    },
    /// A predicted number, in the target's units.
    Value {
        /// The prediction.
        value: f64,
    },
}

/// A multilayer perceptron with its configuration.
#[derive(Debug)]
pub struct Mlp {
    config: MlpConfig,
    params: Params,
    layers: Vec<Dense>,
    device: Device,
}

impl Mlp {
    /// A freshly initialised model, drawn from `rng`.
    pub fn new(config: MlpConfig, rng: &mut Rng, device: &Device) -> Result<Self> {
        Self::build(config, ParamSource::Init(rng), device)
    }

    /// Load a trained model directory (checked against its manifest).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (config, mut tensors) = read_model(dir, device)?;
        match config.model {
            ArchitectureConfig::Mlp(c) => Self::build(c, ParamSource::Loaded(&mut tensors), device),
            other => Err(WorkerError::InvalidArgument(format!(
                "{} holds a {} model, not an MLP",
                dir.display(),
                architecture_name(&other)
            ))),
        }
    }

    /// A model from its configuration and trained weights (as in `model.safetensors`).
    pub fn from_tensors(
        config: MlpConfig,
        mut tensors: std::collections::HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        Self::build(config, ParamSource::Loaded(&mut tensors), device)
    }

    fn build(config: MlpConfig, source: ParamSource<'_>, device: &Device) -> Result<Self> {
        if config.features.is_empty() || config.outputs() == 0 {
            return Err(WorkerError::InvalidArgument(
                "an MLP needs at least one feature and one output".into(),
            ));
        }
        let mut b = Builder::new(source, device);
        let mut widths = vec![config.features.len()];
        widths.extend(&config.hidden);
        widths.push(config.outputs());
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| b.dense(&format!("layers.{i}"), (w[0], w[1]), true, None))
            .collect::<Result<Vec<_>>>()?;
        Ok(Mlp {
            config,
            params: b.finish(),
            layers,
            device: device.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    /// The trainable parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Logits (classification) or normalised predictions (regression) for normalised inputs
    /// of shape `(rows, features)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    /// Normalised feature matrix for rows given as JSON objects keyed by column name. Numbers,
    /// booleans and numeric strings are accepted; null means "unknown" and becomes the mean.
    pub fn encode(&self, rows: &[serde_json::Map<String, serde_json::Value>]) -> Result<Tensor> {
        let width = self.config.features.len();
        let mut values = Vec::with_capacity(rows.len() * width);
        for (i, row) in rows.iter().enumerate() {
            for f in &self.config.features {
                let raw = row
                    .get(&f.name)
                    .ok_or_else(|| WorkerError::InvalidInstance {
                        row: i,
                        column: f.name.clone(),
                        reason: format!(
                            "missing; every instance needs the features {:?}",
                            self.config
                                .features
                                .iter()
                                .map(|f| f.name.as_str())
                                .collect::<Vec<_>>()
                        ),
                    })?;
                let x = json_number(raw).ok_or_else(|| WorkerError::InvalidInstance {
                    row: i,
                    column: f.name.clone(),
                    reason: format!(
                        "{raw} is not usable; accepted: a finite number, a numeric string, a boolean or null"
                    ),
                })?;
                values.push(normalise(x, f));
            }
        }
        Ok(Tensor::from_vec(values, (rows.len(), width), &self.device)?)
    }

    /// Predict each row (see [`Mlp::encode`] for the accepted values).
    pub fn predict(
        &self,
        rows: &[serde_json::Map<String, serde_json::Value>],
    ) -> Result<Vec<Prediction>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        self.decode(&self.forward(&self.encode(rows)?)?)
    }

    /// Predict rows of raw (not yet normalised) feature values in the config's order.
    pub fn predict_values(&self, rows: &[Vec<f64>]) -> Result<Vec<Prediction>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let width = self.config.features.len();
        let mut values = Vec::with_capacity(rows.len() * width);
        for row in rows {
            if row.len() != width {
                return Err(WorkerError::InvalidArgument(format!(
                    "a row has {} values; the model takes {width}",
                    row.len()
                )));
            }
            values.extend(
                row.iter()
                    .zip(&self.config.features)
                    .map(|(&x, f)| normalise(Some(x), f)),
            );
        }
        let x = Tensor::from_vec(values, (rows.len(), width), &self.device)?;
        self.decode(&self.forward(&x)?)
    }

    /// Predictions as JSON: labels (numbers when every label is one) or values.
    pub fn predictions_json(&self, predictions: Vec<Prediction>) -> Vec<serde_json::Value> {
        let numeric_labels = self
            .config
            .labels
            .iter()
            .all(|l| l.parse::<f64>().is_ok_and(f64::is_finite));
        predictions
            .into_iter()
            .map(|p| match p {
                Prediction::Class { label, .. } => label_value(label, numeric_labels),
                Prediction::Value { value } => serde_json::json!(value),
            })
            .collect()
    }

    /// Predictions from the network's output.
    fn decode(&self, out: &Tensor) -> Result<Vec<Prediction>> {
        match self.config.task {
            Task::Classification => {
                let probs = candle_nn::ops::softmax(out, 1)?.to_vec2::<f32>()?;
                Ok(probs
                    .into_iter()
                    .map(|p| {
                        let best = argmax(&p);
                        Prediction::Class {
                            label: self.config.labels[best].clone(),
                            probabilities: self
                                .config
                                .labels
                                .iter()
                                .cloned()
                                .zip(p.iter().map(|&x| x as f64))
                                .collect(),
                        }
                    })
                    .collect())
            }
            Task::Regression => {
                let (mean, std) = (
                    self.config.target_mean.unwrap_or(0.0),
                    self.config.target_std.unwrap_or(1.0),
                );
                Ok(out
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .into_iter()
                    .map(|y| Prediction::Value {
                        value: y as f64 * std + mean,
                    })
                    .collect())
            }
        }
    }
}

impl Predictor for Mlp {
    fn inputs(&self) -> Vec<InputColumn> {
        self.config
            .features
            .iter()
            .map(|f| InputColumn {
                name: f.name.clone(),
                kind: InputKind::Number,
            })
            .collect()
    }

    fn target(&self) -> &str {
        &self.config.target
    }

    fn predict_json(
        &self,
        instances: &[serde_json::Map<String, serde_json::Value>],
    ) -> Result<Vec<serde_json::Value>> {
        Ok(self.predictions_json(self.predict(instances)?))
    }
}

/// A class label as JSON: a number when every label of the model is one (the target column
/// was numeric), else the string.
fn label_value(label: String, numeric: bool) -> serde_json::Value {
    if numeric {
        if let Ok(n) = label.parse::<i64>() {
            return n.into();
        }
        if let Some(n) = label
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            return serde_json::Value::Number(n);
        }
    }
    serde_json::Value::String(label)
}

/// A feature value normalised; `None` (null) becomes 0, the normalised mean.
pub(crate) fn normalise(x: Option<f64>, f: &Feature) -> f32 {
    x.map_or(0.0, |x| ((x - f.mean) / f.std) as f32)
}

/// Index of the largest value.
pub(crate) fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

/// `Some(None)` for null, `Some(Some(x))` for a usable value, `None` for anything else.
fn json_number(v: &serde_json::Value) -> Option<Option<f64>> {
    match v {
        serde_json::Value::Null => Some(None),
        serde_json::Value::Number(n) => n.as_f64().filter(|x| x.is_finite()).map(Some),
        serde_json::Value::Bool(b) => Some(Some(f64::from(u8::from(*b)))),
        serde_json::Value::String(s) => text_number(s),
        _ => None,
    }
}

/// Parse a feature from its text form as stored in prepared shards: empty is null, booleans
/// are 0 and 1, otherwise a finite number.
pub(crate) fn text_number(s: &str) -> Option<Option<f64>> {
    let s = s.trim();
    if s.is_empty() {
        return Some(None);
    }
    match s.to_ascii_lowercase().as_str() {
        "true" => return Some(Some(1.0)),
        "false" => return Some(Some(0.0)),
        _ => {}
    }
    s.parse::<f64>().ok().filter(|x| x.is_finite()).map(Some)
}

pub(crate) fn architecture_name(a: &ArchitectureConfig) -> &'static str {
    match a {
        ArchitectureConfig::Mlp(_) => "mlp",
        ArchitectureConfig::CharTransformer(_) => "char-transformer",
        ArchitectureConfig::TextClassifier(_) => "text-classifier",
    }
}
