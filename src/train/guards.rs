//! What a run refuses before it writes anything: outputs over its inputs, and non-finite
//! parameters (checked before every save).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::train::plan::PlanStep;
use std::path::{Path, PathBuf};

/// Refuse outputs that would destroy an input, before any work: `save_model_name` must be a
/// plain file name, and no checkpoint of the run may be the teacher it reads.
pub fn guard_outputs(cfg: &Config, steps: &[PlanStep]) -> Result<()> {
    let name = &cfg.params.save_model_name;
    let plain = Path::new(name).file_name() == Some(std::ffi::OsStr::new(name.as_str()))
        && !name.contains(['/', '\\']);
    if !plain {
        return Err(Error::Config(format!(
            "params.save_model_name: `{name}` must be a plain file name (the folder is \
             params.save_directory)"
        )));
    }
    let outputs = [
        cfg.params.checkpoint_path(),
        cfg.params.checkpoint_with_suffix("-last"),
        cfg.params.checkpoint_with_suffix("-packed"),
    ];
    for (arch, teacher) in steps.iter().filter_map(|s| s.teacher.as_ref()) {
        let teacher = weights_file(teacher);
        if let Some(out) = outputs.iter().find(|o| same_file(o, &teacher)) {
            return Err(Error::Config(format!(
                "params.save_model_name: the run would write {} over the weights of its \
                 teacher {arch} ({}); choose another save_model_name or save_directory",
                out.display(),
                teacher.display()
            )));
        }
    }
    Ok(())
}

/// The safetensors file a weights path means (`.pth` paths name the file beside them).
pub fn weights_file(p: &Path) -> PathBuf {
    if p.extension().is_some_and(|e| e == "pth" || e == "pt") {
        p.with_extension("safetensors")
    } else {
        p.to_path_buf()
    }
}

/// Whether two paths name the same file, whether or not it exists yet.
fn same_file(a: &Path, b: &Path) -> bool {
    let absolute = |p: &Path| -> PathBuf {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        dir.join(p.file_name().unwrap_or_default())
    };
    absolute(a) == absolute(b)
}

/// The first parameter holding a NaN or an infinity, if any.
pub fn check_finite(store: &ParamStore) -> std::result::Result<(), String> {
    for (name, p) in store.iter() {
        match p.value.to_vec() {
            Ok(v) if v.iter().all(|x| x.is_finite()) => {}
            Ok(_) => return Err(name.to_string()),
            Err(e) => return Err(format!("{name} (unreadable: {e})")),
        }
    }
    Ok(())
}
