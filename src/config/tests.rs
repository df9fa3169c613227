//! The config's parsing and checks: errors that name the file and the key.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("x.toml"))
}

#[test]
fn a_mobilefacenet_refuses_the_iresnets_keys_it_cannot_honour() {
    for (text, key) in [
        ("network = \"mbf\"\ndropout = 0.4\n", "dropout"),
        ("network = \"mbf_large\"\ndropout = 0.1\n", "dropout"),
        (
            "network = \"mbf\"\nembedding_gamma_trainable = false\n",
            "embedding_gamma_trainable",
        ),
    ] {
        let err = parse(text).unwrap_err();
        assert_eq!(err.key, key, "{text}");
        assert!(err.to_string().contains("x.toml"), "{err}");
    }
    // What a MobileFaceNet does anyway, and the defaults, are accepted.
    for text in [
        "network = \"mbf\"\n",
        "network = \"mbf\"\ndropout = 0.0\nembedding_gamma_trainable = true\n",
        "network = \"r50\"\ndropout = 0.2\nembedding_gamma_trainable = false\n",
    ] {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
}

#[test]
fn vit_keys_are_checked_and_kept_to_vits() {
    for (text, key, says) in [
        (
            "network = \"vit_t\"\nmask_ratio = 1.0\n",
            "mask_ratio",
            "[0, 1)",
        ),
        (
            "network = \"vit_t\"\nmask_ratio = -0.1\n",
            "mask_ratio",
            "[0, 1)",
        ),
        (
            "network = \"vit_s\"\ndrop_path_rate = -0.1\n",
            "drop_path_rate",
            "[0, 1)",
        ),
        (
            "network = \"r50\"\ndrop_path_rate = 0.1\n",
            "drop_path_rate",
            "not a Vision",
        ),
        (
            "network = \"mbf\"\nmask_ratio = 0.0\n",
            "mask_ratio",
            "not a Vision",
        ),
        (
            "network = \"vit_b\"\ndropout = 0.2\n",
            "dropout",
            "ViT has none",
        ),
        (
            "network = \"vit_tiny\"\nembedding_size = 0\n",
            "embedding_size",
            "> 0",
        ),
        (
            "network = \"r100\"\nusing_checkpoint = true\n",
            "using_checkpoint",
            "not a Vision",
        ),
    ] {
        let err = parse(text).unwrap_err();
        assert_eq!(err.key, key, "{text}");
        assert!(err.to_string().contains(says), "{text}: {err}");
    }
    let config = parse("network = \"vit_b_dp005_mask_005\"\n").unwrap();
    assert_eq!(config.vit_regularisation(), (0.05, 0.05));
    let config = parse("network = \"vit_t\"\nmask_ratio = 0.0\n").unwrap();
    assert_eq!(config.vit_regularisation(), (0.1, 0.0));
    // get_model's using_checkpoint: vit_b and vit_l recompute their blocks, vit_t and vit_s
    // not; the key overrides it.
    let checkpoints = |text: &str| match parse(text).unwrap().backbone() {
        crate::model::BackboneConfig::Vit(vit) => vit.using_checkpoint,
        _ => unreachable!("a ViT"),
    };
    assert!(checkpoints("network = \"vit_b_dp005_mask_005\"\n"));
    assert!(checkpoints("network = \"vit_l_dp005_mask_005\"\n"));
    assert!(!checkpoints("network = \"vit_t_dp005_mask0\"\n"));
    assert!(!checkpoints("network = \"vit_s\"\n"));
    assert!(!checkpoints(
        "network = \"vit_l\"\nusing_checkpoint = false\n"
    ));
    assert!(checkpoints(
        "network = \"vit_tiny\"\nusing_checkpoint = true\n"
    ));
}

#[test]
fn augmentation_presets_and_keys() {
    let off = parse("").unwrap().augmentations();
    assert!(off.is_off());
    let adaface = parse("augment = \"adaface\"\n").unwrap().augmentations();
    assert_eq!(
        (adaface.crop, adaface.low_res, adaface.photometric),
        (0.2, 0.2, 0.2)
    );
    let mixed = parse("augment = \"adaface\"\nlow_res_augmentation_prob = 0.5\n")
        .unwrap()
        .augmentations();
    assert_eq!((mixed.crop, mixed.low_res), (0.2, 0.5));
    let dali = parse("augment = \"arcface_torch\"\n")
        .unwrap()
        .augmentations();
    assert_eq!(
        (dali.resize, dali.blur, dali.hsv, dali.gray, dali.crop),
        (0.1, 0.2, 0.2, 0.1, 0.0)
    );
    let both = parse(
        "augment = \"arcface_torch\"\ncrop_augmentation_prob = 0.3\ngray_augmentation_prob = 0\n",
    )
    .unwrap()
    .augmentations();
    assert_eq!((both.crop, both.gray, both.blur), (0.3, 0.0, 0.2));
    let ranged = parse(
        "low_res_augmentation_range = [0.5, 0.6]\nhsv_augmentation_saturation = [0.0, 0.5]\n",
    )
    .unwrap()
    .augmentations();
    assert_eq!(ranged.ranges.low_res, [0.5, 0.6]);
    assert_eq!(ranged.ranges.saturation, [0.0, 0.5]);
    assert_eq!(
        ranged.ranges.resize,
        [56.0, 89.0],
        "the recipe's where not written"
    );
    assert!(ranged.is_off(), "a range alone turns nothing on");
    assert_eq!(ranged.describe(), "none");
    let both = parse("augment = \"adaface\"\nlow_res_augmentation_range = [0.5, 0.6]\nhsv_augmentation_prob = 0.3\n")
        .unwrap()
        .augmentations();
    assert_eq!(
        both.describe(),
        "AdaFace's crop 0.2, low resolution 0.2 in [0.5, 0.6), photometric 0.2; \
         arcface_torch's hsv 0.3"
    );
    let alone = parse("photometric_augmentation_prob = 1.0\n")
        .unwrap()
        .augmentations();
    assert_eq!((alone.crop, alone.photometric), (0.0, 1.0));
    for (text, key) in [
        ("crop_augmentation_prob = 1.5\n", "crop_augmentation_prob"),
        (
            "low_res_augmentation_prob = -0.1\n",
            "low_res_augmentation_prob",
        ),
        ("blur_augmentation_prob = 2\n", "blur_augmentation_prob"),
        (
            "resize_augmentation_range = [89, 56]\n",
            "resize_augmentation_range",
        ),
        ("hsv_augmentation_hue = [5, 5]\n", "hsv_augmentation_hue"),
        (
            "crop_augmentation_scale = [0.5, 1.5]\n",
            "crop_augmentation_scale",
        ),
        (
            "blur_augmentation_range = [0, 2]\n",
            "blur_augmentation_range",
        ),
        ("hsv_augmentation_prob = -1\n", "hsv_augmentation_prob"),
        ("augment = \"dali\"\n", "augment"),
    ] {
        let err = parse(text).unwrap_err();
        assert_eq!(err.key, key, "{text}");
    }
}

#[test]
fn adaface_keys_are_checked_and_kept_to_its_head() {
    let adaface = "head = \"adaface\"\n";
    for (text, key, says) in [
        (format!("{adaface}adaface_h = 0.0\n"), "adaface_h", "> 0"),
        (
            format!("{adaface}adaface_m = -0.1\n"),
            "adaface_m",
            "[0, pi/2)",
        ),
        (
            format!("{adaface}adaface_t_alpha = 0\n"),
            "adaface_t_alpha",
            "(0, 1]",
        ),
        (
            format!("{adaface}margin_list = [1.0, 0.5, 0.0]\n"),
            "margin_list",
            "\"adaface\"",
        ),
        (
            format!("{adaface}easy_margin = true\n"),
            "easy_margin",
            "\"adaface\"",
        ),
        ("adaface_m = 0.4\n".into(), "adaface_m", "head = \"margin\""),
        (
            "head = \"margin\"\nadaface_h = 0.3\n".into(),
            "adaface_h",
            "remove it",
        ),
        ("head = \"adaface2\"\n".into(), "head", "adaface"),
    ] {
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key, key, "{text}");
        assert!(err.to_string().contains(says), "{text}: {err}");
    }
    let config = parse(&format!("{adaface}adaface_m = 0.5\nscale = 32.0\n")).unwrap();
    let head = config.head(10).init(&burn::tensor::Device::flex());
    let margin = head.adaface.unwrap();
    assert_eq!((margin.m, margin.h, margin.t_alpha), (0.5, 0.333, 0.01));
    assert_eq!(head.scale, 32.0);
}
