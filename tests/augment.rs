//! The augmentations (src/data/augment/) against other libraries on real faces
//! (tests/reference/augment.py): AdaFace's against what its augmenter.py calls (cv2.resize,
//! Pillow's ImageEnhance), arcface_torch's DALI set against the same operations in Pillow,
//! OpenCV and scikit-image; and their draws against the distributions augmenter.py and
//! dataset.py draw from.

mod common;

use arcface::data::augment::dali;
use arcface::data::augment::photometric::{self, Adjust};
use arcface::data::augment::resize::{Interpolation, resize};
use arcface::data::augment::{Augmentations, Drawn};
use arcface::data::image::decode_rgb;
use serde_json::json;

const SIDE: usize = 112;

/// A photo of the packages' set (models/photos/, fetched by scripts/fetch-models.sh).
fn photo(name: &str) -> image::RgbImage {
    let path = common::root().join("models/photos").join(name);
    assert!(
        path.exists(),
        "{}: run scripts/fetch-models.sh (`bash .ci/run` does)",
        path.display()
    );
    decode_rgb(&std::fs::read(&path).unwrap()).unwrap()
}

fn face() -> Vec<u8> {
    let rgb = photo("Tom_Hanks_54745.png");
    assert_eq!(rgb.dimensions(), (112, 112), "an aligned crop");
    rgb.into_raw()
}

/// A 112×112 colour crop of scikit-image's astronaut.png (her face): the aligned face above is
/// greyscale, which saturation leaves alone.
fn colour_face() -> Vec<u8> {
    image::imageops::crop_imm(&photo("astronaut.png"), 180, 70, 112, 112)
        .to_image()
        .into_raw()
}

/// (largest difference in grey levels, share of values that differ at all).
fn differences(ours: &[u8], theirs: &[u8]) -> (u8, f64) {
    assert_eq!(ours.len(), theirs.len());
    let worst = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    let differing = ours.iter().zip(theirs).filter(|(a, b)| a != b).count();
    (worst, differing as f64 / ours.len() as f64)
}

/// Down and back up with every pair of cv2's interpolations, at sides AdaFace draws (22 to
/// 111: int(r·112), r in [0.2, 1)), equal cv2.resize within two grey levels, one resampling
/// within one, nearest exactly. OpenCV's 8-bit linear, cubic and Lanczos paths quantise each
/// weight to 11 bits and its linear one truncates between the passes, where ours sums in f32
/// and rounds once: up to a level on each resampling (measured: on up to 32 % of the values
/// after down-and-up with Lanczos-4, 12 % with linear, under 1 % with cubic).
#[test]
fn low_resolution_equals_cv2_resize() {
    let image = face();
    let mut cases = Vec::new();
    for &small in &[22, 37, 56, 89, 111] {
        for down in Interpolation::ALL {
            for up in Interpolation::ALL {
                cases.push((small, down, up));
            }
        }
    }
    let query: Vec<_> = cases
        .iter()
        .map(|(s, d, u)| json!([s, d.name(), u.name()]))
        .collect();
    let dir = reference(&image, json!({ "resize": query }));
    let mut worst_share = 0.0f64;
    for (k, &(small, down, up)) in cases.iter().enumerate() {
        let theirs = std::fs::read(dir.path().join(format!("resize_{k}.u8"))).unwrap();
        let ours = resize(&resize(&image, SIDE, small, down), small, SIDE, up);
        let (worst, share) = differences(&ours, &theirs);
        // One resampling of cv2's small image is within a level; down and up, the two levels'
        // differences can meet.
        let allowed = match (down, up) {
            (Interpolation::Nearest, Interpolation::Nearest) => 0,
            (_, Interpolation::Nearest) => 1,
            _ => 2,
        };
        assert!(
            worst <= allowed && share < 0.35,
            "{small}px {down:?}/{up:?}: {worst} levels apart ({:.1} % of values differ)",
            100.0 * share
        );
        worst_share = worst_share.max(share);
    }
    println!(
        "low resolution vs cv2: at most one level, on at most {:.1} % of values",
        100.0 * worst_share
    );
    // The down-and-up loses detail: the face is not what it was.
    let blurred = resize(
        &resize(&image, SIDE, 22, Interpolation::Area),
        22,
        SIDE,
        Interpolation::Linear,
    );
    assert!(differences(&blurred, &image).1 > 0.5);
}

