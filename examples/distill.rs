//! Distil a teacher MLP (784-128-10) into a student 8× smaller (784-16-10) with knowledge
//! distillation, from code: the experiment is a config (here a YAML string, the same format as
//! `configs/*.yml`) handed to the library's `Trainer`, which trains the teacher, then the student
//! from it, and returns a summary. All files go to a temporary folder, removed at the end. Fails
//! (non-zero exit) unless the student ends well above chance. `LIT_DEVICE` picks the device
//! (default cpu).
//!
//! `cargo run --release --example distill`

use lit_engine::train::report::Role;
use lit_engine::train::Trainer;
use lit_engine::{Device, Result};
use std::path::Path;

fn main() -> Result<()> {
    let device = match std::env::var("LIT_DEVICE") {
        Ok(_) => Device::select(None)?,
        Err(_) => Device::cpu(),
    };
    let work = std::env::temp_dir().join(format!("lit-engine-distill-{}", std::process::id()));
    let yaml = format!(
        r#"
models:
  dataset: mnist
  base_architecture: mlp-784-128-10
  base_model_path: {teacher:?}
  training_architecture: mlp-784-16-10
sequence:
  teacher: {{epochs: 2, lr: 0.1}}
  kd: {{epochs: 2, lr: 0.1, kd_variant: qd, temperature: 4, weight: 0.7}}
params:
  save_directory: {work:?}
  save_model_name: student.safetensors
hyperparameters: {{batch_size: 64, seed: 0, max_train_examples: 4000, max_test_examples: 1000}}
"#,
        teacher = work.join("teacher.safetensors").display().to_string(),
        work = work.display().to_string(),
    );
    let summary = Trainer::parse(&yaml, "examples/distill.rs")?
        .device(device)
        .data_root(Path::new(env!("CARGO_MANIFEST_DIR")).join("data"))
        .run();
    let _ = std::fs::remove_dir_all(&work);
    let summary = summary?;

    print!("{}", summary.report.render());
    let best = |role: Role| {
        let row = summary.report.rows.iter().rev().find(|r| r.role == role);
        row.and_then(|r| r.best_accuracy).unwrap_or(0.0)
    };
    let (teacher, student) = (best(Role::Teacher), best(Role::Student));
    println!(
        "teacher {:.1}%, student {:.1}%",
        100.0 * teacher,
        100.0 * student
    );
    // Chance is 10 %; both reach about 84 % here. Under 70 % means a broken engine or method.
    assert!(
        teacher > 0.7 && student > 0.7,
        "accuracy at chance level: something is broken"
    );
    Ok(())
}
