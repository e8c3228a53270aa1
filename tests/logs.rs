//! Logs and reports: TensorBoard event files (framing, CRCs, protobuf fields, and TensorBoard's own
//! reader when installed), the final report table, the packed low-bit export of quantized
//! students, and `lit-engine info` (layers, parameters, FLOPs).

use lit_engine::testing::skip_unless_required;
use lit_engine::train::tensorboard::{crc32c, masked_crc32c, read_events, EventWriter};
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lit-logs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn only_event_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "one event file expected in {dir:?}: {files:?}"
    );
    files.into_iter().next().unwrap()
}

/// Base-128 varint at `pos`, as protobuf writes it.
fn varint(b: &[u8], pos: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*pos];
        *pos += 1;
        v |= ((byte & 0x7F) as u64) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

// ---------- TensorBoard ----------

#[test]
fn event_file_records_decode_by_hand() {
    let dir = scratch("tb-hand");
    let mut w = EventWriter::create(&dir).unwrap();
    w.scalar("train/loss", 7, 0.125).unwrap();
    w.flush().unwrap();
    let path = only_event_file(&dir);
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let parts: Vec<&str> = name.splitn(5, '.').collect();
    assert_eq!(&parts[..3], ["events", "out", "tfevents"], "{name}");
    let secs: u64 = parts[3].parse().expect("unix seconds in the name");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(secs) < 600, "{secs} vs now {now}");
    assert!(!parts[4].is_empty(), "hostname part in {name}");

    // Walk the raw TFRecords: u64 length, masked CRC of it, data, masked CRC of the data.
    let bytes = std::fs::read(&path).unwrap();
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let len_bytes = &bytes[pos..pos + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let len_crc = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap());
        assert_eq!(len_crc, masked_crc32c(len_bytes));
        // The mask by its definition, on top of the vector-checked CRC32C.
        let c = crc32c(len_bytes);
        assert_eq!(len_crc, c.rotate_right(15).wrapping_add(0xa282ead8));
        let data = &bytes[pos + 12..pos + 12 + len];
        let data_crc =
            u32::from_le_bytes(bytes[pos + 12 + len..pos + 16 + len].try_into().unwrap());
        assert_eq!(data_crc, masked_crc32c(data));
        records.push(data.to_vec());
        pos += 16 + len;
    }
    assert_eq!(pos, bytes.len());
    assert_eq!(records.len(), 2);

    // Record 0: wall_time (field 1, fixed64), step (2, varint), file_version (3, bytes).
    let r = &records[0];
    assert_eq!(r[0], (1 << 3) | 1);
    let wall = f64::from_le_bytes(r[1..9].try_into().unwrap());
    assert!((wall - now as f64).abs() < 600.0);
    assert_eq!(r[9], 2 << 3);
    let mut p = 10;
    assert_eq!(varint(r, &mut p), 0);
    assert_eq!(r[p], (3 << 3) | 2);
    p += 1;
    let n = varint(r, &mut p) as usize;
    assert_eq!(&r[p..p + n], b"brain.Event:2");
    assert_eq!(p + n, r.len());

    // Record 1: ..., summary (5) { value (1) { tag (1) "train/loss", simple_value (2, fixed32) } }.
    let r = &records[1];
    let mut p = 9;
    assert_eq!(r[p], 2 << 3);
    p += 1;
    assert_eq!(varint(r, &mut p), 7);
    assert_eq!(r[p], (5 << 3) | 2);
    p += 1;
    let summary_len = varint(r, &mut p) as usize;
    assert_eq!(p + summary_len, r.len());
    assert_eq!(r[p], (1 << 3) | 2);
    p += 1;
    let value_len = varint(r, &mut p) as usize;
    assert_eq!(p + value_len, r.len());
    assert_eq!(r[p], (1 << 3) | 2);
    p += 1;
    let tag_len = varint(r, &mut p) as usize;
    assert_eq!(&r[p..p + tag_len], b"train/loss");
    p += tag_len;
    assert_eq!(r[p], (2 << 3) | 5);
    assert_eq!(
        f32::from_le_bytes(r[p + 1..p + 5].try_into().unwrap()),
        0.125
    );
    assert_eq!(p + 5, r.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn event_reader_rejects_a_corrupt_file() {
    let dir = scratch("tb-corrupt");
    let path = {
        let mut w = EventWriter::create(&dir).unwrap();
        w.scalar("acc", 1, 0.5).unwrap();
        w.path().to_path_buf()
    };
    let events = read_events(&path).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].scalars, vec![("acc".to_string(), 0.5)]);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 6;
    bytes[last] ^= 0x01; // inside the last record's data
    std::fs::write(&path, &bytes).unwrap();
    let err = read_events(&path).unwrap_err().to_string();
    assert!(err.contains("data CRC mismatch"), "{err}");
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&path, &bytes).unwrap();
    let err = read_events(&path).unwrap_err().to_string();
    assert!(err.contains("runs past the file"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_writers_in_one_second_get_two_files() {
    let dir = scratch("tb-two");
    let a = EventWriter::create(&dir).unwrap();
    let b = EventWriter::create(&dir).unwrap();
    assert_ne!(a.path(), b.path());
    drop((a, b));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// TensorBoard's own reader (EventAccumulator) on a file we wrote; a printed SKIP when python3 or
/// the `tensorboard` package is missing, a failure then under `LIT_REQUIRE_TENSORBOARD=1`.
#[test]
fn tensorboard_reads_our_scalars() {
    let dir = scratch("tb-python");
    let mut expected = Vec::new();
    {
        let mut w = EventWriter::create(&dir).unwrap();
        for epoch in 0..3i64 {
            let loss = 2.0 / (epoch as f32 + 1.0) + 0.1;
            let acc = 0.3 + 0.2 * epoch as f32;
            w.scalar("train/loss", epoch, loss).unwrap();
            w.scalar("test/acc", epoch, acc).unwrap();
            w.flush().unwrap();
            expected.push(format!("train/loss:{epoch}:{loss:e}"));
            expected.push(format!("test/acc:{epoch}:{acc:e}"));
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_tensorboard.py");
    let out = match Command::new("python3")
        .arg(&script)
        .arg(&dir)
        .args(&expected)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            std::fs::remove_dir_all(&dir).unwrap();
            return skip_unless_required(
                "LIT_REQUIRE_TENSORBOARD",
                &format!("python3 not runnable ({e})"),
            );
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
    match out.status.code() {
        Some(0) => println!("{text}"),
        Some(2) => skip_unless_required(
            "LIT_REQUIRE_TENSORBOARD",
            text.trim().trim_start_matches("skip: "),
        ),
        _ => panic!("TensorBoard's reader disagrees:\n{text}"),
    }
}

// ---------- lit-engine info: parameters, shapes, multiply-adds ----------

use lit_engine::autograd::Graph;
use lit_engine::models::count_parameters;
use lit_engine::models::info::model_info;
use lit_engine::ops::flops::count_macs;
use lit_engine::{Device, Tensor};

const INFO_ARCHS: &[(&str, usize)] = &[
    ("resnet20", 10),
    ("takd-resnet8", 100),
    ("plane4", 10),
    ("wrn-16-2", 10),
    ("cfn-spec0", 10),
    ("cfn-spec1-swish", 10),
    ("cfn-spec0-lma8", 10),
    ("cfn-spec0-prelu", 10),
    ("cfn-spec2-aplu8", 10),
    ("mlp-784-256-10", 10),
    ("vdcnn9-maxpool", 5),
];

#[test]
fn info_parameters_match_count_parameters_layer_by_layer() {
    for &(arch, classes) in INFO_ARCHS {
        let info = model_info(arch, classes).unwrap();
        let expected = count_parameters(arch, classes).unwrap();
        assert_eq!(info.parameters, expected, "{arch}");
        let per_layer: usize = info.layers.iter().map(|l| l.parameters).sum();
        assert_eq!(per_layer, expected, "{arch}: per-layer parameters");
        assert!(
            info.layers.iter().all(|l| !l.path.starts_with('(')),
            "{arch}: parameters outside traced layers"
        );
        let per_layer_macs: u64 = info.layers.iter().map(|l| l.macs).sum();
        assert_eq!(
            per_layer_macs, info.macs,
            "{arch}: MACs outside traced layers"
        );
        assert_eq!(info.flops(), 2 * info.macs);
        assert_eq!(info.parameter_bytes(), 4 * expected as u64);
        let last = info.layers.last().unwrap();
        assert_eq!(last.output_shape, vec![classes], "{arch}: logits shape");
    }
}

/// ResNet-20 (LIT, option A) on 32x32: conv1 3->16, 18 3x3 convs in three stages, linear 64->10.
#[test]
fn info_resnet20_multiply_adds_by_hand() {
    let conv = |c_in: u64, c_out: u64, hw: u64| c_in * c_out * 9 * hw * hw;
    let expected = conv(3, 16, 32)
        + 6 * conv(16, 16, 32)
        + conv(16, 32, 16)
        + 5 * conv(32, 32, 16)
        + conv(32, 64, 8)
        + 5 * conv(64, 64, 8)
        + 64 * 10;
    assert_eq!(expected, 40_551_040);
    let info = model_info("resnet20", 10).unwrap();
    assert_eq!(info.macs, expected);
    assert_eq!(info.input_shape, vec![3, 32, 32]);
    let l = |path: &str| info.layers.iter().find(|l| l.path == path).unwrap();
    assert_eq!(l("conv1").output_shape, vec![16, 32, 32]);
    assert_eq!(l("layer2.0.conv1").output_shape, vec![32, 16, 16]);
    assert_eq!(l("layer2.0.conv1").macs, conv(16, 32, 16));
    assert_eq!(l("layer3.2.bn2").output_shape, vec![64, 8, 8]);
    assert_eq!(l("linear").parameters, 650);
    assert_eq!(l("linear").macs, 640);
    let text = info.render();
    assert!(text.contains("40551040 (40.55M)"), "{text}");
    assert!(text.contains("layer3.2.conv2"), "{text}");
}

#[test]
fn conv_linear_and_gemm_multiply_adds_by_hand() {
    use lit_engine::ops::{conv, matmul};
    let dev = Device::Cpu;
    let t = |shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::from_vec(shape, lit_engine::testing::random_f32(1, n), &dev).unwrap()
    };
    let mut g = Graph::no_grad(&dev);
    let (x, w, b) = (
        g.constant(t(&[2, 3, 7, 9])),
        g.constant(t(&[5, 3, 3, 2])),
        g.constant(t(&[5])),
    );
    // OH = (7 + 2 - 3)/2 + 1 = 4, OW = (9 - 2)/1 + 1 = 8; each output a 3·3·2 dot product.
    let (y, macs) = count_macs(|| conv::conv2d(&mut g, x, w, Some(b), (2, 1), (1, 0)).unwrap());
    assert_eq!(g.value(y).shape(), [2, 5, 4, 8]);
    assert_eq!(macs, 2 * 5 * 4 * 8 * (3 * 3 * 2));

    let (x, w) = (g.constant(t(&[3, 4, 11])), g.constant(t(&[6, 4, 3])));
    // L_out = (11 + 2 - 3)/2 + 1 = 6.
    let (y, macs) = count_macs(|| conv::conv1d(&mut g, x, w, None, 2, 1).unwrap());
    assert_eq!(g.value(y).shape(), [3, 6, 6]);
    assert_eq!(macs, 3 * 6 * 6 * (4 * 3));

    let (x, w, b) = (
        g.constant(t(&[3, 7])),
        g.constant(t(&[4, 7])),
        g.constant(t(&[4])),
    );
    let (_, macs) = count_macs(|| matmul::linear(&mut g, x, w, Some(b)).unwrap());
    assert_eq!(macs, 3 * 4 * 7);

    // aᵀ·b with a [5, 6], b [5, 4]: 6x4 outputs, each a length-5 dot product.
    let (a, bm) = (g.constant(t(&[5, 6])), g.constant(t(&[5, 4])));
    let (_, macs) = count_macs(|| matmul::gemm_op(&mut g, a, true, bm, false).unwrap());
    assert_eq!(macs, 6 * 4 * 5);

    // Outside a count nothing is recorded, and a count sees only its own work.
    let (_, macs) = count_macs(|| ());
    assert_eq!(macs, 0);
}

#[test]
fn info_cli_prints_the_table_and_rejects_unknown_architectures() {
    let exe = env!("CARGO_BIN_EXE_lit-engine");
    let out = Command::new(exe)
        .args(["info", "resnet20"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("parameters      269722"), "{text}");
    assert!(text.contains("40551040"), "{text}");

    let out = Command::new(exe)
        .args(["info", "vdcnn9-maxpool", "--num-classes", "5", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["parameters"].as_u64().unwrap() as usize,
        count_parameters("vdcnn9-maxpool", 5).unwrap()
    );
    assert_eq!(
        v["flops"].as_u64().unwrap(),
        2 * v["macs"].as_u64().unwrap()
    );

    let out = Command::new(exe)
        .args(["info", "resnet21"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("depth 21"),
        "{err}"
    );
}

// ---------- packed low-bit export of a quantized student ----------

use lit_engine::distill::export::{load_packed, packed_size, save_packed, PackSpec, FORMAT};
use lit_engine::distill::quantize::quantize_uniform;
use lit_engine::nn::{EntryKind, ParamStore};
use lit_engine::rng::Rng;

fn built(arch: &str, seed: u64) -> ParamStore {
    let mut store = ParamStore::new();
    lit_engine::models::build(arch, 10, &mut store, &Device::Cpu, &mut Rng::new(seed)).unwrap();
    store
}

/// Every conv/linear weight (which ones a method quantizes is the trainer's rule, not the export's).
fn matrix_weights(store: &ParamStore) -> Vec<String> {
    store
        .iter()
        .filter(|(n, p)| p.kind == EntryKind::Param && p.value.dims() >= 2 && n.ends_with("weight"))
        .map(|(n, _)| n.to_string())
        .collect()
}

#[test]
fn packed_export_round_trips_to_the_quantized_values() {
    let dir = scratch("packed");
    let path = dir.join("student.packed.safetensors");
    // LMA student: parameters, BatchNorm buffers and LMA running state all travel.
    let arch = "cfn-spec0-lma8";
    let store = built(arch, 1);
    let mut specs = PackSpec::uniform(&matrix_weights(&store), 4, Some(256));
    specs[0].bits = 2; // per-layer bits (differentiable quantization allocates them)
    specs[1].bucket = None;
    let export = save_packed(&path, &store, &specs, serde_json::json!({"arch": arch})).unwrap();
    assert_eq!(export.file_bytes, std::fs::metadata(&path).unwrap().len());

    // Size by hand: packed bits + 8 bytes of alpha/beta per bucket, 4 bytes per other value.
    let quantized: std::collections::HashMap<&str, &PackSpec> =
        specs.iter().map(|s| (s.name.as_str(), s)).collect();
    let (mut params, mut buffers) = (0u64, 0u64);
    for (name, p) in store.iter() {
        let n = p.value.numel() as u64;
        match (p.kind, quantized.get(name)) {
            (EntryKind::Param, Some(s)) => {
                let rows = match s.bucket {
                    Some(b) if n as usize > b => n.div_ceil(b as u64),
                    _ => 1,
                };
                params += (n * s.bits as u64).div_ceil(8) + 8 * rows;
            }
            (EntryKind::Param, None) => params += 4 * n,
            _ => buffers += 4 * n,
        }
    }
    assert_eq!(
        (export.size.parameters, export.size.buffers),
        (params, buffers)
    );
    assert_eq!(packed_size(&store, &specs).unwrap(), export.size);
    let float_bytes = 4 * store.num_parameters() as u64;
    assert!(
        export.size.parameters * 5 < float_bytes,
        "4-bit export should be < 1/5 of f32: {} vs {float_bytes}",
        export.size.parameters
    );
    // The file holds exactly that payload plus its header (8-byte length + JSON).
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(export.file_bytes, 8 + header_len + export.size.total());

    // Load into a differently initialised store of the same architecture.
    let mut loaded = built(arch, 99);
    let info = load_packed(&path, &mut loaded).unwrap();
    assert_eq!(info.info["arch"], arch);
    assert_eq!(info.specs, specs);
    for (name, p) in store.iter() {
        let got = loaded.get(name).unwrap().value.to_vec().unwrap();
        let want = match quantized.get(name) {
            Some(s) => quantize_uniform(&p.value, s.bits, s.bucket)
                .unwrap()
                .values
                .to_vec()
                .unwrap(),
            None => p.value.to_vec().unwrap(),
        };
        let same = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same && got.len() == want.len(),
            "{name} differs after the round trip"
        );
        if quantized.contains_key(name) {
            assert_ne!(
                want,
                p.value.to_vec().unwrap(),
                "{name}: quantization changed nothing?"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn packed_export_errors_name_the_problem() {
    let dir = scratch("packed-errors");
    let path = dir.join("s.safetensors");
    let store = built("resnet20", 1);
    let spec = |name: &str| {
        vec![PackSpec {
            name: name.into(),
            bits: 4,
            bucket: None,
            points: None,
        }]
    };

    let err = save_packed(&path, &store, &spec("nope.weight"), serde_json::Value::Null);
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("`nope.weight` is not an entry"));
    let err = save_packed(
        &path,
        &store,
        &spec("bn1.running_mean"),
        serde_json::Value::Null,
    );
    assert!(err.unwrap_err().to_string().contains("is a buffer"));
    let mut twice = spec("conv1.weight");
    twice.extend(spec("conv1.weight"));
    let err = save_packed(&path, &store, &twice, serde_json::Value::Null);
    assert!(err.unwrap_err().to_string().contains("listed twice"));
    let bad_bits = vec![PackSpec {
        name: "conv1.weight".into(),
        bits: 0,
        bucket: None,
        points: None,
    }];
    assert!(save_packed(&path, &store, &bad_bits, serde_json::Value::Null).is_err());
    assert!(!path.exists(), "a failed export leaves no file");

    save_packed(
        &path,
        &store,
        &matrix_weights(&store)
            .iter()
            .map(|n| PackSpec {
                name: n.clone(),
                bits: 3,
                bucket: Some(64),
                points: None,
            })
            .collect::<Vec<_>>(),
        serde_json::Value::Null,
    )
    .unwrap();
    // Another architecture: every mismatch is reported, nothing is loaded.
    let mut other = built("resnet32", 2);
    let before = other.get("conv1.weight").unwrap().value.to_vec().unwrap();
    let err = load_packed(&path, &mut other).unwrap_err().to_string();
    assert!(
        err.contains("does not match this model") && err.contains("missing"),
        "{err}"
    );
    assert_eq!(
        other.get("conv1.weight").unwrap().value.to_vec().unwrap(),
        before
    );
    // A plain checkpoint is not a packed export.
    let plain = dir.join("plain.safetensors");
    lit_engine::train::checkpoint::save(&plain, &store, serde_json::Value::Null).unwrap();
    let err = load_packed(&plain, &mut built("resnet20", 3))
        .unwrap_err()
        .to_string();
    assert!(err.contains(FORMAT) && err.contains("load_into"), "{err}");
    // A truncated file is an error, not a panic.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(load_packed(&path, &mut built("resnet20", 3)).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------- the final report ----------

use lit_engine::train::report::{Report, ReportRow, Role};

#[test]
fn report_table_aligns_and_serialises() {
    let mut report = Report::new();
    report
        .push(ReportRow::float(
            Role::Teacher,
            "resnet56",
            853_018,
            &[0.80, 0.9312, 0.9295],
        ))
        .push(ReportRow::float(Role::Assistant, "resnet32", 464_154, &[]))
        .push(ReportRow::quantized(
            "resnet20",
            269_722,
            140_000,
            4,
            &[0.85, 0.9102, 0.9088],
        ));
    let text = report.render();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].starts_with("role "), "{text}");
    // Columns line up: every row's `size` cell starts where the header's does.
    let col = lines[0].find("size").unwrap();
    assert!(lines[1][col..].starts_with("3.25 MiB"), "{text}");
    assert!(lines[3][col..].starts_with("137 KiB"), "{text}");
    assert!(
        lines[1].contains("853.02K") && lines[1].contains("93.12%") && lines[1].ends_with("92.95%")
    );
    assert!(
        lines[2].contains("assistant") && lines[2].ends_with('-'),
        "{text}"
    );
    assert!(lines[3].contains("resnet20 (4-bit)"), "{text}");
    let ratio = (4.0 * 853_018.0) / 140_000.0;
    assert!(lines[4].contains(&format!("{ratio:.1}x smaller")), "{text}");
    assert!(lines[4].contains("-2.10 points"), "{text}");

    let json = report.to_json();
    assert_eq!(json["rows"][0]["role"], "teacher");
    assert_eq!(json["rows"][0]["bytes"], 4 * 853_018);
    assert_eq!(json["rows"][2]["bits"], 4);
    assert_eq!(json["rows"][2]["bytes"], 140_000);
    assert_eq!(json["rows"][1]["best_accuracy"], serde_json::Value::Null);
    assert!((json["rows"][2]["last_accuracy"].as_f64().unwrap() - 0.9088).abs() < 1e-12);
}