/// Brightness, contrast and saturation at factors across ColorJitter's [0.5, 1.5], on a colour
/// face, equal Pillow's ImageEnhance (torchvision's adjust_* on a PIL image) within a grey level: Pillow
/// blends in single precision and truncates, as ours does; the level is where one float
/// product lands on either side of an integer.
#[test]
fn photometric_equals_pillow() {
    let image = colour_face();
    let mut cases = Vec::new();
    for factor in [0.5f32, 0.77, 1.0, 1.23, 1.5] {
        cases.push(Adjust::Brightness(factor));
        cases.push(Adjust::Contrast(factor));
        cases.push(Adjust::Saturation(factor));
    }
    let query: Vec<_> = cases
        .iter()
        .map(|a| match a {
            Adjust::Brightness(f) => json!(["brightness", f]),
            Adjust::Contrast(f) => json!(["contrast", f]),
            Adjust::Saturation(f) => json!(["saturation", f]),
        })
        .collect();
    let dir = reference(&image, json!({ "adjust": query }));
    for (k, &adjust) in cases.iter().enumerate() {
        let theirs = std::fs::read(dir.path().join(format!("adjust_{k}.u8"))).unwrap();
        let mut ours = image.clone();
        photometric::apply(&mut ours, adjust);
        let (worst, share) = differences(&ours, &theirs);
        assert!(
            worst <= 1 && share < 0.01,
            "{adjust:?}: {worst} levels, {share:.4} of values"
        );
        if !matches!(adjust, Adjust::Brightness(f) | Adjust::Contrast(f) | Adjust::Saturation(f) if f == 1.0)
        {
            assert!(
                differences(&ours, &image).1 > 0.1,
                "{adjust:?} changed the image"
            );
        }
    }
}

/// The crop keeps its box where it is and zeroes the rest (augmenter.py's crop_augment).
#[test]
fn crop_zeroes_outside_its_box() {
    let image = face();
    let mut ours = image.clone();
    let drawn = Drawn {
        crop: Some([10, 30, 50, 40]),
        ..Default::default()
    };
    drawn.apply(&mut ours, SIDE);
    for y in 0..SIDE {
        for x in 0..SIDE {
            let at = (y * SIDE + x) * 3;
            let inside = (10..60).contains(&y) && (30..70).contains(&x);
            let want: &[u8] = if inside {
                &image[at..at + 3]
            } else {
                &[0, 0, 0]
            };
            assert_eq!(&ours[at..at + 3], want, "({x}, {y})");
        }
    }
}

/// Over 20,000 draws with AdaFace's 0.2 each: each augmentation's frequency, the small side
/// uniform over int(r·112) for r in [0.2, 1), the five interpolations and six photometric
/// orders equally likely, the factors uniform in [0.5, 1.5], and the crop boxes within the
/// image with torchvision's area and aspect bounds (up to the rounding of their sides) — each
/// within 4.5 standard errors.
#[test]
fn draws_follow_augmenter_py() {
    let n = 20_000;
    let p = Augmentations {
        crop: 0.2,
        low_res: 0.2,
        photometric: 0.2,
        ..Augmentations::default()
    };
    let mut rng = arcface::seed::rng(7, &[]);
    let draws: Vec<Drawn> = (0..n).map(|_| p.draw(SIDE, &mut rng)).collect();
    let near = |what: &str, got: f64, mean: f64, sd: f64, count: usize| {
        let se = sd / (count as f64).sqrt();
        assert!(
            (got - mean).abs() < 4.5 * se,
            "{what}: {got} vs {mean} ± {se}"
        );
    };
    let share =
        |f: &dyn Fn(&Drawn) -> bool| draws.iter().filter(|d| f(d)).count() as f64 / n as f64;
    let bernoulli = (0.2f64 * 0.8).sqrt();
    near(
        "crop frequency",
        share(&|d| d.crop.is_some()),
        0.2,
        bernoulli,
        n,
    );
    near(
        "low-res frequency",
        share(&|d| d.low_res.is_some()),
        0.2,
        bernoulli,
        n,
    );
    near(
        "photometric frequency",
        share(&|d| d.photometric.is_some()),
        0.2,
        bernoulli,
        n,
    );

    let low: Vec<_> = draws.iter().filter_map(|d| d.low_res).collect();
    // int(r·112) for r uniform in [0.2, 1): 22..=111, each of the 90 sides 1/89.6 likely but
    // the first (r in [0.2, 23/112)) a little less: the mean of floor(U(22.4, 112)).
    let sides: Vec<f64> = low.iter().map(|l| l.0 as f64).collect();
    let mean = sides.iter().sum::<f64>() / sides.len() as f64;
    near(
        "small side",
        mean,
        (22.4 + 112.0) / 2.0 - 0.5,
        89.6 / 12f64.sqrt(),
        sides.len(),
    );
    assert!(low.iter().all(|l| (22..=111).contains(&l.0)));
    for mode in Interpolation::ALL {
        let downs = low.iter().filter(|l| l.1 == mode).count() as f64 / low.len() as f64;
        let ups = low.iter().filter(|l| l.2 == mode).count() as f64 / low.len() as f64;
        let sd = (0.2f64 * 0.8).sqrt();
        near(&format!("{mode:?} down"), downs, 0.2, sd, low.len());
        near(&format!("{mode:?} up"), ups, 0.2, sd, low.len());
    }

    let photometric: Vec<&Vec<Adjust>> = draws
        .iter()
        .filter_map(|d| d.photometric.as_ref())
        .collect();
    let firsts = photometric
        .iter()
        .filter(|a| matches!(a[0], Adjust::Brightness(_)))
        .count() as f64
        / photometric.len() as f64;
    near(
        "brightness first",
        firsts,
        1.0 / 3.0,
        (2.0f64 / 9.0).sqrt(),
        photometric.len(),
    );
    let factors: Vec<f64> = photometric
        .iter()
        .flat_map(|a| a.iter())
        .map(|a| match a {
            Adjust::Brightness(f) | Adjust::Contrast(f) | Adjust::Saturation(f) => *f as f64,
        })
        .collect();
    assert!(factors.iter().all(|f| (0.5..1.5).contains(f)));
    let mean = factors.iter().sum::<f64>() / factors.len() as f64;
    near("factor", mean, 1.0, 1.0 / 12f64.sqrt(), factors.len());

    for [top, left, h, w] in draws.iter().filter_map(|d| d.crop) {
        assert!(top + h <= SIDE && left + w <= SIDE && h > 0 && w > 0);
        let area = (h * w) as f64 / (SIDE * SIDE) as f64;
        assert!(area > 0.18 && area <= 1.0, "{h}x{w}");
        let aspect = w as f64 / h as f64;
        assert!(
            (0.72..=1.39).contains(&aspect) || (h, w) == (SIDE, SIDE),
            "{h}x{w}"
        );
    }
}

