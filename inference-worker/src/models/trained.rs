//! Models that `train` produces and `serve` loads: their configuration (`config.json`),
//! weights (`model.safetensors`) and inference functions.
//!
//! A trained model directory holds everything needed to run it: [`ModelConfig`] names the
//! architecture and carries the feature normalisation, class labels or vocabulary.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::char_transformer::CharTransformerConfig;
use super::mlp::MlpConfig;

use crate::rng::Rng;
use crate::{Result, WorkerError, objects};

/// Object key of the weights.
pub const WEIGHTS_KEY: &str = "model.safetensors";
/// Object key of the configuration.
pub const CONFIG_KEY: &str = "config.json";
/// Version of `config.json` written by this build.
pub const CONFIG_FORMAT: u32 = 1;

/// `config.json` of a trained model: what a server needs to rebuild and run it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelConfig {
    /// See [`CONFIG_FORMAT`].
    pub format: u32,
    /// The architecture and its settings.
    #[serde(flatten)]
    pub model: ArchitectureConfig,
    /// How it was trained and how well it did (informational).
    #[serde(default)]
    pub training: serde_json::Value,
}

/// Architecture-specific configuration, tagged by `architecture`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "architecture", rename_all = "kebab-case")]
pub enum ArchitectureConfig {
    /// Multilayer perceptron on tabular features.
    Mlp(MlpConfig),
    /// Decoder-only character-level transformer.
    CharTransformer(CharTransformerConfig),
    /// An MLP head on a frozen sentence-embedding base model.
    TextClassifier(super::text_classifier::TextClassifierConfig),
}

/// Read and check a model directory's config and weights against its manifest.
pub fn read_model(dir: &Path, device: &Device) -> Result<(ModelConfig, HashMap<String, Tensor>)> {
    let manifest = objects::read_manifest(dir)?;
    let config_bytes = objects::read_verified(dir, &manifest, CONFIG_KEY)?;
    let config: ModelConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| WorkerError::Corrupt(format!("{}/{CONFIG_KEY}: {e}", dir.display())))?;
    if config.format != CONFIG_FORMAT {
        return Err(WorkerError::Corrupt(format!(
            "{}/{CONFIG_KEY}: format {} is not supported; this build reads format {CONFIG_FORMAT}",
            dir.display(),
            config.format
        )));
    }
    let weights = objects::read_verified(dir, &manifest, WEIGHTS_KEY)?;
    let tensors = candle_core::safetensors::load_buffer(&weights, device)?;
    Ok((config, tensors))
}

/// The trainable tensors of a model, in a fixed order with stable names.
#[derive(Clone, Debug, Default)]
pub struct Params {
    names: Vec<String>,
    vars: Vec<Var>,
}

/// How a new parameter is initialised.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Init {
    /// Uniform in `[-b, b]`.
    Uniform(f64),
    /// Normal with this standard deviation.
    Normal(f64),
    /// All equal to this value.
    Const(f32),
}

impl Params {
    /// Names in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Variables in the same order as [`Params::names`].
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// Name to tensor, for saving.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.names
            .iter()
            .cloned()
            .zip(self.vars.iter().map(|v| v.as_tensor().clone()))
            .collect()
    }

    /// Overwrite every parameter with the tensor of the same name.
    pub fn assign(&self, tensors: &HashMap<String, Tensor>, prefix: &str) -> Result<()> {
        for (name, var) in self.names.iter().zip(&self.vars) {
            let key = format!("{prefix}{name}");
            let t = tensors.get(&key).ok_or_else(|| {
                WorkerError::Corrupt(format!("the checkpoint has no tensor {key:?}"))
            })?;
            if t.dims() != var.dims() {
                return Err(WorkerError::Corrupt(format!(
                    "checkpoint tensor {key:?} has shape {:?}; the model has {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(t)?;
        }
        Ok(())
    }

    /// Save the parameters as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        Ok(candle_core::safetensors::save(&self.tensors(), path)?)
    }
}

/// Where new parameters come from.
pub(crate) enum ParamSource<'a> {
    /// Fresh, seeded initialisation.
    Init(&'a mut Rng),
    /// Trained weights by name; each is removed as it is used.
    Loaded(&'a mut HashMap<String, Tensor>),
}

/// Creates a model's parameters in order, from a seeded initialisation or loaded weights.
pub(crate) struct Builder<'a> {
    params: Params,
    source: ParamSource<'a>,
    device: Device,
}

impl<'a> Builder<'a> {
    pub(crate) fn new(source: ParamSource<'a>, device: &Device) -> Self {
        Builder {
            params: Params::default(),
            source,
            device: device.clone(),
        }
    }

    /// Create one parameter.
    pub(crate) fn param(
        &mut self,
        name: &str,
        shape: impl Into<Shape>,
        init: Init,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let tensor = match &mut self.source {
            ParamSource::Init(rng) => {
                let values: Vec<f32> = (0..shape.elem_count())
                    .map(|_| match init {
                        Init::Uniform(b) => rng.uniform(b),
                        Init::Normal(s) => rng.normal(s),
                        Init::Const(c) => c,
                    })
                    .collect();
                Tensor::from_vec(values, shape.clone(), &self.device)?
            }
            ParamSource::Loaded(map) => {
                let t = map.remove(name).ok_or_else(|| {
                    WorkerError::Corrupt(format!("the weights have no tensor {name:?}"))
                })?;
                if t.dims() != shape.dims() {
                    return Err(WorkerError::Corrupt(format!(
                        "tensor {name:?} has shape {:?}; the config implies {:?}",
                        t.dims(),
                        shape.dims()
                    )));
                }
                t.to_dtype(DType::F32)?.to_device(&self.device)?
            }
        };
        let var = Var::from_tensor(&tensor)?;
        let t = var.as_tensor().clone();
        self.params.names.push(name.to_owned());
        self.params.vars.push(var);
        Ok(t)
    }

    /// A linear layer with PyTorch's default initialisation (uniform in `±1/sqrt(fan_in)`),
    /// or normal weights and zero bias when `std` is given.
    pub(crate) fn dense(
        &mut self,
        name: &str,
        (fan_in, fan_out): (usize, usize),
        bias: bool,
        std: Option<f64>,
    ) -> Result<Dense> {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let w_init = std.map_or(Init::Uniform(bound), Init::Normal);
        let b_init = if std.is_some() {
            Init::Const(0.0)
        } else {
            Init::Uniform(bound)
        };
        let weight = self.param(&format!("{name}.weight"), (fan_out, fan_in), w_init)?;
        let bias = if bias {
            Some(self.param(&format!("{name}.bias"), fan_out, b_init)?)
        } else {
            None
        };
        Ok(Dense { weight, bias })
    }

    /// The device parameters are created on.
    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// The parameters created, in order.
    pub(crate) fn finish(self) -> Params {
        self.params
    }
}

/// A linear layer over the last dimension: `x @ w^T + b`.
#[derive(Clone, Debug)]
pub(crate) struct Dense {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.t()?;
        let y = match x.rank() {
            2 => x.matmul(&w)?,
            _ => {
                // Fold leading dimensions so one matmul covers the whole batch.
                let dims = x.dims().to_vec();
                let last = dims[dims.len() - 1];
                let rows: usize = dims[..dims.len() - 1].iter().product();
                let mut out_dims = dims[..dims.len() - 1].to_vec();
                out_dims.push(w.dim(1)?);
                x.reshape((rows, last))?.matmul(&w)?.reshape(out_dims)?
            }
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}
