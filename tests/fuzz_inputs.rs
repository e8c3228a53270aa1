//! Property tests of every reader of outside input: the config parser, architecture names, idx,
//! CIFAR binary, Zhang CSV, PNG/JPEG, .tar/.tar.xz archives and safetensors checkpoints. Each
//! gets random bytes and mutations of a small valid input built here (bits flipped, bytes set,
//! truncated, extended, header fields rewritten to huge values). An `Err` is fine; a panic, an
//! abort or a reader that does not return within [`LIMIT`] fails the test.
//!
//! Deterministic: a fixed seed and no failure-persistence files.

use lit_engine::config::Config;
use lit_engine::data::images::{self, ImportFormat};
use lit_engine::data::{cifar, idx, text, Split};
use lit_engine::models;
use lit_engine::nn::ParamStore;
use lit_engine::train::checkpoint;
use lit_engine::{Device, Tensor};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long one reader may take on one input (they take milliseconds; this only catches hangs).
const LIMIT: Duration = Duration::from_secs(20);

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x11e_5eed),
        // A hang costs LIMIT per shrinking step: keep a failing run short.
        max_shrink_iters: 64,
        max_shrink_time: 30_000,
        ..ProptestConfig::default()
    }
}

/// Run `read` on its own thread: a panic there is re-raised here, and a reader still running
/// after [`LIMIT`] fails the test as a hang.
fn within_limit<T: Send + 'static>(what: &str, read: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(read());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: no answer after {LIMIT:?} (hang)")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(payload) => std::panic::resume_unwind(payload),
            Ok(()) => unreachable!("the reader thread ended without sending"),
        },
    }
}

/// A fresh temp folder per case (cases run one after another inside one test).
fn case_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("lit-fuzz-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One change to a valid input. Positions are taken modulo the input's length.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Extend(Vec<u8>),
    /// A big-endian u32 header field (idx dimensions, PNG sizes).
    HugeU32Be(usize, u32),
    /// A little-endian u64 field (safetensors header length and offsets, tar sizes).
    HugeU64Le(usize, u64),
    /// Octal digits (tar header fields are octal text).
    Digits(usize, u64),
    /// The k-th run of ASCII digits replaced by a huge decimal number (YAML values, the
    /// safetensors JSON header's shapes and offsets).
    HugeNumber(usize, u64),
}

fn huge_u32() -> impl Strategy<Value = u32> {
    prop_oneof![Just(u32::MAX), Just(1 << 31), Just(100_000), 0..u32::MAX]
}

fn huge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![Just(u64::MAX), Just(1 << 62), Just(1 << 40), any::<u64>()]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0..8u8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        (any::<usize>(), huge_u32()).prop_map(|(i, v)| Mutation::HugeU32Be(i, v)),
        (any::<usize>(), huge_u64()).prop_map(|(i, v)| Mutation::HugeU64Le(i, v)),
        (any::<usize>(), huge_u64()).prop_map(|(i, v)| Mutation::Digits(i, v)),
        (any::<usize>(), huge_u64()).prop_map(|(k, v)| Mutation::HugeNumber(k, v)),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..6)
}

/// Header positions are where most damage is done: aim half the mutations at the first `head`
/// bytes.
fn mutate(valid: &[u8], ops: &[Mutation], head: usize) -> Vec<u8> {
    let mut out = valid.to_vec();
    for op in ops {
        let len = out.len().max(1);
        let at = |i: usize| {
            if i.is_multiple_of(2) {
                (i / 2) % head.min(len)
            } else {
                (i / 2) % len
            }
        };
        match op {
            Mutation::FlipBit(i, b) if !out.is_empty() => {
                let i = at(*i);
                out[i] ^= 1 << b;
            }
            Mutation::SetByte(i, v) if !out.is_empty() => {
                let i = at(*i);
                out[i] = *v;
            }
            Mutation::Truncate(n) => out.truncate(n % len),
            Mutation::Extend(bytes) => out.extend_from_slice(bytes),
            Mutation::HugeU32Be(i, v) => overwrite(&mut out, at(*i), &v.to_be_bytes()),
            Mutation::HugeU64Le(i, v) => overwrite(&mut out, at(*i), &v.to_le_bytes()),
            Mutation::Digits(i, v) => overwrite(&mut out, at(*i), format!("{v:o}").as_bytes()),
            Mutation::HugeNumber(k, v) => replace_number(&mut out, *k, *v),
            _ => {}
        }
    }
    out
}