/// `inspect DATA --grid out.png`: a row per image (spread over the dataset), its original
/// first, as decoded, then the draws; AdaFace's preset changes some draws beyond a flip, and
/// with `--augment none` every draw is the original or its mirror image.
#[test]
fn inspect_draws_the_augmentation_grid() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::small_synthetic(&data);
    let dataset = arcface::data::dataset::RecDataset::open(&data).unwrap();
    let (rows, draws) = (3usize, 6usize);
    let (cell_w, cell_h) = (168u32, 170u32);
    let cell = |grid: &image::RgbImage, col: u32, row: u32| -> Vec<u8> {
        image::imageops::crop_imm(grid, col * cell_w, row * cell_h, 112, 112)
            .to_image()
            .into_raw()
    };
    let mut changed = [0, 0];
    for (k, augment) in ["adaface", "none"].iter().enumerate() {
        let png = dir.path().join(format!("{augment}.png"));
        let out = common::arcface()
            .arg("inspect")
            .arg(&data)
            .args([
                "--augment",
                augment,
                "--rows",
                "3",
                "--draws",
                "6",
                "--grid",
            ])
            .arg(&png)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let grid = image::open(&png).unwrap().into_rgb8();
        assert_eq!(
            grid.dimensions(),
            ((draws as u32 + 1) * cell_w, rows as u32 * cell_h)
        );
        for row in 0..rows {
            let sample = dataset.sample(row * dataset.len() / rows).unwrap();
            let original = arcface::data::image::decode_face(&sample.image).unwrap();
            assert_eq!(cell(&grid, 0, row as u32), original.as_raw().clone());
            let mut mirror = original.clone();
            image::imageops::flip_horizontal_in_place(&mut mirror);
            for d in 1..=draws as u32 {
                let seen = cell(&grid, d, row as u32);
                if seen != *original.as_raw() && seen != *mirror.as_raw() {
                    changed[k] += 1;
                }
            }
        }
    }
    // 18 draws at 0.2 each of three: none changed would happen with probability 0.512^18.
    assert!(changed[0] > 0, "the preset changed no draw");
    assert_eq!(changed[1], 0, "--augment none only flips");
}

