//! TAKD (Mirzadeh et al.): distillation through teacher assistants. A `takd` stage with
//! `chain: [a_1, …, a_m]` trains `a_1` by KD from the teacher, `a_2` from `a_1`, …, and finally
//! the student from `a_m`; each link's checkpoint feeds the next. Each link is a KD stage with
//! the stage's settings (default loss `kd_takd`).

use std::path::{Path, PathBuf};

/// One link of a chain: the model trained, and the teacher it learns from.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainLink {
    /// The model trained by this link.
    pub architecture: String,
    /// The architecture of its teacher.
    pub teacher_architecture: String,
    /// The weights of its teacher (the previous link's output).
    pub teacher_weights: PathBuf,
    /// Where an assistant's final weights go (`None` for the last link: the student).
    pub save_to: Option<PathBuf>,
}

/// The links teacher → `chain` → student. Assistant `i` (1-based) is saved as
/// `<dir>/<stem>-ta<i>-<arch>.safetensors`.
pub fn chain_links(
    teacher_arch: &str,
    teacher_weights: &Path,
    chain: &[String],
    student_arch: &str,
    dir: &Path,
    stem: &str,
) -> Vec<ChainLink> {
    let mut links = Vec::new();
    let (mut t_arch, mut t_path) = (teacher_arch.to_string(), teacher_weights.to_path_buf());
    for (i, arch) in chain.iter().enumerate() {
        let arch = arch.trim().to_string();
        let save = dir.join(format!("{stem}-ta{}-{arch}.safetensors", i + 1));
        links.push(ChainLink {
            architecture: arch.clone(),
            teacher_architecture: t_arch,
            teacher_weights: t_path,
            save_to: Some(save.clone()),
        });
        t_arch = arch;
        t_path = save;
    }
    links.push(ChainLink {
        architecture: student_arch.to_string(),
        teacher_architecture: t_arch,
        teacher_weights: t_path,
        save_to: None,
    });
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_link_learns_from_the_previous_links_checkpoint() {
        let links = chain_links(
            "takd-resnet110",
            Path::new("t/r110.safetensors"),
            &["takd-resnet20".into()],
            "takd-resnet8",
            Path::new("out"),
            "run",
        );
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].architecture, "takd-resnet20");
        assert_eq!(links[0].teacher_architecture, "takd-resnet110");
        assert_eq!(links[0].teacher_weights, Path::new("t/r110.safetensors"));
        let ta = Path::new("out/run-ta1-takd-resnet20.safetensors");
        assert_eq!(links[0].save_to.as_deref(), Some(ta));
        assert_eq!(links[1].teacher_weights, ta);
        assert_eq!(links[1].teacher_architecture, "takd-resnet20");
        assert_eq!(
            (links[1].architecture.as_str(), links[1].save_to.is_none()),
            ("takd-resnet8", true)
        );
    }
}