/// Replace the `k`-th (modulo their count) run of ASCII digits of `out` by `value`.
fn replace_number(out: &mut Vec<u8>, k: usize, value: u64) {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < out.len() {
        if out[i].is_ascii_digit() {
            let start = i;
            while i < out.len() && out[i].is_ascii_digit() {
                i += 1;
            }
            runs.push(start..i);
        } else {
            i += 1;
        }
    }
    if !runs.is_empty() {
        let run = runs[k % runs.len()].clone();
        out.splice(run, value.to_string().into_bytes());
    }
}

fn overwrite(out: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    if out.len() < at + bytes.len() {
        out.resize(at + bytes.len(), 0);
    }
    out[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Recompute the CRC of every complete PNG chunk, so that a mutated header is read as such
/// instead of failing its checksum.
fn fix_png_crcs(mut png: Vec<u8>) -> Vec<u8> {
    let mut at = 8;
    while at + 12 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e + 4 <= png.len()) else {
            break;
        };
        let mut crc = flate2::Crc::new();
        crc.update(&png[at + 4..end]);
        png[end..end + 4].copy_from_slice(&crc.sum().to_be_bytes());
        at = end + 4;
    }
    png
}

/// Recompute the checksum of the first tar header, so that a mutated header is read as such.
fn fix_tar_checksum(mut tar: Vec<u8>) -> Vec<u8> {
    if tar.len() >= 512 {
        tar[148..156].fill(b' ');
        let sum: u32 = tar[..512].iter().map(|&b| b as u32).sum();
        tar[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }
    tar
}

fn random_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..2048)
}

// ---- valid inputs -------------------------------------------------------------------------

fn manifest(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn valid_config() -> String {
    std::fs::read_to_string(manifest("configs/quickstart.yml")).unwrap()
}

fn valid_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7) as u8).collect();
    enc.write_header().unwrap().write_image_data(&rgb).unwrap();
    out
}

fn valid_jpeg() -> Vec<u8> {
    std::fs::read(manifest("tests/fixtures/jpeg-tree/train/dog/0000.jpg")).unwrap()
}

fn valid_idx_images() -> Vec<u8> {
    idx::encode_images(&idx::IdxImages {
        count: 3,
        rows: 4,
        cols: 5,
        pixels: (0..60).collect(),
    })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn valid_cifar10_batch() -> Vec<u8> {
    let pixels: Vec<u8> = (0..2 * cifar::IMAGE_BYTES).map(|i| i as u8).collect();
    cifar::encode_cifar10(&pixels, &[3, 9])
}

const VALID_CSV: &[u8] = b"\"1\",\"A title\",\"Some text, with \"\"quotes\"\"\\nand more\"\n\
    \"2\",\"Another\",\"multi\nline\"\r\n\n3,plain,fields\n";

/// A tar of a tiny train/test tree of 32×32 PNGs.
fn valid_tar() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut out);
        let png = valid_png(32, 32);
        for path in [
            "train/a/0.png",
            "train/b/1.png",
            "test/a/2.png",
            "test/b/3.png",
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(png.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, &png[..]).unwrap();
        }
        builder.finish().unwrap();
    }
    out
}

fn xz(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    lzma_rs::xz_compress(&mut &bytes[..], &mut out).unwrap();
    out
}

