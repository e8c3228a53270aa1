//! The cuda device: without a usable GPU, asking for it fails fast with a one-line
//! `Error::Device` and never panics; with a GPU (`LIT_REQUIRE_GPU=1` sessions) it compiles,
//! launches and copies correctly.
//!
//! Cases that need a different process environment (`LIT_DEVICE`, a fake `libcuda` on
//! `LD_LIBRARY_PATH`, which the loader reads at start-up) re-run this test binary as a child
//! running only `child_selects_a_device`.

use lit_engine::device::{Device, DeviceRequest, GpuBackend, KernelArgs, LaunchCfg};
use lit_engine::ops::elementwise::{axpy_inplace, relu_forward};
use lit_engine::{Error, Tensor};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn gpu_required() -> bool {
    std::env::var("LIT_REQUIRE_GPU").as_deref() == Ok("1")
}

#[test]
fn asking_for_cuda_fails_fast_with_one_line_or_works_on_a_gpu() {
    let started = Instant::now();
    match Device::select(Some(DeviceRequest::Cuda)) {
        Err(e) => {
            let elapsed = started.elapsed();
            assert!(!gpu_required(), "LIT_REQUIRE_GPU=1 but cuda failed: {e}");
            assert!(matches!(e, Error::Device(_)), "not a device error: {e:?}");
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "the reason must be one line: {msg:?}");
            assert!(
                elapsed < Duration::from_secs(10),
                "probing took {elapsed:?}"
            );
            // The outcome is remembered: the second ask is immediate and says the same.
            let again = Instant::now();
            let second = Device::cuda().unwrap_err().to_string();
            assert_eq!(second, msg);
            assert!(again.elapsed() < Duration::from_millis(100));
            println!("cuda unavailable after {elapsed:?}: {msg}");
        }
        Ok(device) => gpu_smoke_test(&device),
    }
}

/// Copies, a launch per kernel shape, the argument check and the error paths, on a real GPU.
fn gpu_smoke_test(device: &Device) {
    println!("running on {}", device.name());
    let gpu = device.gpu().expect("a gpu device");
    let GpuBackend::Cuda(cuda) = &gpu.backend else {
        panic!("cuda device is not cuda-backed")
    };

    let n = 10_007; // not a multiple of the block size
    let x: Vec<f32> = (0..n).map(|i| (i as f32 - 5000.0) * 0.37).collect();
    let buf = device.upload(&x).unwrap();
    assert_eq!(gpu.download(&buf).unwrap(), x, "upload/download round trip");
    assert!(gpu
        .download(&device.zeros::<f32>(0).unwrap())
        .unwrap()
        .is_empty());
    assert!(gpu
        .download(&device.upload::<i32>(&[]).unwrap())
        .unwrap()
        .is_empty());
    assert_eq!(
        gpu.download(&device.zeros::<i32>(3).unwrap()).unwrap(),
        [0, 0, 0]
    );

    let xt = Tensor::from_slice(&[n], &x, device).unwrap();
    let relu = relu_forward(&xt).unwrap().to_vec().unwrap();
    let want: Vec<f32> = x.iter().map(|&v| v.max(0.0)).collect();
    assert_eq!(relu, want, "relu is exact");

    let mut y = Tensor::from_slice(&[n], &want, device).unwrap();
    axpy_inplace(&mut y, 0.5, &xt).unwrap();
    let got = y.to_vec().unwrap();
    for (i, (g, (a, b))) in got.iter().zip(want.iter().zip(&x)).enumerate() {
        let w = a + 0.5 * b;
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
            "axpy [{i}]: {g} vs {w}"
        );
    }

    let unknown = gpu.launch(
        "no_such_kernel_f32",
        LaunchCfg::for_elements(1),
        &mut KernelArgs::new(),
    );
    assert!(matches!(unknown, Err(Error::Launch { .. })), "{unknown:?}");
    if cuda.driver_version() >= 12040 {
        // The driver lists parameter sizes (CUDA 12.4+): a launch with a missing argument is
        // refused before the driver reads past the array.
        let mut args = KernelArgs::new();
        args.ptr(gpu.addr(&buf));
        let short = gpu.launch("relu_forward_f32", LaunchCfg::for_elements(n), &mut args);
        match short {
            Err(Error::Launch { msg, .. }) => assert!(msg.contains("arguments"), "{msg}"),
            other => panic!("a launch with 1 of 3 arguments was not refused: {other:?}"),
        }
    }
    device.synchronize().unwrap();
}