/// Runs augment.py on `image` with `request` (its other keys), returning the output folder.
fn reference(image: &[u8], request: serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("face.u8"), image).unwrap();
    let mut query = json!({"image": dir.path().join("face.u8"), "resize": [], "adjust": [],
                           "out": dir.path()});
    query
        .as_object_mut()
        .unwrap()
        .extend(request.as_object().unwrap().clone());
    common::run_reference("augment.py", &query);
    dir
}

/// arcface_torch's random resize at sizes across [56, 89): DALI's antialiased linear shrink
/// with subpixel scale equals Pillow's BILINEAR over the same source window (the image padded
/// by its edge, as DALI clamps) within a grey level — Pillow rounds between its two passes and
/// uses fixed-point weights, ours rounds once — and down and back up (cv2's linear) within two.
#[test]
fn dali_resize_equals_pillow_then_cv2() {
    let image = colour_face();
    let sizes = [56.0f32, 61.37, 70.49, 70.51, 77.8, 88.9];
    let dir = reference(&image, json!({"dali_resize": sizes}));
    for (k, &size) in sizes.iter().enumerate() {
        let theirs = std::fs::read(dir.path().join(format!("shrink_{k}.u8"))).unwrap();
        let small = dali::shrink(&image, SIDE, size);
        assert_eq!(small.len(), dali::resized_side(size).pow(2) * 3, "{size}");
        let (worst, share) = differences(&small, &theirs);
        assert!(
            worst <= 1,
            "shrink to {size}: {worst} levels ({share:.3} differ)"
        );
        let theirs = std::fs::read(dir.path().join(format!("dali_resize_{k}.u8"))).unwrap();
        let mut ours = image.clone();
        dali::resize_down_and_up(&mut ours, SIDE, size);
        let (worst, share) = differences(&ours, &theirs);
        assert!(
            worst <= 2,
            "resize {size}: {worst} levels ({share:.3} differ)"
        );
        assert!(
            differences(&ours, &image).1 > 0.3,
            "{size} changed the face"
        );
    }
}

/// Both of arcface_torch's blur windows equal cv2.GaussianBlur with DALI's σ and border within
/// a grey level (OpenCV's 8-bit path uses fixed-point weights).
#[test]
fn dali_blur_equals_cv2() {
    let image = colour_face();
    let windows = [3usize, 5];
    let dir = reference(&image, json!({"blur": windows}));
    for (k, &window) in windows.iter().enumerate() {
        let theirs = std::fs::read(dir.path().join(format!("blur_{k}.u8"))).unwrap();
        let mut ours = image.clone();
        dali::blur(&mut ours, SIDE, window);
        let (worst, share) = differences(&ours, &theirs);
        assert!(
            worst <= 1,
            "{window}x{window}: {worst} levels ({share:.3} differ)"
        );
        assert!(differences(&ours, &image).1 > 0.3);
    }
}

/// fn.hsv's hue rotation and saturation, greyscale (saturation 0) and the gray op's pass at
/// saturation 1 equal the same rotation and scaling in scikit-image's YIQ within a grey level:
/// DALI's matrices are rounded to three decimals (their product is 1 ± 0.0014 off the
/// identity), scikit-image's inverse is exact.
#[test]
fn dali_hsv_equals_scikit_image_yiq() {
    let image = colour_face();
    let cases = [
        (0.0f32, 1.0f32),
        (0.0, 0.0),
        (7.3, 1.07),
        (12.0, 1.0),
        (19.9, 1.19),
    ];
    let dir = reference(&image, json!({"hsv": cases}));
    for (k, &(hue, saturation)) in cases.iter().enumerate() {
        let theirs = std::fs::read(dir.path().join(format!("hsv_{k}.u8"))).unwrap();
        let mut ours = image.clone();
        dali::hsv(&mut ours, hue, saturation);
        let (worst, share) = differences(&ours, &theirs);
        assert!(
            worst <= 1,
            "hue {hue} saturation {saturation}: {worst} levels ({share:.3} differ)"
        );
        if saturation == 0.0 {
            assert!(ours.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]), "grey");
        }
    }
}