/// A small store with a parameter, a buffer and a counter, like a model's.
fn small_store() -> ParamStore {
    let dev = Device::Cpu;
    let mut s = ParamStore::new();
    let w: Vec<f32> = (0..12).map(|i| i as f32 * 0.25).collect();
    s.add_param("fc.weight", Tensor::from_vec(&[4, 3], w, &dev).unwrap())
        .unwrap();
    s.add_param(
        "fc.bias",
        Tensor::from_vec(&[4], vec![0.5; 4], &dev).unwrap(),
    )
    .unwrap();
    s.add_buffer(
        "bn.running_mean",
        Tensor::from_vec(&[4], vec![0.1; 4], &dev).unwrap(),
    )
    .unwrap();
    s
}

fn valid_checkpoint() -> Vec<u8> {
    let dir = case_dir("ckpt-valid");
    let path = dir.join("m.safetensors");
    checkpoint::save(&path, &small_store(), serde_json::json!({})).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    bytes
}

// ---- readers ------------------------------------------------------------------------------

fn parse_config(text: String) {
    within_limit("config", move || drop(Config::parse(&text, "fuzz.yml")));
}

fn read_idx(bytes: Vec<u8>) {
    within_limit("idx", move || {
        let p = Path::new("fuzz.idx");
        let _ = idx::parse_images(p, &bytes);
        let _ = idx::parse_labels(p, &bytes);
        let dir = case_dir("idx");
        let path = dir.join("fuzz.idx.gz");
        std::fs::write(&path, &bytes).unwrap();
        let _ = idx::read_images(&path);
        let _ = idx::read_labels(&path);
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

fn read_cifar(bytes: Vec<u8>) {
    within_limit("cifar", move || {
        let dir = case_dir("cifar");
        for file in cifar::cifar10_files(Split::Train) {
            std::fs::write(dir.join(file), &bytes).unwrap();
        }
        std::fs::write(dir.join("test.bin"), &bytes).unwrap();
        let _ = cifar::load_cifar10(&dir, "cifar10", Split::Train);
        let _ = cifar::load_cifar100(&dir, "cifar100", Split::Test);
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

fn read_csv(bytes: Vec<u8>) {
    within_limit("csv", move || {
        let mut records = 0usize;
        let _ = text::parse_csv(Path::new("fuzz.csv"), &bytes, |_, fields| {
            records += fields.len();
            Ok(())
        });
        let dir = case_dir("csv");
        let path = dir.join("train.csv");
        std::fs::write(&path, &bytes).unwrap();
        let _ = text::load_csv(&path, "fuzz", Split::Train, 4);
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

fn decode_image(bytes: Vec<u8>) {
    within_limit("image", move || {
        let _ = images::decode(Path::new("fuzz-image"), &bytes);
    });
}

/// Import the archive as `.tar` and (compressed) as `.tar.xz`.
fn import_archive(tar_bytes: Vec<u8>, compress: bool) {
    within_limit("archive", move || {
        let dir = case_dir("tar");
        let (name, bytes) = if compress {
            ("fuzz.tar.xz", xz(&tar_bytes))
        } else {
            ("fuzz.tar", tar_bytes)
        };
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        let _ = images::import(&path, &dir.join("out"), ImportFormat::Cifar10, false);
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

fn load_checkpoint(bytes: Vec<u8>) {
    within_limit("checkpoint", move || {
        let dir = case_dir("ckpt");
        let path = dir.join("m.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let mut store = small_store();
        let _ = checkpoint::load_into(&path, &mut store);
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

/// Meta builds only (nothing allocated), so that names under the limits cost nothing either.
fn describe_architecture(name: String, num_classes: usize) {
    within_limit("architecture", move || {
        let _ = models::describe(&name, num_classes);
        let _ = models::count_parameters(&name, num_classes);
    });
}

/// A layer size, depth or bin count: small, huge, or anything.
fn size_field() -> impl Strategy<Value = usize> {
    prop_oneof![
        0..64usize,
        1000..5000usize,
        Just(usize::MAX),
        any::<usize>()
    ]
}

/// Names of every family, with random numbers where the name has numbers.
fn architecture_name() -> impl Strategy<Value = String> {
    // Wide ResNet depths are 6n + 4.
    let wrn_depth = prop_oneof![
        size_field(),
        (0..200usize).prop_map(|n| 6 * n + 4),
        (0..usize::MAX / 6).prop_map(|n| 6 * n + 4),
    ];
    let numbered = prop_oneof![
        Just("resnet"),
        Just("takd-resnet"),
        Just("plane"),
        Just("vdcnn")
    ];
    let suffix = prop_oneof![Just(""), Just("-maxpool"), Just("-b"), Just("-")];
    let spec = prop_oneof![Just("teacher"), Just("spec0"), Just("spec2"), Just("x")];
    let activation = prop_oneof![Just("lma"), Just("aplu"), Just("relu"), Just("")];
    prop_oneof![
        proptest::collection::vec(size_field(), 0..6).prop_map(|sizes| {
            let sizes: Vec<String> = sizes.iter().map(usize::to_string).collect();
            format!("mlp-{}", sizes.join("-"))
        }),
        (wrn_depth, size_field()).prop_map(|(d, k)| format!("wrn-{d}-{k}")),
        (numbered, size_field(), suffix).prop_map(|(f, n, s)| format!("{f}{n}{s}")),
        (spec, activation, size_field()).prop_map(|(s, a, n)| format!("cfn-{s}-{a}{n}")),
    ]
}

// ---- properties ---------------------------------------------------------------------------

#[test]
fn valid_inputs_are_read() {
    Config::parse(&valid_config(), "quickstart.yml").unwrap();
    idx::parse_images(Path::new("v"), &valid_idx_images()).unwrap();
    let dir = case_dir("valid-gz");
    std::fs::write(dir.join("v.gz"), gzip(&valid_idx_images())).unwrap();
    idx::read_images(&dir.join("v.gz")).unwrap();
    let mut records = 0;
    text::parse_csv(Path::new("v.csv"), VALID_CSV, |_, _| {
        records += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(records, 3);
    images::decode(Path::new("v.png"), &valid_png(5, 4)).unwrap();
    images::decode(Path::new("v.jpg"), &valid_jpeg()).unwrap();
    std::fs::write(dir.join("v.tar"), valid_tar()).unwrap();
    let tree = images::load_tree(&dir.join("v.tar"), "v", false).unwrap();
    assert_eq!((tree.train.len(), tree.test.len()), (2, 2));
    let ckpt = dir.join("v.safetensors");
    std::fs::write(&ckpt, valid_checkpoint()).unwrap();
    checkpoint::load_into(&ckpt, &mut small_store()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn config_parser_survives_random_text(bytes in random_bytes()) {
        parse_config(String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn config_parser_survives_mutated_configs(ops in mutations()) {
        let text = mutate(valid_config().as_bytes(), &ops, 4096);
        parse_config(String::from_utf8_lossy(&text).into_owned());
    }

    #[test]
    fn config_parser_survives_yaml_structure(
        tokens in proptest::collection::vec(
            prop_oneof![
                Just("["), Just("]"), Just("{"), Just("}"), Just(","), Just(": "), Just("- "),
                Just("\n"), Just("\n  "), Just("&a "), Just("*a "), Just("&b "), Just("*b "),
                Just("\""), Just("'"), Just("#"), Just("models"), Just("x"), Just("!!str "),
                Just("<<: "), Just("|\n"), Just("? "),
            ],
            0..400,
        )
    ) {
        parse_config(tokens.concat());
    }

    #[test]
    fn config_parser_survives_long_repetitions(
        unit in prop_oneof![Just("["), Just("{a: "), Just("- "), Just("&a *a "), Just(" ")],
        count in prop_oneof![0..1000usize, 100_000..400_000usize],
    ) {
        parse_config(format!("models: {}x\n", unit.repeat(count)));
    }

    #[test]
    fn idx_reader_survives_random_and_mutated_files(
        random in random_bytes(),
        ops in mutations(),
        compress in any::<bool>(),
        dim in any::<usize>(),
        huge in huge_u32(),
    ) {
        read_idx(random);
        let mut bytes = mutate(&valid_idx_images(), &ops, 16);
        overwrite(&mut bytes, 4 + 4 * (dim % 3), &huge.to_be_bytes());
        read_idx(if compress { gzip(&bytes) } else { bytes });
        let labels = idx::encode_labels(&[1, 2, 3, 4]);
        read_idx(mutate(&labels, &ops, 8));
    }

    #[test]
    fn csv_reader_survives_random_and_mutated_files(random in random_bytes(), ops in mutations()) {
        read_csv(random);
        read_csv(mutate(VALID_CSV, &ops, VALID_CSV.len()));
    }

    #[test]
    fn architecture_names_survive_random_numbers(
        name in architecture_name(),
        num_classes in prop_oneof![0..200usize, Just(usize::MAX), any::<usize>()],
    ) {
        describe_architecture(name, num_classes);
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn cifar_reader_survives_random_and_mutated_files(random in random_bytes(), ops in mutations()) {
        read_cifar(random);
        read_cifar(mutate(&valid_cifar10_batch(), &ops, 8));
    }

    #[test]
    fn image_decoders_survive_random_and_mutated_files(
        random in random_bytes(),
        png_ops in mutations(),
        jpeg_ops in mutations(),
        width in huge_u32(),
        height in huge_u32(),
    ) {
        let mut png_random = b"\x89PNG\r\n\x1a\n".to_vec();
        png_random.extend(&random);
        decode_image(png_random);
        let mut jpeg_random = vec![0xff, 0xd8];
        jpeg_random.extend(&random);
        decode_image(jpeg_random);
        let png = mutate(&valid_png(8, 6), &png_ops, 33);
        decode_image(png.clone());
        decode_image(fix_png_crcs(png));
        let mut sized = valid_png(8, 6);
        overwrite(&mut sized, 16, &width.to_be_bytes());
        overwrite(&mut sized, 20, &height.to_be_bytes());
        decode_image(fix_png_crcs(sized));
        let mut jpeg = valid_jpeg();
        if let Some(sof) = jpeg.windows(2).position(|w| w == [0xff, 0xc0] || w == [0xff, 0xc2]) {
            overwrite(&mut jpeg, sof + 5, &(height as u16).to_be_bytes());
            overwrite(&mut jpeg, sof + 7, &(width as u16).to_be_bytes());
        }
        decode_image(jpeg);
        decode_image(mutate(&valid_jpeg(), &jpeg_ops, 640));
    }

    #[test]
    fn checkpoint_loader_survives_random_and_mutated_files(
        random in random_bytes(),
        ops in mutations(),
    ) {
        load_checkpoint(random);
        let valid = valid_checkpoint();
        let header = 8 + u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
        load_checkpoint(mutate(&valid, &ops, header));
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn archive_reader_survives_random_and_mutated_archives(
        random in random_bytes(),
        ops in mutations(),
        compress in any::<bool>(),
        size in huge_u64(),
    ) {
        import_archive(random, compress);
        // The first entry's header: name, mode, uid, gid, size (at 124), mtime, checksum, type.
        import_archive(fix_tar_checksum(mutate(&valid_tar(), &ops, 512)), compress);
        // The size field (12 bytes at 124): octal text, or GNU base-256 for huge sizes.
        let mut sized = valid_tar();
        let field = if size < 1 << 33 {
            format!("{size:011o}\0").into_bytes()
        } else {
            [&[0x80, 0, 0, 0][..], &size.to_be_bytes()].concat()
        };
        overwrite(&mut sized, 124, &field);
        import_archive(fix_tar_checksum(sized), compress);
    }
}
