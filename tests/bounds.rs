//! Sizes from outside are bounded before they are allocated: each test feeds one input that used
//! to panic, abort on allocation or hang, and checks for a one-line error naming the input and
//! the limit (see src/limits.rs).

use lit_engine::models::{self, info};
use lit_engine::nn::ParamStore;
use lit_engine::rng::Rng;
use lit_engine::Device;
use std::path::PathBuf;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lit-bounds-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The error of `result`, as one line that contains every one of `wanted`.
fn one_line_error<T>(result: lit_engine::Result<T>, wanted: &[&str]) -> String {
    let msg = match result {
        Ok(_) => panic!("expected an error containing {wanted:?}"),
        Err(e) => e.to_string(),
    };
    assert!(!msg.contains('\n'), "not one line: {msg}");
    for w in wanted {
        assert!(msg.contains(w), "`{w}` missing from: {msg}");
    }
    msg
}

fn build_on_cpu(arch: &str, num_classes: usize) -> lit_engine::Result<()> {
    let mut store = ParamStore::new();
    models::build(
        arch,
        num_classes,
        &mut store,
        &Device::Cpu,
        &mut Rng::new(0),
    )
    .map(drop)
}

#[test]
fn huge_architectures_are_refused_before_allocation() {
    for (arch, classes, wanted) in [
        (
            "mlp-784-4000000000-10",
            10,
            ["mlp-784-4000000000-10", "1048576"],
        ),
        ("wrn-16-100000", 10, ["wrn-16-100000", "2147483648"]),
        ("wrn-16-2000", 10, ["wrn-16-2000", "2147483648"]),
        ("wrn-100000-4", 10, ["wrn-100000-4", "limit of 1000"]),
        ("cfn-spec0-aplu4000000000", 10, ["aplu4000000000", "4096"]),
        ("resnet20", 100_000_000_000, ["resnet20", "1048576"]),
        ("resnet20", 2_000_000, ["resnet20", "1048576"]),
        (
            "mlp-784-1000000-1000000-10",
            10,
            ["fc2.weight", "2147483648"],
        ),
    ] {
        one_line_error(info::model_info(arch, classes), &wanted);
        one_line_error(build_on_cpu(arch, classes), &wanted);
        one_line_error(models::count_parameters(arch, classes), &wanted);
    }
    let many_layers = format!("mlp-{}10", "4-".repeat(1001));
    one_line_error(build_on_cpu(&many_layers, 10), &["layer sizes", "1000"]);
    // Sizes under the limits still build.
    assert!(build_on_cpu("mlp-784-64-10", 10).is_ok());
    assert!(models::count_parameters("wrn-28-20", 10).unwrap() > 145_000_000);
}

/// A valid `w × h` RGB PNG.
fn png_bytes(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let rgb = vec![90u8; (w * h * 3) as usize];
    enc.write_header().unwrap().write_image_data(&rgb).unwrap();
    out
}

/// `png` with the IHDR width and height rewritten (and the chunk's CRC fixed, so that only the
/// size is wrong).
fn png_claiming(png: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut out = png.to_vec();
    let ihdr = out.windows(4).position(|w| w == b"IHDR").unwrap();
    out[ihdr + 4..ihdr + 8].copy_from_slice(&width.to_be_bytes());
    out[ihdr + 8..ihdr + 12].copy_from_slice(&height.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&out[ihdr..ihdr + 17]);
    out[ihdr + 17..ihdr + 21].copy_from_slice(&crc.sum().to_be_bytes());
    out
}

