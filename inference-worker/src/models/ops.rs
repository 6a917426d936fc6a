//! Differentiable tensor operations that candle provides only in slower or forward-only form.

use candle_core::{CpuStorage, CustomOp1, D, Device, Layout, Shape, Tensor};

/// Softmax over the last dimension with a gradient. On the CPU the forward pass uses candle's
/// fused kernel (one pass per row instead of five tensor operations) and the backward pass the
/// closed form `y * (g - sum(g * y))`; elsewhere it is candle's composed softmax.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(SoftmaxLastDim)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "aigc-softmax-last-dim"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("softmax_last_dim takes f32 tensors");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("softmax_last_dim takes contiguous tensors");
        };
        // Run candle's fused (optimised) kernel on the same values.
        let input = Tensor::from_slice(&data[start..end], layout.shape(), &Device::Cpu)?;
        let output = candle_nn::ops::softmax_last_dim(&input)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok((CpuStorage::F32(output), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some(res.mul(&grad_res.broadcast_sub(&dot)?)?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

    #[test]
    fn matches_candles_softmax_in_value_and_gradient() {
        let values: Vec<f32> = (0..2 * 3 * 5)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let x =
            Var::from_tensor(&Tensor::from_vec(values, (2, 3, 5), &Device::Cpu).unwrap()).unwrap();
        let weights = Tensor::arange(0f32, 5.0, &Device::Cpu).unwrap();
        let run = |f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>| {
            let y = f(x.as_tensor()).unwrap();
            let loss = y
                .broadcast_mul(&weights)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            let g = grads
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), g)
        };
        let (fast_y, fast_g) = run(&softmax_last_dim);
        let (ref_y, ref_g) = run(&|t| candle_nn::ops::softmax(t, D::Minus1));
        for (a, b) in fast_y.iter().zip(&ref_y).chain(fast_g.iter().zip(&ref_g)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
