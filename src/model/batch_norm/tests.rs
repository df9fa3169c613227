use burn::module::RunningState;
use burn::nn::BatchNormConfig;
use burn::tensor::{Device, Distribution, Tensor, TensorData};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Per channel of `x` [N, C, ...] (row-major), in f64: (mean, unbiased variance).
fn reference_statistics(x: &[f32], dims: &[usize]) -> Vec<(f64, f64)> {
    let (n, c) = (dims[0], dims[1]);
    let inner: usize = dims[2..].iter().product();
    (0..c)
        .map(|ch| {
            let vals: Vec<f64> = (0..n)
                .flat_map(|i| {
                    let start = (i * c + ch) * inner;
                    x[start..start + inner].iter().map(|&v| v as f64)
                })
                .collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let ss: f64 = vals.iter().map(|v| (v - mean).powi(2)).sum();
            (mean, ss / (vals.len() - 1) as f64)
        })
        .collect()
}

/// Output and gradients (x, γ, β) equal burn's `BatchNorm` in training; the running
/// statistics move as PyTorch's: (1 − m)·running + m·batch with the unbiased variance,
/// checked against statistics computed here in f64.
fn check<const D: usize>(dims: [usize; D]) {
    let device = Device::flex().autodiff();
    device.seed(7);
    let channels = dims[1];
    let x = Tensor::<D>::random(dims, Distribution::Normal(1.5, 2.0), &device);
    let upstream = Tensor::<D>::random(dims, Distribution::Uniform(-1.0, 1.0), &device);
    let gamma = Tensor::<1>::random([channels], Distribution::Uniform(0.5, 1.5), &device);
    let beta = Tensor::<1>::random([channels], Distribution::Uniform(-0.5, 0.5), &device);
    let start_mean: Vec<f32> = (0..channels).map(|c| 0.1 * c as f32 - 0.2).collect();
    let start_var: Vec<f32> = (0..channels).map(|c| 0.5 + 0.25 * c as f32).collect();
    let layer = || {
        let mut bn = BatchNormConfig::new(channels)
            .with_epsilon(2e-5)
            .with_momentum(0.1)
            .init(&device);
        bn.gamma = bn.gamma.map(|_| gamma.clone().require_grad());
        bn.beta = bn.beta.map(|_| beta.clone().require_grad());
        let stat =
            |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [channels]), &device);
        bn.running_mean = RunningState::new(stat(&start_mean));
        bn.running_var = RunningState::new(stat(&start_var));
        bn
    };
    let run = |ours: bool| {
        let bn = layer();
        let x = x.clone().require_grad();
        let y = if ours {
            super::forward(&bn, x.clone())
        } else {
            bn.forward(x.clone())
        };
        let mut grads = (y.clone() * upstream.clone()).sum().backward();
        let mut grad =
            |p: &burn::module::Param<Tensor<1>>| values(p.val().grad_remove(&mut grads).unwrap());
        let (gg, gb) = (grad(&bn.gamma), grad(&bn.beta));
        (
            values(y.inner()),
            values(x.grad(&grads).unwrap()),
            gg,
            gb,
            values(bn.running_mean.value_sync()),
            values(bn.running_var.value_sync()),
        )
    };
    let (y, gx, gg, gb, mean, var) = run(true);
    let (y0, gx0, gg0, gb0, mean0, _) = run(false);
    assert!(max_diff(&y, &y0) < 1e-5, "outputs");
    assert!(max_diff(&gx, &gx0) < 1e-5, "input gradients");
    assert!(max_diff(&gg, &gg0) < 1e-3, "γ gradients {gg:?} vs {gg0:?}");
    assert!(max_diff(&gb, &gb0) < 1e-3, "β gradients {gb:?} vs {gb0:?}");
    assert!(max_diff(&mean, &mean0) < 1e-6, "running means");
    let xs = values(x.inner());
    for (c, &(m, v)) in reference_statistics(&xs, &dims).iter().enumerate() {
        let want_mean = 0.9 * start_mean[c] as f64 + 0.1 * m;
        let want_var = 0.9 * start_var[c] as f64 + 0.1 * v;
        assert!(
            (mean[c] as f64 - want_mean).abs() < 1e-5,
            "mean {c}: {} vs {want_mean}",
            mean[c]
        );
        assert!(
            (var[c] as f64 - want_var).abs() < 1e-5 * want_var,
            "variance {c}: {} vs {want_var}",
            var[c]
        );
    }
    // The unbiased variance is what moved it, not burn's biased one: they differ here
    // by n/(n − 1) of the batch's share.
    let n = (xs.len() / channels) as f64;
    let (_, v0) = reference_statistics(&xs, &dims)[0];
    let biased = 0.9 * start_var[0] as f64 + 0.1 * v0 * (n - 1.0) / n;
    assert!((var[0] as f64 - biased).abs() > 1e-3 * 0.1 * v0 / n);
}

#[test]
fn feature_maps_equal_burns_batch_norm_and_move_the_running_statistics_as_pytorch() {
    check([4, 3, 5, 6]);
}

#[test]
fn embeddings_equal_burns_batch_norm_and_move_the_running_statistics_as_pytorch() {
    // The last BatchNorm of the backbone normalises [N, E]: few values per channel, where
    // the unbiased correction is largest.
    check([5, 8]);
}

/// Outside training (no autodiff device) it is burn's inference path: the running
/// statistics normalise and stay as they were.
#[test]
fn inference_uses_and_keeps_the_running_statistics() {
    let device = Device::flex();
    let mut bn = BatchNormConfig::new(2).init(&device);
    bn.running_mean =
        RunningState::new(Tensor::from_data(TensorData::from([1.0f32, -1.0]), &device));
    bn.running_var =
        RunningState::new(Tensor::from_data(TensorData::from([4.0f32, 0.25]), &device));
    let x = Tensor::<2>::from_data(TensorData::from([[3.0f32, 0.0], [1.0, -1.5]]), &device);
    let y = values(super::forward(&bn, x));
    let want = [1.0f32, 2.0, 0.0, -1.0];
    assert!(max_diff(&y, &want) < 1e-4, "{y:?}");
    assert_eq!(values(bn.running_var.value()), vec![4.0, 0.25]);
}
