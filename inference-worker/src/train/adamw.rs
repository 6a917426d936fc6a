//! AdamW (decoupled weight decay, bias-corrected moments) with state that checkpoints can save
//! and restore exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::models::Params;
use crate::{Result, WorkerError};

/// AdamW hyperparameters.
#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// The optimizer: one first and second moment per parameter, and the step count.
pub struct AdamW {
    config: AdamWConfig,
    step: u64,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    /// Zero moments for these parameters.
    pub fn new(params: &Params, config: AdamWConfig) -> Result<Self> {
        let zeros = |v: &Var| v.zeros_like();
        Ok(AdamW {
            config,
            step: 0,
            m: params
                .vars()
                .iter()
                .map(zeros)
                .collect::<candle_core::Result<_>>()?,
            v: params
                .vars()
                .iter()
                .map(zeros)
                .collect::<candle_core::Result<_>>()?,
        })
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Update every parameter that has a gradient.
    pub fn step(&mut self, params: &Params, grads: &GradStore) -> Result<()> {
        self.step_with(params, |_, var| grads.get(var.as_tensor()).cloned())
    }

    /// Update every parameter for which `grad(index, var)` gives a gradient (index in
    /// `Params` order).
    pub fn step_with(
        &mut self,
        params: &Params,
        grad: impl Fn(usize, &Var) -> Option<Tensor>,
    ) -> Result<()> {
        let c = self.config;
        self.step += 1;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, var) in params.vars().iter().enumerate() {
            let Some(g) = grad(i, var) else {
                continue;
            };
            if var.device().is_cpu() && var.dtype() == DType::F32 {
                self.update_on_cpu(i, var, &g, bc1, bc2)?;
                continue;
            }
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let theta = var.as_tensor().detach();
            let next = ((theta * (1.0 - c.lr * c.weight_decay))? - (update * c.lr)?)?;
            var.set(&next)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The same update as the tensor path, in one pass over the values: on the CPU the
    /// eight tensor operations per parameter cost more than the arithmetic for small models.
    fn update_on_cpu(&mut self, i: usize, var: &Var, g: &Tensor, bc1: f64, bc2: f64) -> Result<()> {
        let c = self.config;
        let shape = var.shape().clone();
        let values = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let mut theta = values(var.as_tensor())?;
        let g = values(g)?;
        let mut m = values(&self.m[i])?;
        let mut v = values(&self.v[i])?;
        if g.len() != theta.len() {
            return Err(WorkerError::Corrupt(format!(
                "a gradient of {} values for a parameter of {}",
                g.len(),
                theta.len()
            )));
        }
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let (inv_bc1, inv_bc2) = ((1.0 / bc1) as f32, (1.0 / bc2) as f32);
        let (eps, lr) = (c.eps as f32, c.lr as f32);
        let decay = (1.0 - c.lr * c.weight_decay) as f32;
        for (((theta, g), m), v) in theta.iter_mut().zip(&g).zip(&mut m).zip(&mut v) {
            *m = *m * b1 + g * (1.0 - b1);
            *v = *v * b2 + g * g * (1.0 - b2);
            let update = (*m * inv_bc1) / ((*v * inv_bc2).sqrt() + eps);
            *theta = *theta * decay - update * lr;
        }
        let device = var.device().clone();
        var.set(&Tensor::from_vec(theta, shape.clone(), &device)?)?;
        self.m[i] = Tensor::from_vec(m, shape.clone(), &device)?;
        self.v[i] = Tensor::from_vec(v, shape, &device)?;
        Ok(())
    }

    /// Moments keyed `adam.m.<param>` and `adam.v.<param>`.
    pub fn tensors(&self, params: &Params) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, name) in params.names().iter().enumerate() {
            out.insert(format!("adam.m.{name}"), self.m[i].clone());
            out.insert(format!("adam.v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restore moments saved by [`AdamW::tensors`] and the step count.
    pub fn restore(
        &mut self,
        params: &Params,
        tensors: &HashMap<String, Tensor>,
        step: u64,
    ) -> Result<()> {
        for (i, name) in params.names().iter().enumerate() {
            for (slot, kind) in [(&mut self.m[i], "m"), (&mut self.v[i], "v")] {
                let key = format!("adam.{kind}.{name}");
                let t = tensors.get(&key).ok_or_else(|| {
                    WorkerError::Corrupt(format!("the checkpoint has no tensor {key:?}"))
                })?;
                if t.dims() != slot.dims() {
                    return Err(WorkerError::Corrupt(format!(
                        "checkpoint tensor {key:?} has the wrong shape"
                    )));
                }
                *slot = t.clone();
            }
        }
        self.step = step;
        Ok(())
    }
}