/// Not a test on its own: the tests below run it in a child process with the environment they
/// set, and read its one `CHILD-` line.
#[test]
#[ignore = "run as a child process by the tests of this file"]
fn child_selects_a_device() {
    match Device::select(None) {
        Ok(d) => println!("CHILD-OK: {}", d.name()),
        Err(e) => println!("CHILD-ERR: {e}"),
    }
}

struct ChildOutcome {
    line: String,
    stderr: String,
}

fn run_child(envs: &[(&str, &Path)]) -> ChildOutcome {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "--ignored",
        "--exact",
        "child_selects_a_device",
        "--nocapture",
    ])
    .env_remove("LIT_REQUIRE_GPU")
    .env("LIT_DEVICE", "cuda");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("re-running the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("CHILD-")).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one CHILD- line:\n{stdout}\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "the probe panicked:\n{stderr}"
    );
    ChildOutcome {
        line: lines[0].to_string(),
        stderr,
    }
}

#[test]
fn lit_device_cuda_gives_a_one_line_error_without_a_gpu() {
    let child = run_child(&[]);
    if Device::cuda().is_ok() {
        assert!(child.line.starts_with("CHILD-OK: cuda"), "{}", child.line);
    } else {
        assert!(
            child.line.starts_with("CHILD-ERR: device error: "),
            "{}\n{}",
            child.line,
            child.stderr
        );
    }
}

/// A fake `libcuda.so` built from `c_source`, in a fresh folder; `None` after a printed SKIP when
/// there is no C compiler (a failure under `LIT_REQUIRE_CC=1`).
fn fake_driver(tag: &str, c_source: &str) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("lit-fake-cuda-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("fake.c");
    std::fs::write(&src, c_source).unwrap();
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join("libcuda.so"))
        .arg(&src)
        .status();
    match status {
        Ok(s) if s.success() => Some(dir),
        other => {
            lit_engine::testing::skip_unless_required(
                "LIT_REQUIRE_CC",
                &format!("no C compiler to build a fake libcuda ({other:?})"),
            );
            None
        }
    }
}

#[test]
fn a_driver_library_missing_its_symbols_is_an_error_not_a_panic() {
    let Some(dir) = fake_driver("nosym", "int lit_not_the_driver = 1;\n") else {
        return;
    };
    let child = run_child(&[("LD_LIBRARY_PATH", &dir)]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        child
            .line
            .starts_with("CHILD-ERR: device error: the CUDA driver library is unusable:"),
        "{}",
        child.line
    );
    assert!(child.line.contains("cuInit"), "{}", child.line);
}

#[test]
fn a_driver_that_finds_no_gpu_says_no_cuda_device() {
    // cuInit fails with CUDA_ERROR_NO_DEVICE (100), as the real driver does on a GPU-less host.
    let no_device = "int cuInit(unsigned int flags) { return 100; }\n";
    // cuInit succeeds but the device count is zero.
    let zero_devices = "int cuInit(unsigned int flags) { return 0; }\n\
                        int cuDeviceGetCount(int* count) { *count = 0; return 0; }\n";
    for (tag, source) in [("nodev", no_device), ("zero", zero_devices)] {
        let Some(dir) = fake_driver(tag, source) else {
            return;
        };
        let child = run_child(&[("LD_LIBRARY_PATH", &dir)]);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            child.line, "CHILD-ERR: device error: no CUDA device: the NVIDIA driver found no GPU",
            "fake driver {tag}"
        );
    }
}
