//! Data sets and loaders: every format on tiny files written here (or committed fixtures under
//! tests/fixtures/), the real data of `../shared/data` (override with `LIT_SHARED_DATA`; a printed
//! SKIP without it, a failure under `LIT_REQUIRE_SHARED_DATA=1`), the
//! augmentation's properties, prefetching, and errors that name the path.

use lit_engine::data::augment::{CropFlip, CROP_PADDING};
use lit_engine::data::cifar::{self, IMAGE_BYTES};
use lit_engine::data::images::{self, ImportFormat};
use lit_engine::data::text::{self, SEQUENCE_LENGTH, VOCAB_SIZE};
use lit_engine::data::{self, Batch, Dataset, DatasetKind, Loader, Split};
use lit_engine::rng::Rng;
use lit_engine::Device;
use std::path::{Path, PathBuf};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lit-data-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The real data sets, or `None` after a printed SKIP when they are not beside the repository (a
/// fresh clone); a failure under `LIT_REQUIRE_SHARED_DATA=1` (CI sets it when they are there).
fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var("LIT_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if dir.join("README.md").is_file() {
        return Some(dir);
    }
    lit_engine::testing::skip_unless_required(
        "LIT_REQUIRE_SHARED_DATA",
        &format!(
            "the real data sets are not in {} (set LIT_SHARED_DATA)",
            dir.display()
        ),
    );
    None
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn kind(name: &str) -> DatasetKind {
    DatasetKind::from_name(name).unwrap()
}

/// Image i of a synthetic CIFAR set: every byte of channel c is (i * 3 + c) % 256; label i % 10.
fn cifar_image(i: usize) -> Vec<u8> {
    (0..3)
        .flat_map(|c| std::iter::repeat_n(((i * 3 + c) % 256) as u8, 1024))
        .collect()
}

fn write_cifar10_files(dir: &Path, per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let files: Vec<&str> = cifar::cifar10_files(Split::Train)
        .into_iter()
        .chain(cifar::cifar10_files(Split::Test))
        .collect();
    for (k, file) in files.iter().enumerate() {
        let ids: Vec<usize> = (k * per_file..(k + 1) * per_file).collect();
        let pixels: Vec<u8> = ids.iter().flat_map(|&i| cifar_image(i)).collect();
        let labels: Vec<i32> = ids.iter().map(|&i| (i % 10) as i32).collect();
        std::fs::write(dir.join(file), cifar::encode_cifar10(&pixels, &labels)).unwrap();
    }
}

#[test]
fn cifar10_binary_reads_all_batches_in_order_with_labels_and_normalisation() {
    let root = temp_dir("cifar10");
    write_cifar10_files(&root.join("cifar-10-batches-bin"), 3);
    let train = data::load(&root, kind("cifar10"), Split::Train).unwrap();
    let test = data::load(&root, kind("cifar10"), Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (15, 3));
    assert_eq!(train.shape, vec![3, 32, 32]);
    for i in 0..15 {
        assert_eq!(train.example(i), &cifar_image(i)[..], "train image {i}");
        assert_eq!(train.labels[i], (i % 10) as i32);
    }
    assert_eq!(test.example(2), &cifar_image(17)[..]);
    assert_eq!(train.mean, vec![0.4914, 0.4822, 0.4465]);
    assert_eq!(train.std, vec![0.2470, 0.2435, 0.2616]);

    // Channel 1 of image 0 is byte 1 everywhere: normalised with channel 1's statistics.
    let (x, y) = Loader::sequential(&train, 4, &Device::Cpu)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(x.shape(), &[4, 3, 32, 32]);
    assert_eq!(y.to_vec().unwrap(), vec![0, 1, 2, 3]);
    let v = x.float().unwrap().to_vec().unwrap()[1024];
    assert!((v - (1.0 / 255.0 - 0.4822) / 0.2435).abs() < 1e-6, "{v}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn cifar_errors_name_the_file_and_what_was_expected() {
    let root = temp_dir("cifar-errors");
    let dir = root.join("cifar-10-batches-bin");
    write_cifar10_files(&dir, 2);
    // A truncated batch: not a multiple of the 3073-byte record.
    let path = dir.join("data_batch_3.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&path, &bytes).unwrap();
    let msg = data::load(&root, kind("cifar10"), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("3073-byte records"),
        "{msg}"
    );
    // A missing batch.
    std::fs::remove_file(&path).unwrap();
    let msg = data::load(&root, kind("cifar10"), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("not found"),
        "{msg}"
    );
    // A label byte outside 0..9.
    let test_path = dir.join("test_batch.bin");
    let mut bytes = std::fs::read(&test_path).unwrap();
    bytes[1 + IMAGE_BYTES] = 10;
    std::fs::write(&test_path, &bytes).unwrap();
    let msg = data::load(&root, kind("cifar10"), Split::Test)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("record 1 has label 10"), "{msg}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A 32×32 RGB PNG whose left half is `a` and right half `b`.
fn write_png(path: &Path, size: (u32, u32), a: [u8; 3], b: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let (w, h) = size;
    let mut rgb = Vec::new();
    for _ in 0..h {
        for x in 0..w {
            rgb.extend_from_slice(if x < w / 2 { &a } else { &b });
        }
    }
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(file, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(&rgb).unwrap();
}

const RED: [u8; 3] = [200, 30, 30];
const GREEN: [u8; 3] = [30, 200, 30];

/// A 2-class PNG tree: bird (red|green) × 3 train / 1 test, ant (green|red) × 2 train / 2 test.
fn write_png_tree(root: &Path) {
    for (split, class, n, a, b) in [
        ("train", "bird", 3, RED, GREEN),
        ("test", "bird", 1, RED, GREEN),
        ("train", "ant", 2, GREEN, RED),
        ("test", "ant", 2, GREEN, RED),
    ] {
        for i in 0..n {
            write_png(
                &root.join(split).join(class).join(format!("{i:02}.png")),
                (32, 32),
                a,
                b,
            );
        }
    }
}

/// Pixel (y, x) of channel c of example i.
fn px(d: &Dataset, i: usize, c: usize, y: usize, x: usize) -> u8 {
    let [_, h, w] = [d.shape[0], d.shape[1], d.shape[2]];
    d.example(i)[(c * h + y) * w + x]
}

#[test]
fn png_tree_imports_to_cifar10_with_alphabetical_labels() {
    let dir = temp_dir("png-tree");
    let tree = dir.join("tree");
    write_png_tree(&tree);
    let out = dir.join("root");
    let report = images::import(&tree, &out, ImportFormat::Cifar10, false).unwrap();
    assert_eq!(report.classes, vec!["ant", "bird"]);
    assert_eq!((report.train, report.test), (5, 3));
    assert_eq!(report.train_per_class, vec![2, 3]);

    let train = data::load(&out, kind("cifar10"), Split::Train).unwrap();
    let test = data::load(&out, kind("cifar10"), Split::Test).unwrap();
    // Classes interleaved round-robin, files in name order within a class.
    assert_eq!(train.labels.to_vec(), vec![0, 1, 0, 1, 1]);
    assert_eq!(test.labels.to_vec(), vec![0, 1, 0]);
    // Planar RGB: an ant is green on the left, red on the right (PNG is lossless).
    assert_eq!((px(&train, 0, 0, 5, 3), px(&train, 0, 1, 5, 3)), (30, 200));
    assert_eq!(
        (px(&train, 0, 0, 5, 30), px(&train, 0, 1, 5, 30)),
        (200, 30)
    );
    assert_eq!(px(&train, 4, 0, 31, 0), 200);
    let meta = std::fs::read_to_string(out.join("cifar-10-batches-bin/batches.meta.txt")).unwrap();
    assert_eq!(meta, "ant\nbird\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tar_xz_of(tree: &Path, prefix: &str, out: &Path) {
    let mut tar_bytes = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut tar_bytes);
        // Test before train and classes reversed: the import must not depend on archive order.
        for split in ["test", "train"] {
            let mut classes: Vec<_> = std::fs::read_dir(tree.join(split))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            classes.sort();
            classes.reverse();
            for class in classes {
                let class_dir = tree.join(split).join(&class);
                builder
                    .append_dir_all(
                        format!("{prefix}{split}/{}", class.to_string_lossy()),
                        &class_dir,
                    )
                    .unwrap();
            }
        }
        builder.finish().unwrap();
    }
    let mut xz = Vec::new();
    lzma_rs::xz_compress(&mut &tar_bytes[..], &mut xz).unwrap();
    std::fs::write(out, xz).unwrap();
}

#[test]
fn tar_xz_import_equals_folder_import_whatever_the_entry_order() {
    let dir = temp_dir("tar-xz");
    let tree = dir.join("tree");
    write_png_tree(&tree);
    let archive = dir.join("tree.tar.xz");
    tar_xz_of(&tree, "./pngs/", &archive);
    images::import(&tree, &dir.join("a"), ImportFormat::Cifar10, false).unwrap();
    let report = images::import(&archive, &dir.join("b"), ImportFormat::Cifar10, false).unwrap();
    assert_eq!((report.train, report.test), (5, 3));
    for file in ["data_batch_1.bin", "data_batch_5.bin", "test_batch.bin"] {
        let a = std::fs::read(dir.join("a/cifar-10-batches-bin").join(file)).unwrap();
        let b = std::fs::read(dir.join("b/cifar-10-batches-bin").join(file)).unwrap();
        assert_eq!(a, b, "{file}");
    }
    // A corrupt archive is an error naming it.
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes.truncate(mid);
    std::fs::write(&archive, &bytes).unwrap();
    let msg = images::import(&archive, &dir.join("c"), ImportFormat::Cifar10, false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("tree.tar.xz"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn jpeg_fixture_tree_decodes_with_colours_labels_and_grayscale() {
    let loaded = images::load_tree(&fixtures().join("jpeg-tree"), "pets", false).unwrap();
    assert_eq!(loaded.classes, vec!["cat", "dog"]);
    let (train, test) = (&loaded.train, &loaded.test);
    assert_eq!((train.len(), test.len(), train.num_classes), (4, 2, 2));
    assert_eq!(train.shape, vec![3, 32, 32]);
    assert_eq!(train.labels.to_vec(), vec![0, 1, 0, 1]);
    let near = |got: u8, want: u8| (got as i32 - want as i32).abs() <= 6;
    // cat: red left (200,30,30), green right; dog: blue left (30,30,200), white right.
    for (i, left, right) in [
        (0, [200, 30, 30], [30, 200, 30]),
        (3, [30, 30, 200], [240, 240, 240]),
    ] {
        for c in 0..3 {
            assert!(
                near(px(train, i, c, 10, 4), left[c]),
                "image {i} channel {c} left"
            );
            assert!(
                near(px(train, i, c, 10, 27), right[c]),
                "image {i} channel {c} right"
            );
        }
    }
    let gray_path = fixtures().join("gray-8x8.jpg");
    let gray = images::decode(&gray_path, &std::fs::read(&gray_path).unwrap()).unwrap();
    assert_eq!((gray.channels, gray.height, gray.width), (1, 8, 8));
    assert!(near(gray.pixels[8 + 1], 100) && near(gray.pixels[8 + 6], 220));
    // JPEGs are not 32×32 CIFAR images only by accident: the tree converts, but its 4 train
    // images cannot fill the five data_batch files (an empty one is refused by `train`), so the
    // import says so and writes nothing; tests/bounds.rs imports 5 and more.
    let dir = temp_dir("jpeg-import");
    let msg = images::import(
        &fixtures().join("jpeg-tree"),
        &dir,
        ImportFormat::Cifar10,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("at least 5 train images") && msg.contains("got 4 train and 2 test"),
        "{msg}"
    );
    assert!(!dir.join("cifar-10-batches-bin").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn image_tree_errors_name_the_odd_file() {
    let dir = temp_dir("odd-image");
    let tree = dir.join("tree");
    write_png_tree(&tree);
    let odd = tree.join("train/bird/01.png");
    write_png(&odd, (16, 32), RED, GREEN);
    let msg = images::load_tree(&tree, "t", false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(&odd.display().to_string()) && msg.contains("32×16"),
        "{msg}"
    );

    std::fs::write(&odd, b"not an image").unwrap();
    let msg = images::load_tree(&tree, "t", false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(&odd.display().to_string()) && msg.contains("neither a JPEG nor a PNG"),
        "{msg}"
    );

    write_png(&odd, (32, 32), RED, GREEN);
    write_png(&tree.join("test/cow/00.png"), (32, 32), RED, GREEN);
    let msg = images::load_tree(&tree, "t", false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("test/cow") && msg.contains("ant, bird"),
        "{msg}"
    );

    let missing = dir.join("nothing-here");
    let msg = images::import(&missing, &dir, ImportFormat::Cifar10, false)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("nothing-here") && msg.contains("not found"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn real_text_sets_parse_with_the_documented_counts() {
    let Some(shared) = shared_data() else {
        return;
    };
    let shared = shared.join("text");
    // Placed under their registry names, as configs/README.md describes (here by symlink).
    let root = temp_dir("text-root");
    for (folder, name) in [
        ("amazon-fine-foods", "amazon_fine_foods_csv"),
        ("tweets-sentiment", "tweets_sentiment_csv"),
    ] {
        std::os::unix::fs::symlink(shared.join(folder), root.join(name)).unwrap();
    }
    for (name, split, counts) in [
        ("amazon_fine_foods", Split::Train, vec![1400, 2600]),
        ("amazon_fine_foods", Split::Test, vec![342, 658]),
        ("tweets_sentiment", Split::Train, vec![14430, 12983, 6106]),
        ("tweets_sentiment", Split::Test, vec![1541, 1473, 710]),
    ] {
        let d = data::load(&root, kind(name), split).unwrap();
        assert_eq!(d.class_counts(), counts, "{name} {}", split.name());
        assert_eq!(d.shape, vec![SEQUENCE_LENGTH]);
        assert!(d.data.iter().all(|&id| (id as usize) < VOCAB_SIZE));
        // Every document starts with the empty title and its joining space.
        assert!(
            (0..d.len()).all(|i| d.example(i)[0] == text::char_id(' ')),
            "{name}"
        );
        let (x, y) = Loader::sequential(&d, 32, &Device::Cpu)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert!(matches!(x, Batch::Ids(_)));
        assert_eq!((x.shape(), y.numel()), (&[32, SEQUENCE_LENGTH][..], 32));
    }
    // The first training review, as the README's format describes it.
    let first = data::load(&root, kind("amazon_fine_foods"), Split::Train).unwrap();
    let csv = std::fs::read_to_string(shared.join("amazon-fine-foods/train.csv")).unwrap();
    let line = csv.lines().next().unwrap();
    let body = line
        .splitn(3, "\",\"")
        .nth(2)
        .unwrap()
        .trim_end_matches('"');
    let want = text::encode(&format!(" {}", body.replace("\"\"", "\"")));
    assert_eq!(first.example(0), &want[..]);
    std::fs::remove_dir_all(&root).unwrap();
}

/// Images whose pixels are all distinct within an image (value depends on position and index).
fn distinct_images(n: usize, chw: [usize; 3]) -> Dataset {
    let per = chw.iter().product::<usize>();
    let pixels = (0..n)
        .flat_map(|i| (0..per).map(move |p| ((p * 7 + i * 13) % 250 + 1) as u8))
        .collect();
    Dataset::images(
        "toy",
        Split::Train,
        3,
        chw,
        pixels,
        (0..n as i32).map(|i| i % 3).collect(),
    )
    .unwrap()
}

fn epoch(data: &Dataset, seed: u64, augment: bool, prefetch: bool) -> Vec<(Vec<f32>, Vec<i32>)> {
    let mut rng = Rng::new(seed);
    let mut loader = Loader::shuffled(data, 4, &mut rng, &Device::Cpu)
        .unwrap()
        .prefetch(prefetch);
    if augment {
        loader = loader.augment(&mut rng).unwrap();
    }
    loader
        .map(|b| {
            let (x, y) = b.unwrap();
            (x.float().unwrap().to_vec().unwrap(), y.to_vec().unwrap())
        })
        .collect()
}

#[test]
fn augmented_batches_keep_the_shape_are_crops_and_flips_and_repeat_with_the_seed() {
    let chw = [3, 6, 5];
    let data = distinct_images(10, chw);
    let per = 90;
    let a = epoch(&data, 11, true, false);
    assert_eq!(a.len(), 3);
    assert_eq!(
        a[2].0.len(),
        2 * per,
        "last partial batch kept, shape intact"
    );
    assert_eq!(a, epoch(&data, 11, true, false), "same seed, same batches");
    assert_eq!(
        a,
        epoch(&data, 11, true, true),
        "prefetch yields the same batches"
    );
    assert_ne!(a, epoch(&data, 12, true, false));

    // Each augmented image is one of the 9 × 9 × 2 crops/flips of its source image.
    let plain = epoch(&data, 11, false, false);
    let mut seen_flip = [false; 2];
    let mut seen_shift = false;
    for ((xa, ya), (xp, yp)) in a.iter().zip(&plain) {
        assert_eq!(ya, yp, "augmentation keeps the order and labels");
        for (img_a, img_p) in xa.chunks(per).zip(xp.chunks(per)) {
            // Recover the source example from the unaugmented batch at the same position.
            let src = (0..data.len())
                .find(|&i| {
                    let mut v = vec![0f32; per];
                    lit_engine::data::augment::normalize_into(
                        data.example(i),
                        chw,
                        &lit_engine::data::augment::Normalizer::new(3, &[], &[]),
                        &mut v,
                    );
                    v == img_p
                })
                .expect("unaugmented image comes from the data set");
            let matches: Vec<CropFlip> = (0..=8)
                .flat_map(|dy| (0..=8).flat_map(move |dx| [false, true].map(|f| (dy, dx, f))))
                .map(|(dy, dx, flip)| CropFlip {
                    dy,
                    dx,
                    flip,
                    padding: CROP_PADDING,
                })
                .filter(|t| {
                    let mut out = vec![0f32; per];
                    t.apply(data.example(src), chw, &mut out, |_, v| v as f32 / 255.0);
                    out == img_a
                })
                .collect();
            assert!(
                !matches.is_empty(),
                "augmented image is a crop/flip of example {src}"
            );
            seen_flip[matches[0].flip as usize] = true;
            seen_shift |= matches[0].dy != 4 || matches[0].dx != 4;
        }
    }
    assert!(seen_flip[0] && seen_flip[1] && seen_shift, "draws vary");

    // Text has nothing to crop.
    let ids = Dataset::tokens("t", Split::Train, 2, 3, vec![2, 3, 4], vec![1]).unwrap();
    let err = Loader::sequential(&ids, 1, &Device::Cpu)
        .unwrap()
        .augment(&mut Rng::new(1))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("token ids"), "{err}");
}

#[test]
fn prefetch_and_inline_loading_agree_on_every_data_kind() {
    let images = distinct_images(37, [1, 4, 4]);
    for seed in [1, 2] {
        assert_eq!(
            epoch(&images, seed, false, true),
            epoch(&images, seed, false, false)
        );
    }
    let ids = Dataset::tokens(
        "t",
        Split::Test,
        2,
        5,
        (0..50).map(|i| (i % 69) as u8).collect(),
        (0..10).map(|i| i % 2).collect(),
    )
    .unwrap();
    let run = |prefetch: bool| -> Vec<(Vec<i32>, Vec<i32>)> {
        Loader::shuffled(&ids, 3, &mut Rng::new(5), &Device::Cpu)
            .unwrap()
            .prefetch(prefetch)
            .map(|b| match b.unwrap() {
                (Batch::Ids(x), y) => (x.to_vec().unwrap(), y.to_vec().unwrap()),
                (Batch::Float(_), _) => panic!("token ids must stay ids"),
            })
            .collect()
    };
    let a = run(true);
    assert_eq!(a, run(false));
    assert_eq!(
        a.iter().map(|b| b.1.len()).collect::<Vec<_>>(),
        vec![3, 3, 3, 1]
    );
    // Ids arrive as written: example k is 5k..5k+4 and its label k % 2.
    for (x, y) in &a {
        for (ex, &label) in x.chunks(5).zip(y) {
            assert_eq!(ex[1] - ex[0], 1);
            assert_eq!((ex[0] / 5) % 2, label);
        }
    }
}

#[test]
fn real_cifar10_jpeg_tar_imports_to_5000_per_class() {
    let Some(shared) = shared_data() else {
        return;
    };
    let archive = shared.join("cifar10-jpeg/cifar10-jpeg.tar.xz");
    let out = temp_dir("cifar10-real");
    let r = images::import(&archive, &out, ImportFormat::Cifar10, false).unwrap();
    assert_eq!(
        r.classes,
        vec![
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck"
        ]
    );
    assert_eq!(r.train_per_class, vec![5000; 10]);
    assert_eq!(r.test_per_class, vec![1000; 10]);
    let train = data::load(&out, kind("cifar10"), Split::Train).unwrap();
    assert_eq!(train.len(), 50_000);
    // Every data batch, and every prefix, is class-balanced.
    assert_eq!(train.first(10_000).class_counts(), vec![1000; 10]);
    assert_eq!(train.labels[..12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    let meta = std::fs::metadata(out.join("cifar-10-batches-bin/data_batch_1.bin")).unwrap();
    assert_eq!(meta.len(), 10_000 * 3073);
    // Real photos: not blank, and the channels differ somewhere.
    let img = train.example(12_345);
    assert!(img.iter().any(|&v| v != img[0]));
    assert_ne!(img[..1024], img[1024..2048]);
    std::fs::remove_dir_all(&out).unwrap();
}
