//! The resumable state of a run, committed as one unit, and the lock on its folder.
//!
//! In `params.save_directory`, for a `save_model_name` of stem `<s>`:
//!
//! ```text
//! <s>-last.state/g<N>/weights.safetensors   the weights (header metadata: lit_engine.generation = N)
//! <s>-last.state/g<N>/optim.safetensors     the SGD momentum buffers (same stamp)
//! <s>-last.state/g<N>/weights.json          the sidecar: config, resume record, metrics history,
//!                                           "generation": N
//! <s>-last.state/COMMIT                     {"generation": N, "files": {name: sha256}}: the commit
//! <s>-last.safetensors, <s>-last.json       copies of the committed weights and sidecar, for users
//! ```
//!
//! A generation's files are written and fsynced in a folder of their own; writing `COMMIT`
//! (atomically) is what makes them the state. A kill or a full disk at any point before leaves
//! the previous generation committed; at any point after, the new one. `--resume` reads only what
//! `COMMIT` names and refuses a missing part, a part whose stamp or checksum differs, naming the
//! file. Older generations are removed after the commit.

use crate::checkpoint;
use crate::device::Device;
use crate::durable::{self, publish_copy, write_atomic, write_new_file};
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::optim::OptimizerCheckpoint;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::checkpoint::{safetensors_generation, GENERATION_KEY};
const WEIGHTS: &str = "weights.safetensors";
const OPTIMIZER: &str = "optim.safetensors";
const SIDECAR: &str = "weights.json";

#[derive(Serialize, Deserialize)]
struct Commit {
    generation: u64,
    /// File name in the generation's folder → SHA-256 of its bytes (hex).
    files: BTreeMap<String, String>,
}

/// What one commit holds.
pub struct Snapshot<'a> {
    /// The weights and buffers.
    pub store: &'a ParamStore,
    /// The optimizer state (SGD momentum buffers, Adam moments).
    pub optimizer: &'a dyn OptimizerCheckpoint,
    /// The sidecar object (config, resume record, history…); `generation` is added.
    pub info: serde_json::Value,
}

/// A committed generation, checked part by part.
pub struct Committed {
    /// Its number.
    pub generation: u64,
    /// The weights file.
    pub weights: PathBuf,
    /// The optimizer state file.
    pub optimizer: PathBuf,
    /// The sidecar.
    pub sidecar: serde_json::Value,
}

/// The run state folder of one `-last` checkpoint path.
pub struct RunState {
    dir: PathBuf,
    published: PathBuf,
    committed: Option<u64>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn state_error(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Checkpoint(format!("{}: {msg}", path.display()))
}

impl RunState {
    /// The state of `last` (`<save_directory>/<stem>-last.safetensors`); reads nothing but
    /// which generation is committed (none when there is no readable `COMMIT`).
    pub fn open(last: &Path) -> Self {
        let stem = last.file_stem().unwrap_or_default().to_string_lossy();
        let dir = last.with_file_name(format!("{stem}.state"));
        let committed = Self::read_commit(&dir).ok().map(|c| c.generation);
        RunState {
            dir,
            published: last.to_path_buf(),
            committed,
        }
    }

    /// The folder holding the generations.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The TensorBoard file of the last run started on this folder (`EVENTS`), if recorded.
    pub fn events_file(&self) -> Option<String> {
        let name = std::fs::read_to_string(self.dir.join("EVENTS")).ok()?;
        let name = name.trim();
        // Only a plain file name is taken: it must not lead out of the log folder.
        (Path::new(name).file_name() == Some(std::ffi::OsStr::new(name))).then(|| name.to_string())
    }

    /// Record the run's TensorBoard file, so that the next fresh run on this folder replaces it
    /// (as it replaces `metrics.jsonl`), also when this run dies before its first commit.
    pub fn record_events_file(&self, name: &str) -> Result<()> {
        write_atomic(&self.dir.join("EVENTS"), name.as_bytes())
    }

