//! Per-channel standardisation of the backbone's patch features.
//!
//! Both trained heads beside the frozen backbone (the supervised segmentation head and the
//! anomaly model's [`crate::models::anomaly::PatchHead`]) learn on standardised features, and
//! at inference read the raw ones with the standardisation folded into their first layer.

use candle_core::{DType, Device, Tensor};

use crate::models::backbone::FEATURE_DIM;

/// Per-channel standardisation of backbone feature maps (they run to ±30; the head learns
/// only on standardised inputs).
#[derive(Debug, Clone)]
pub struct Normaliser {
    /// `[FEATURE_DIM, 1, 1]`
    pub(crate) mean: Tensor,
    /// `[FEATURE_DIM, 1, 1]`
    pub(crate) std: Tensor,
}

impl Normaliser {
    /// Fits mean and standard deviation per channel over all patches of patch-major `maps`
    /// (`[h, w, FEATURE_DIM]` each).
    pub fn fit<'a>(maps: impl Iterator<Item = &'a Tensor>) -> candle_core::Result<Normaliser> {
        let (mut sum, mut sum_sq, mut n) = (vec![0f64; FEATURE_DIM], vec![0f64; FEATURE_DIM], 0);
        for map in maps {
            let flat = map.to_dtype(DType::F32)?.reshape(((), FEATURE_DIM))?;
            let s: Vec<f32> = flat.sum(0)?.to_vec1()?;
            let s2: Vec<f32> = flat.sqr()?.sum(0)?.to_vec1()?;
            for c in 0..FEATURE_DIM {
                sum[c] += f64::from(s[c]);
                sum_sq[c] += f64::from(s2[c]);
            }
            n += flat.dim(0)?;
        }
        let n = n.max(1) as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
        let std: Vec<f32> = sum_sq
            .iter()
            .zip(&sum)
            .map(|(s2, s)| ((s2 / n - (s / n).powi(2)).max(0.0).sqrt() as f32).max(1e-3))
            .collect();
        Normaliser::new(mean, std, &Device::Cpu)
    }

    /// From stored means and standard deviations (`FEATURE_DIM` each).
    pub fn new(mean: Vec<f32>, std: Vec<f32>, device: &Device) -> candle_core::Result<Normaliser> {
        Ok(Normaliser {
            mean: Tensor::from_vec(mean, (FEATURE_DIM, 1, 1), device)?,
            std: Tensor::from_vec(std, (FEATURE_DIM, 1, 1), device)?,
        })
    }

    /// Standardises `[FEATURE_DIM, h, w]` or `[b, FEATURE_DIM, h, w]` maps.
    pub fn apply(&self, maps: &Tensor) -> candle_core::Result<Tensor> {
        maps.to_dtype(DType::F32)?
            .broadcast_sub(&self.mean)?
            .broadcast_div(&self.std)
    }

    /// Standardises patch-major features (channels last), as f32.
    pub fn apply_patch_major(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.to_dtype(DType::F32)?
            .broadcast_sub(&self.mean.flatten_all()?)?
            .broadcast_div(&self.std.flatten_all()?)
    }

    /// Folds the standardisation into a linear layer that reads standardised features:
    /// `W·(x − m)/s + b = (W/s)·x + (b − (W/s)·m)`. `weight` is `[out, FEATURE_DIM]`, `bias`
    /// `[out, 1]`; the result reads raw features.
    pub fn fold_into(
        &self,
        weight: &Tensor,
        bias: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let weight = weight.broadcast_div(&self.std.reshape((1, FEATURE_DIM))?)?;
        let bias = (bias - weight.matmul(&self.mean.reshape((FEATURE_DIM, 1))?)?)?;
        Ok((weight, bias))
    }
}
