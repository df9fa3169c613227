//! The LibTorch backend (`--features tch`, run with the environment of
//! scripts/setup-libtorch.sh): its convolution and BatchNorm gradients, computed by libtorch's
//! own kernels (vendor/burn-tch/src/fused/), equal those of burn's pure-Rust CPU backend.
#![cfg(feature = "tch")]

use arcface::model::{IResNetConfig, MarginSoftmaxConfig, Precision, Trainee};
use arcface::train::checkpoint::named_tensors;
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// A tiny LResNet-E-IR (one unit per stage) with an ArcFace head of 10 classes.
fn small_model(device: &Device) -> Trainee {
    Trainee {
        backbone: IResNetConfig::new([1, 1, 1, 1], [8, 16, 32, 64])
            .with_embedding_size(32)
            .with_dropout(0.0)
            .init(device),
        head: MarginSoftmaxConfig::new(10, 32)
            .with_scale(16.0)
            .init(device),
    }
}

/// Gradients of one training loss, by parameter path, computed on `device` from the weights
/// and inputs given as host data.
fn gradients(
    device: &Device,
    weights: &std::collections::BTreeMap<String, TensorData>,
    images: &TensorData,
    labels: &TensorData,
) -> std::collections::BTreeMap<String, Vec<f32>> {
    let device = device.clone().autodiff();
    let model = small_model(&device);
    let model = arcface::train::checkpoint::load_named(model, "", weights).unwrap();
    let loss = model.loss(
        Tensor::from_data(images.clone(), &device),
        Tensor::<1, Int>::from_data(labels.clone(), &device),
        Precision::Fp32,
    );
    let mut grads = loss.backward();
    let grads = GradientsParams::from_module(&mut grads, &model);
    let mut out = std::collections::BTreeMap::new();
    struct Collect<'a>(
        &'a GradientsParams,
        Vec<String>,
        &'a mut std::collections::BTreeMap<String, Vec<f32>>,
    );
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.1.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.1.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(p.id) {
                self.2.insert(
                    self.1.join("."),
                    g.into_data().convert::<f32>().try_to_vec().unwrap(),
                );
            }
        }
    }
    model.visit(&mut Collect(&grads, Vec::new(), &mut out));
    out
}

#[test]
#[allow(deprecated)]
fn libtorch_gradients_equal_the_cpu_backends() {
    assert!(
        arcface::device::libtorch_fused_kernels(),
        "libtorch's kernels are compiled in and on (unset ARCFACE_TCH_GENERIC)"
    );
    let flex = Device::flex();
    flex.seed(3);
    let start = small_model(&flex);
    let weights = named_tensors(&start, "");
    let images = Tensor::<4>::random(
        [6, 3, 112, 112],
        burn::tensor::Distribution::Uniform(0.0, 255.0),
        &flex,
    )
    .into_data();
    let labels = TensorData::new(vec![0i64, 3, 5, 7, 9, 3], [6]);
    let ours = gradients(&flex, &weights, &images, &labels);
    let torch = gradients(&Device::libtorch(), &weights, &images, &labels);
    assert_eq!(ours.len(), torch.len());
    let largest = |v: &[f32]| v.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
    // Some gradients are rounding noise (a BatchNorm β right before another BatchNorm, which
    // cancels shifts): they are held to a floor of 1e-4 of the largest gradient anywhere.
    let floor = 1e-4 * ours.values().map(|v| largest(v)).fold(0.0f32, f32::max);
    let mut checked = 0;
    for (name, a) in &ours {
        let b = &torch[name];
        let scale = largest(a);
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 1e-3 * scale + floor,
            "{name}: gradients differ by {worst} (largest {scale}, floor {floor})"
        );
        checked += 1;
    }
    // Every convolution weight and every BatchNorm γ/β (but the fixed last γ) has one.
    assert!(ours.keys().any(|k| k.ends_with("conv1.weight")));
    assert!(ours.keys().any(|k| k.ends_with("bn2.beta")));
    assert!(checked > 30, "{checked}");
}