    /// The committed generation, if any.
    pub fn committed(&self) -> Option<u64> {
        self.committed
    }

    fn commit_path(dir: &Path) -> PathBuf {
        dir.join("COMMIT")
    }

    fn generation_dir(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("g{generation}"))
    }

    fn read_commit(dir: &Path) -> Result<Commit> {
        let path = Self::commit_path(dir);
        let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&text).map_err(|e| state_error(&path, format!("invalid ({e})")))
    }

    /// Write `snapshot` as the next generation and commit it; returns its number. Nothing is
    /// committed when any write fails (the previous generation stays the state).
    pub fn commit(&mut self, snapshot: Snapshot) -> Result<u64> {
        let generation = self.committed.unwrap_or(0) + 1;
        let gdir = self.generation_dir(generation);
        // A folder of this number can only be a dead run's unfinished one.
        let _ = std::fs::remove_dir_all(&gdir);
        std::fs::create_dir_all(&gdir).map_err(|e| Error::io(&gdir, e))?;

        let stamp = [(GENERATION_KEY, generation.to_string())];
        let weights = checkpoint::encode(snapshot.store, &gdir.join(WEIGHTS), &stamp)?;
        let optimizer = encode_optimizer(snapshot.optimizer, &gdir.join(OPTIMIZER), &stamp)?;
        let mut info = snapshot.info;
        info["generation"] = generation.into();
        let sidecar = checkpoint::sidecar_json(WEIGHTS, &weights, info)?;

        let mut files = BTreeMap::new();
        for (name, bytes) in [
            (WEIGHTS, &weights.bytes),
            (OPTIMIZER, &optimizer),
            (SIDECAR, &sidecar),
        ] {
            write_new_file(&gdir.join(name), bytes)?;
            files.insert(name.to_string(), sha256_hex(bytes));
        }
        durable::sync_folder(&gdir);
        durable::sync_folder(&self.dir);
        let commit = serde_json::to_vec_pretty(&Commit { generation, files })
            .map_err(|e| Error::Encode(format!("run state commit: {e}")))?;
        write_atomic(&Self::commit_path(&self.dir), &commit)?;
        self.committed = Some(generation);

        self.remove_other_generations();
        self.publish(generation)?;
        Ok(generation)
    }

    /// Copy the committed weights and sidecar to `<stem>-last.safetensors` / `.json`, where
    /// users and PyTorch find them (the state itself stays in the generation folder).
    pub fn publish(&self, generation: u64) -> Result<()> {
        let gdir = self.generation_dir(generation);
        publish_copy(&gdir.join(WEIGHTS), &self.published)?;
        publish_copy(
            &gdir.join(SIDECAR),
            &checkpoint::sidecar_path(&self.published),
        )
    }

    /// Remove every generation folder but the committed one (unfinished ones of dead runs,
    /// superseded ones), and temp files of dead writers.
    pub fn remove_other_generations(&self) {
        if self.committed.is_none() && Self::commit_path(&self.dir).exists() {
            // An unreadable commit: keep everything for the user to look at.
            return;
        }
        let keep = self.committed.map(|g| format!("g{g}"));
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let generation = name
                    .strip_prefix('g')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                if generation && Some(&name) != keep.as_ref() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        durable::remove_stray_temp_files(&self.dir, durable::Stray::AllOthers);
    }

    /// The committed generation with every part checked: present, its checksum the one
    /// committed, its generation stamp the committed number.
    pub fn load(&self) -> Result<Committed> {
        let commit_path = Self::commit_path(&self.dir);
        let commit = match Self::read_commit(&self.dir) {
            Ok(c) => c,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(state_error(
                    &commit_path,
                    "not found: there is no committed run state to resume (a run writes one \
                     after its first `save_every` epochs; a state written by lit-engine before \
                     0.2 cannot be resumed: load its -last checkpoint as \
                     models.training_checkpoint instead)",
                ))
            }
            Err(e) => return Err(e),
        };
        let gdir = self.generation_dir(commit.generation);
        for name in [WEIGHTS, OPTIMIZER, SIDECAR] {
            if !commit.files.contains_key(name) {
                return Err(state_error(&commit_path, format!("does not list `{name}`")));
            }
        }
        let mut contents = BTreeMap::new();
        for (name, sum) in &commit.files {
            let path = gdir.join(name);
            let bytes = std::fs::read(&path).map_err(|e| {
                state_error(
                    &path,
                    format!(
                        "part of committed generation {} is unreadable ({e})",
                        commit.generation
                    ),
                )
            })?;
            if &sha256_hex(&bytes) != sum {
                return Err(state_error(
                    &path,
                    format!(
                        "its contents differ from what generation {} committed (modified or \
                         corrupted); refusing to resume from a mixed state",
                        commit.generation
                    ),
                ));
            }
            contents.insert(name.as_str(), bytes);
        }
        for name in [WEIGHTS, OPTIMIZER] {
            let found = safetensors_generation(&contents[name]);
            if found != Some(commit.generation) {
                return Err(stamp_error(&gdir.join(name), found, commit.generation));
            }
        }
        let sidecar_path = gdir.join(SIDECAR);
        let sidecar: serde_json::Value = serde_json::from_slice(&contents[SIDECAR])
            .map_err(|e| state_error(&sidecar_path, format!("invalid JSON ({e})")))?;
        let found = sidecar["generation"].as_u64();
        if found != Some(commit.generation) {
            return Err(stamp_error(&sidecar_path, found, commit.generation));
        }
        Ok(Committed {
            generation: commit.generation,
            weights: gdir.join(WEIGHTS),
            optimizer: gdir.join(OPTIMIZER),
            sidecar,
        })
    }
}