/// Over 20,000 draws with arcface_torch's preset: each augmentation's frequency (resize 0.1,
/// blur 0.2, hsv 0.2, gray 0.1 and the gray op present on every draw), the size uniform in
/// [56, 89), the two blur windows equally likely, hue uniform in [0, 20) and saturation in
/// [1, 1.2) — each within 4.5 standard errors.
#[test]
fn draws_follow_dali_iter() {
    let n = 20_000;
    let p = arcface::config::AugmentPreset::ArcfaceTorch.augmentations();
    let mut rng = arcface::seed::rng(8, &[]);
    let draws: Vec<Drawn> = (0..n).map(|_| p.draw(SIDE, &mut rng)).collect();
    let near = |what: &str, got: f64, mean: f64, sd: f64, count: usize| {
        let se = sd / (count as f64).sqrt();
        assert!(
            (got - mean).abs() < 4.5 * se,
            "{what}: {got} vs {mean} ± {se}"
        );
    };
    let share =
        |f: &dyn Fn(&Drawn) -> bool| draws.iter().filter(|d| f(d)).count() as f64 / n as f64;
    for (what, got, p) in [
        ("resize", share(&|d| d.resize.is_some()), 0.1),
        ("blur", share(&|d| d.blur.is_some()), 0.2),
        ("hsv", share(&|d| d.hsv.is_some()), 0.2),
        ("gray", share(&|d| d.gray == Some(true)), 0.1),
    ] {
        near(what, got, p, (p * (1.0 - p)).sqrt(), n);
    }
    assert!(draws.iter().all(|d| d.gray.is_some() && d.crop.is_none()));
    let sizes: Vec<f64> = draws
        .iter()
        .filter_map(|d| d.resize)
        .map(f64::from)
        .collect();
    assert!(sizes.iter().all(|s| (56.0..89.0).contains(s)));
    let mean = sizes.iter().sum::<f64>() / sizes.len() as f64;
    near("size", mean, 72.5, 33.0 / 12f64.sqrt(), sizes.len());
    let windows: Vec<usize> = draws.iter().filter_map(|d| d.blur).collect();
    assert!(windows.iter().all(|w| *w == 3 || *w == 5));
    let threes = windows.iter().filter(|w| **w == 3).count() as f64 / windows.len() as f64;
    near("3x3 share", threes, 0.5, 0.5, windows.len());
    let hsv: Vec<(f32, f32)> = draws.iter().filter_map(|d| d.hsv).collect();
    assert!(
        hsv.iter()
            .all(|(h, s)| (0.0..20.0).contains(h) && (1.0..1.2).contains(s))
    );
    let hue = hsv.iter().map(|h| h.0 as f64).sum::<f64>() / hsv.len() as f64;
    near("hue", hue, 10.0, 20.0 / 12f64.sqrt(), hsv.len());
    let sat = hsv.iter().map(|h| h.1 as f64).sum::<f64>() / hsv.len() as f64;
    near("saturation", sat, 1.1, 0.2 / 12f64.sqrt(), hsv.len());
}

/// Ranges other than the recipes' bound what is drawn: each draw inside its range, and the
/// range's both halves reached.
#[test]
fn configured_ranges_bound_the_draws() {
    use arcface::data::augment::Ranges;
    let p = Augmentations {
        crop: 1.0,
        low_res: 1.0,
        photometric: 1.0,
        resize: 1.0,
        blur: 1.0,
        hsv: 1.0,
        ranges: Ranges {
            crop_scale: [0.9, 1.0],
            low_res: [0.5, 0.6],
            photometric: [0.9, 1.1],
            resize: [30.0, 40.0],
            blur: [2.5, 3.4],
            hue: [-10.0, -5.0],
            saturation: [0.0, 0.5],
        },
        ..Augmentations::default()
    };
    let mut rng = arcface::seed::rng(9, &[]);
    let draws: Vec<Drawn> = (0..2000).map(|_| p.draw(SIDE, &mut rng)).collect();
    for d in &draws {
        let [_, _, h, w] = d.crop.unwrap();
        assert!(h * w >= 10_000 || (h, w) == (SIDE, SIDE), "{h}x{w}");
        assert!((56..=67).contains(&d.low_res.unwrap().0));
        for a in d.photometric.as_ref().unwrap() {
            let (Adjust::Brightness(f) | Adjust::Contrast(f) | Adjust::Saturation(f)) = a;
            assert!((0.9..1.1).contains(f));
        }
        assert!((30.0..40.0).contains(&d.resize.unwrap()));
        assert!(d.blur == Some(7), "{:?}", d.blur);
        let (hue, saturation) = d.hsv.unwrap();
        assert!((-10.0..-5.0).contains(&hue) && (0.0..0.5).contains(&saturation));
    }
    let low = |f: &dyn Fn(&Drawn) -> bool| draws.iter().filter(|d| f(d)).count();
    assert!(low(&|d| d.resize.unwrap() < 35.0) > 800 && low(&|d| d.resize.unwrap() >= 35.0) > 800);
    assert!(low(&|d| d.hsv.unwrap().0 < -7.5) > 800 && low(&|d| d.hsv.unwrap().0 >= -7.5) > 800);
}
