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