fn stamp_error(path: &Path, found: Option<u64>, want: u64) -> Error {
    let found = found.map_or("no generation stamp".to_string(), |g| {
        format!("generation {g}")
    });
    state_error(
        path,
        format!("has {found}, the commit names generation {want}"),
    )
}

fn encode_optimizer(
    opt: &dyn OptimizerCheckpoint,
    what: &Path,
    metadata: &[(&str, String)],
) -> Result<Vec<u8>> {
    let entries: Vec<(String, Vec<usize>, Vec<u8>)> = opt
        .state_entries()?
        .into_iter()
        .map(|(n, shape, v)| (n, shape, bytemuck::cast_slice(&v).to_vec()))
        .collect();
    let views = entries
        .iter()
        .map(|(n, shape, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| state_error(what, format!("`{n}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let header = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    safetensors::serialize(views, &Some(header)).map_err(|e| state_error(what, e))
}

/// Load the optimizer state of `path` into `opt` (SGD: momentum buffers; Adam: moments and
/// steps): every entry must belong to a parameter of `store` and have its shape.
pub fn load_optimizer(
    path: &Path,
    opt: &mut dyn OptimizerCheckpoint,
    store: &ParamStore,
    device: &Device,
) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| state_error(path, format!("not a valid safetensors file ({e:?})")))?;
    let mut entries = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(state_error(
                path,
                format!("`{name}` is {:?}, expected F32", view.dtype()),
            ));
        }
        let v: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        entries.push((name, view.shape().to_vec(), v));
    }
    opt.restore(entries, store, device).map_err(|e| match e {
        Error::Checkpoint(msg) => state_error(path, msg),
        other => other,
    })
}

