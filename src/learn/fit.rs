//! What every training loop shares: seeded initialisation, a reproducible order over a
//! model's variables, and the binary cross-entropy that stays finite when a model is sure.

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Binary cross-entropy of each logit `x` against its target `t` in `[0, 1]`, in the form that
/// stays finite for any logit: `softplus(x) − t·x`, with `softplus(x) = max(x, 0) +
/// ln(1 + e^−|x|)`. (candle's `binary_cross_entropy_with_logit` takes the log of a sigmoid,
/// which underflows to `log 0` once the model is confident.)
pub fn binary_cross_entropy_each(x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
    let softplus = (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    softplus - (t * x)?
}

/// Replaces every variable with values drawn from `seed` (He-uniform weights, zero biases, and a
/// head bias of −3 so training starts from "almost nothing is a defect"), because candle's own
/// initialisers draw from an unseeded generator.
pub fn seeded_init(varmap: &VarMap, seed: u64) -> candle_core::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for_each_var_sorted(varmap, |name, var| {
        let shape = var.shape().clone();
        let values: Vec<f32> = if name.ends_with(".bias") {
            let fill = if name.starts_with("head") { -3.0 } else { 0.0 };
            vec![fill; shape.elem_count()]
        } else {
            let fan_in: usize = shape.dims()[1..].iter().product();
            let bound = (6.0 / fan_in as f32).sqrt();
            (0..shape.elem_count())
                .map(|_| rng.gen_range(-bound..bound))
                .collect()
        };
        var.set(&Tensor::from_vec(values, shape, var.device())?)
    })
}

/// Calls `f` on every variable of `varmap` in name order (a `VarMap` is a hash map; anything
/// that must be reproducible walks it in a fixed order).
pub fn for_each_var_sorted(
    varmap: &VarMap,
    mut f: impl FnMut(&str, &Var) -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("varmap lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        f(name, &data[name])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn cross_entropy_stays_finite_and_matches_the_formula() {
        let device = Device::Cpu;
        let x = Tensor::new(&[0.0f32, 200.0, -200.0], &device).expect("tensor");
        let t = Tensor::new(&[1.0f32, 0.0, 0.0], &device).expect("tensor");
        let loss: Vec<f32> = binary_cross_entropy_each(&x, &t)
            .expect("loss")
            .to_vec1()
            .expect("values");
        assert!((loss[0] - std::f32::consts::LN_2).abs() < 1e-6, "{loss:?}");
        assert!((loss[1] - 200.0).abs() < 1e-3, "{loss:?}");
        assert!(loss[2].abs() < 1e-6, "{loss:?}");
    }

    #[test]
    fn seeded_init_is_reproducible_and_starts_heads_pessimistic() {
        let init = |seed| {
            let varmap = VarMap::new();
            let vb =
                candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu);
            candle_nn::linear(4, 2, vb.pp("conv0")).expect("layer");
            candle_nn::linear(2, 1, vb.pp("head")).expect("head");
            seeded_init(&varmap, seed).expect("init");
            let mut values = Vec::new();
            for_each_var_sorted(&varmap, |name, var| {
                values.push((
                    name.to_owned(),
                    var.as_tensor().flatten_all()?.to_vec1::<f32>()?,
                ));
                Ok(())
            })
            .expect("walk");
            values
        };
        let a = init(1);
        assert_eq!(a, init(1));
        assert_ne!(a, init(2));
        let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["conv0.bias", "conv0.weight", "head.bias", "head.weight"]
        );
        assert_eq!(a[0].1, [0.0, 0.0]);
        assert_eq!(a[2].1, [-3.0]);
    }
}