/// `jpeg` with the frame header's (SOF0/SOF2) height and width rewritten.
fn jpeg_claiming(jpeg: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let sof = out
        .windows(2)
        .position(|w| w == [0xff, 0xc0] || w == [0xff, 0xc2])
        .unwrap();
    out[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    out[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    out
}

#[test]
fn image_headers_claiming_huge_sizes_are_refused_before_decoding() {
    use lit_engine::data::images::decode;
    let name = std::path::Path::new("train/cat/huge.png");
    let valid = png_bytes(4, 3);
    assert_eq!(decode(name, &valid).unwrap().pixels.len(), 36);
    for (w, h) in [
        (100_000, 100_000),
        (16_384, 16_384),
        (1, 20_000),
        (u32::MAX, u32::MAX),
    ] {
        one_line_error(
            decode(name, &png_claiming(&valid, w, h)),
            &["train/cat/huge.png", "PNG header claims", "16384"],
        );
    }
    let fixture = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gray-8x8.jpg"),
    )
    .unwrap();
    let name = std::path::Path::new("train/cat/huge.jpg");
    assert!(decode(name, &fixture).is_ok());
    for (w, h) in [(16_000, 16_000), (65_535, 65_535), (20_000, 8)] {
        one_line_error(
            decode(name, &jpeg_claiming(&fixture, w, h)),
            &["train/cat/huge.jpg", "16384"],
        );
    }
}

#[test]
fn tar_entry_claiming_2_pow_62_bytes_is_refused_before_reading() {
    use lit_engine::data::images::{import, ImportFormat};
    let dir = temp_dir("tar");
    let mut header = tar::Header::new_gnu();
    header.set_path("train/cat/0.png").unwrap();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(1 << 62);
    header.set_cksum();
    let mut archive = header.as_bytes().to_vec();
    archive.extend(png_bytes(32, 32));
    archive.resize(archive.len().next_multiple_of(512) + 1024, 0);
    let path = dir.join("huge.tar");
    std::fs::write(&path, &archive).unwrap();
    one_line_error(
        import(&path, &dir.join("out"), ImportFormat::Cifar10, false),
        &[
            "huge.tar/train/cat/0.png",
            "4611686018427387904",
            "67108864",
        ],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn deeply_nested_or_oversized_yaml_is_refused_quickly() {
    use lit_engine::config::Config;
    use std::time::{Duration, Instant};
    let started = Instant::now();
    let deep = format!("models: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    one_line_error(
        Config::parse(&deep, "deep.yml"),
        &["deep.yml line 1", "32 levels of nesting"],
    );
    let indented: String = (0..200)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    one_line_error(
        Config::parse(&indented, "indented.yml"),
        &["indented.yml line 33", "nesting"],
    );
    let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        laughs += &format!("a{i}: &a{i} [{refs}]\n");
    }
    laughs += "models: *a8\n";
    one_line_error(
        Config::parse(&laughs, "laughs.yml"),
        &["laughs.yml line 7", "64 anchors and aliases"],
    );
    let dir = temp_dir("yaml");
    let big = dir.join("big.yml");
    let mut text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/quickstart.yml"),
    )
    .unwrap();
    text += &format!("# {}\n", "x".repeat(2 << 20));
    std::fs::write(&big, text).unwrap();
    one_line_error(Config::load(&big), &["big.yml", "1048576"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Run the binary with `args`, killed after `limit`; (exit code, stderr), or None on timeout.
fn run_with_timeout(args: &[&str], limit: std::time::Duration) -> Option<(i32, String)> {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lit-engine"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return Some((status.code().unwrap_or(-1), err));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    None
}

#[test]
fn threads_flag_is_bounded() {
    for n in ["0", "1000000"] {
        let args = [
            "bench",
            "step",
            "--student",
            "mlp-4-3",
            "--num-classes",
            "3",
            "--batch",
            "2",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "--threads",
            n,
        ];
        let (code, err) = run_with_timeout(&args, std::time::Duration::from_secs(20))
            .unwrap_or_else(|| panic!("--threads {n} still running after 20 s"));
        assert_eq!(code, 1, "--threads {n}: {err}");
        assert!(
            err.contains(&format!("--threads {n}")) && err.contains("1..=1024"),
            "{err}"
        );
    }
}

/// A PNG tree with `train` and `test` 32×32 images spread over classes `a` and `b`.
fn png_tree(root: &std::path::Path, train: usize, test: usize) {
    for (split, n) in [("train", train), ("test", test)] {
        for i in 0..n {
            let dir = root.join(split).join(["a", "b"][i % 2]);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{i:03}.png")), png_bytes(32, 32)).unwrap();
        }
    }
}

#[test]
fn import_of_a_few_images_writes_a_loadable_layout_or_refuses() {
    use lit_engine::data::images::{import, ImportFormat};
    use lit_engine::data::{self, DatasetKind, Split};
    let dir = temp_dir("import");
    let cifar10 = DatasetKind::from_name("cifar10").unwrap();
    // 6, 11 and 16 images used to leave data_batch_5.bin (and more) empty.
    for n in [5, 6, 11, 16] {
        let (tree, root) = (dir.join(format!("tree{n}")), dir.join(format!("root{n}")));
        png_tree(&tree, n, 2);
        let report = import(&tree, &root, ImportFormat::Cifar10, false).unwrap();
        assert_eq!(report.train, n);
        for file in &report.files {
            assert!(
                std::fs::metadata(file).unwrap().len() > 0,
                "{}",
                file.display()
            );
        }
        let train = data::load(&root, cifar10, Split::Train).unwrap();
        assert_eq!(train.len(), n);
        assert_eq!(data::load(&root, cifar10, Split::Test).unwrap().len(), 2);
    }
    let tree = dir.join("tree3");
    png_tree(&tree, 3, 2);
    let out = dir.join("root3");
    one_line_error(
        import(&tree, &out, ImportFormat::Cifar10, false),
        &["at least 5 train images", "got 3 train"],
    );
    assert!(!out.join("cifar-10-batches-bin/data_batch_5.bin").exists());
    let tree = dir.join("no-test");
    png_tree(&tree, 6, 0);
    one_line_error(
        import(&tree, &dir.join("x"), ImportFormat::Cifar10, false),
        &["no-test/test", "split folder not found"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_batch_is_bounded() {
    let spec = |batch| lit_engine::bench::BenchSpec {
        student: "mlp-4-3".into(),
        teacher: None,
        batch,
        num_classes: 3,
        warmup: 0,
        steps: 1,
        forward_only: false,
        precision: lit_engine::Precision::Fp32,
        graph: false,
    };
    one_line_error(
        lit_engine::bench::run(&spec(1_000_000_000_000), &Device::Cpu),
        &["--batch", "1000000000000", "65536"],
    );
    assert!(lit_engine::bench::run(&spec(4), &Device::Cpu).is_ok());
}

#[test]
fn unbounded_files_stop_at_the_limit() {
    use lit_engine::config::Config;
    // A device reports no length: reading it must stop at the limit, not exhaust memory.
    let zero = std::path::Path::new("/dev/zero");
    // (idx and image files share this reader, with 4 GiB and 64 MiB limits.)
    one_line_error(Config::load(zero), &["/dev/zero", "1048576"]);
}

#[test]
fn checkpoint_reading_stops_at_the_size_a_model_can_have() {
    use lit_engine::train::checkpoint;
    let mut store = ParamStore::new();
    let w = lit_engine::Tensor::from_vec(&[2, 2], vec![1.0; 4], &Device::Cpu).unwrap();
    store.add_param("fc.weight", w).unwrap();
    // A device reports no length; 4 values allow the 256 MiB floor of the limit.
    let zero = std::path::Path::new("/dev/zero");
    one_line_error(
        checkpoint::load_into(zero, &mut store),
        &["/dev/zero", "checkpoint", "268435456"],
    );
}