/// An exclusive lock on a run's output folder, held while the run lives: a second run on the
/// same folder is refused, and the lock of a dead run (the OS drops it with the process) is
/// taken over. The file holds the owner's process id for the message.
pub struct RunLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl RunLock {
    /// Take the lock on `dir` (created if missing); an error when a live run holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Config(format!(
                "params.save_directory: {} exists and is not a folder",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Config(format!(
                "params.save_directory: cannot create {} ({e})",
                dir.display()
            ))
        })?;
        let path = dir.join(".lit-engine.lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                Error::Config(format!(
                    "params.save_directory: {} is not writable ({e})",
                    dir.display()
                ))
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let owner = std::fs::read_to_string(&path).unwrap_or_default();
                let owner = owner.trim();
                return Err(Error::Config(format!(
                    "params.save_directory: {} is in use by another lit-engine run{}; wait for \
                     it to finish or choose another save_directory",
                    dir.display(),
                    if owner.is_empty() {
                        String::new()
                    } else {
                        format!(" (process {owner})")
                    }
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let previous = std::fs::read_to_string(&path).unwrap_or_default();
        let previous = previous.trim();
        if !previous.is_empty() && previous != std::process::id().to_string() {
            eprintln!(
                "note: {} was left by a run that is no longer alive (process {previous}); taking it over",
                path.display()
            );
        }
        file.set_len(0).map_err(|e| Error::io(&path, e))?;
        use std::io::Write;
        (&file)
            .write_all(std::process::id().to_string().as_bytes())
            .map_err(|e| Error::io(&path, e))?;
        Ok(RunLock { _file: file, path })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // An empty lock file means "released cleanly"; the OS lock goes with the handle.
        let _ = std::fs::write(&self.path, b"");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::EntryKind;
    use crate::optim::{Adam, Sgd};
    use crate::rng::Rng;
    use crate::tensor::Tensor;

    fn tmp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lit-runstate-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn mlp_store(seed: u64) -> ParamStore {
        let mut store = ParamStore::new();
        crate::models::build(
            "mlp-8-4-3",
            3,
            &mut store,
            &Device::Cpu,
            &mut Rng::new(seed),
        )
        .unwrap();
        store
    }

    fn commit(state: &mut RunState, store: &ParamStore, epoch: u64) -> u64 {
        let opt = Sgd::new(0.1, 0.9, 0.0, false).unwrap();
        state
            .commit(Snapshot {
                store,
                optimizer: &opt,
                info: serde_json::json!({"epoch": epoch}),
            })
            .unwrap()
    }

    #[test]
    fn adam_state_round_trips_through_a_commit() {
        let d = tmp_dir("adam");
        let mut state = RunState::open(&d.join("m-last.safetensors"));
        let mut store = mlp_store(2);
        let names: Vec<String> = store
            .iter()
            .filter(|(_, p)| p.kind != EntryKind::Buffer)
            .map(|(n, _)| n.to_string())
            .collect();
        let mut opt = Adam::lma(1e-3).unwrap();
        for step in 0..2 {
            store.zero_grads();
            for (i, n) in names.iter().enumerate() {
                let shape = store.get(n).unwrap().value.shape().to_vec();
                let len = shape.iter().product();
                let g = Rng::new(7 + step * 31 + i as u64).normal_vec(len, 1.0);
                store
                    .accumulate_grad(n, Tensor::from_vec(&shape, g, &Device::Cpu).unwrap())
                    .unwrap();
            }
            opt.step(&mut store).unwrap();
        }
        state
            .commit(Snapshot {
                store: &store,
                optimizer: &opt,
                info: serde_json::json!({"epoch": 1}),
            })
            .unwrap();
        let loaded = RunState::open(&d.join("m-last.safetensors"))
            .load()
            .unwrap();
        let mut back = Adam::lma(1e-3).unwrap();
        load_optimizer(&loaded.optimizer, &mut back, &store, &Device::Cpu).unwrap();
        assert_eq!(back.states().count(), names.len());
        for n in &names {
            let (a, b) = (opt.state(n).unwrap(), back.state(n).unwrap());
            assert_eq!((a.step, b.step), (2, 2), "{n}");
            assert_eq!(a.exp_avg.to_vec().unwrap(), b.exp_avg.to_vec().unwrap());
            assert_eq!(
                a.exp_avg_sq.to_vec().unwrap(),
                b.exp_avg_sq.to_vec().unwrap()
            );
        }
        // SGD momentum buffers do not pass for Adam state.
        let mut sgd = Sgd::new(0.1, 0.9, 0.0, false).unwrap();
        let err = load_optimizer(&loaded.optimizer, &mut sgd, &store, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("matches no parameter"), "{err}");
    }

    #[test]
    fn commits_count_up_and_keep_one_generation() {
        let d = tmp_dir("count");
        let mut state = RunState::open(&d.join("m-last.safetensors"));
        assert_eq!(state.committed(), None);
        assert!(state.load().is_err());
        let store = mlp_store(1);
        assert_eq!(commit(&mut state, &store, 1), 1);
        assert_eq!(commit(&mut state, &store, 2), 2);
        let loaded = RunState::open(&d.join("m-last.safetensors"))
            .load()
            .unwrap();
        assert_eq!(loaded.generation, 2);
        assert_eq!(loaded.sidecar["epoch"], 2);
        let gens: Vec<_> = std::fs::read_dir(state.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('g'))
            .collect();
        assert_eq!(gens, vec!["g2"]);
        // The published copy loads like any checkpoint.
        let mut back = mlp_store(2);
        checkpoint::load_into(&d.join("m-last.safetensors"), &mut back).unwrap();
        for ((_, a), (_, b)) in store.iter().zip(back.iter()) {
            assert_eq!(a.value.to_vec().unwrap(), b.value.to_vec().unwrap());
        }
    }

    #[test]
    fn a_published_pair_of_two_generations_is_refused() {
        let d = tmp_dir("pair");
        let last = d.join("m-last.safetensors");
        let mut state = RunState::open(&last);
        let store = mlp_store(1);
        commit(&mut state, &store, 1);
        let side = checkpoint::sidecar_path(&last);
        let first_sidecar = std::fs::read(&side).unwrap();
        commit(&mut state, &store, 2);
        let mut back = mlp_store(2);
        checkpoint::load_into(&last, &mut back).unwrap();
        std::fs::write(&side, first_sidecar).unwrap();
        let msg = checkpoint::load_into(&last, &mut back)
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.contains("m-last.json is of run-state generation 1")
                && msg.contains("of generation 2"),
            "{msg}"
        );
    }

    #[test]
    fn a_part_from_another_generation_or_modified_is_refused_by_name() {
        let d = tmp_dir("mixed");
        let mut state = RunState::open(&d.join("m-last.safetensors"));
        let store = mlp_store(1);
        commit(&mut state, &store, 1);
        let g1 = state.generation_dir(1);
        let old_weights = std::fs::read(g1.join(WEIGHTS)).unwrap();
        commit(&mut state, &store, 2);
        let g2 = state.generation_dir(2);

        // A weights file of generation 1 in generation 2's place.
        std::fs::write(g2.join(WEIGHTS), &old_weights).unwrap();
        let msg = state.load().err().unwrap().to_string();
        assert!(msg.contains("g2/weights.safetensors"), "{msg}");

        // Even with a matching checksum, a wrong stamp is refused.
        let mut commit: Commit = RunState::read_commit(state.dir()).unwrap();
        commit
            .files
            .insert(WEIGHTS.into(), sha256_hex(&old_weights));
        std::fs::write(
            RunState::commit_path(state.dir()),
            serde_json::to_vec(&commit).unwrap(),
        )
        .unwrap();
        let msg = state.load().err().unwrap().to_string();
        assert!(
            msg.contains("weights.safetensors") && msg.contains("generation 1"),
            "{msg}"
        );

        // A missing part is named.
        std::fs::remove_file(g2.join(OPTIMIZER)).unwrap();
        let msg = state.load().err().unwrap().to_string();
        assert!(msg.contains("optim.safetensors"), "{msg}");
    }

    #[test]
    fn a_second_lock_on_a_folder_is_refused_and_released_with_the_first() {
        let d = tmp_dir("lock");
        let first = RunLock::acquire(&d).unwrap();
        let msg = RunLock::acquire(&d).err().unwrap().to_string();
        assert!(msg.contains("in use by another lit-engine run"), "{msg}");
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        drop(first);
        RunLock::acquire(&d).unwrap();
    }
}
