//! The campaign file: base configs, a grid over config keys and a list of seeds, expanded into
//! trials (base × grid point × seed), each a validated [`Config`] with its own output folder.
//!
//! ```yaml
//! name: mnist-lr                 # optional (default: the file's stem)
//! output: ../runs/sweep_example  # relative to this file
//! bases:
//!   - {name: scratch, config: quickstart.yml}     # relative to this file
//!   - name: kd
//!     inline: {models: {...}, sequence: {...}}
//!     reference: {best_test_acc: 97.5}            # optional, per base (percent)
//! grid:
//!   sequence.train.lr: [0.1, 0.05]
//! seeds: [0, 1, 2]
//! reference: {final_test_acc: 97.0}               # optional, every base (percent)
//! trial_budget: {time: 2m}                        # optional: equal compute instead of epochs
//! ```

use super::duration::parse_duration;
use crate::config::{closest, key_paths, Config, ConfigSource};
use crate::error::{Error, Result};
use crate::limits;
use serde::Deserialize;
use serde_norway::{Mapping, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The metrics a `reference` may name (percent, like the report).
pub const REFERENCE_METRICS: [&str; 2] = ["final_test_acc", "best_test_acc"];

/// The campaign file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignFile {
    #[serde(default)]
    name: Option<String>,
    output: PathBuf,
    bases: Vec<BaseEntry>,
    #[serde(default)]
    grid: Mapping,
    seeds: Vec<u64>,
    #[serde(default)]
    reference: BTreeMap<String, f64>,
    #[serde(default)]
    trial_budget: Option<BudgetEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BaseEntry {
    name: String,
    #[serde(default)]
    config: Option<PathBuf>,
    #[serde(default)]
    inline: Option<Value>,
    #[serde(default)]
    reference: BTreeMap<String, f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetEntry {
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    flops: Option<f64>,
}

/// What every trial may spend instead of (at most) its configured epochs: the equal-compute
/// comparison. A trial that reaches its budget stops with its state saved and counts as done.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TrialBudget {
    /// Wall time of the trial, over all sessions.
    pub time: Option<Duration>,
    /// Forward FLOPs (2 × the multiply-adds `ops::flops` counts: convolutions, linear layers and
    /// GEMMs of every forward pass on the trial's thread, training and evaluation, student and
    /// teacher; backward passes are not counted), over all sessions.
    pub flops: Option<f64>,
}

/// One base config of a campaign.
#[derive(Clone, Debug)]
pub struct Base {
    /// Its name in trial names and the report (`nokd`, `takd`, …).
    pub name: String,
    /// The config as YAML.
    pub yaml: Value,
    /// The file it came from (`None`: written inline in the campaign).
    pub file: Option<PathBuf>,
    /// Reference numbers for this base (merged over the campaign's).
    pub reference: BTreeMap<String, f64>,
}

/// A grid key and its values.
#[derive(Clone, Debug)]
pub struct GridKey {
    /// The config key path, e.g. `sequence.kd.temperature`.
    pub key: String,
    /// Its values, in the campaign's order.
    pub values: Vec<Value>,
}

/// A loaded, checked campaign.
#[derive(Clone, Debug)]
pub struct Campaign {
    /// Its name.
    pub name: String,
    /// The campaign file.
    pub file: PathBuf,
    /// Where the trials' folders and the campaign state go.
    pub output: PathBuf,
    /// The base configs.
    pub bases: Vec<Base>,
    /// The grid, key by key (the trials are its cartesian product).
    pub grid: Vec<GridKey>,
    /// The seeds (`hyperparameters.seed` of each trial).
    pub seeds: Vec<u64>,
    /// What each trial may spend.
    pub trial_budget: TrialBudget,
    text: String,
}

/// One trial: a base, a grid point and a seed, with its config.
#[derive(Clone, Debug)]
pub struct Trial {
    /// Its folder's name under the campaign output, e.g. `kd_temperature=4_seed20`.
    pub name: String,
    /// The base's name.
    pub base: String,
    /// The grid point: (key, value as written in the name).
    pub point: Vec<(String, String)>,
    /// The seed.
    pub seed: u64,
    /// Its folder (checkpoints, run state, `metrics.jsonl`, `config.yml`).
    pub dir: PathBuf,
    /// Its config (save directory = `dir`, seed set, grid values applied).
    pub config: Config,
    /// The config as YAML text, written to `dir/config.yml` when it runs.
    pub config_text: String,
}

impl Trial {
    /// The grid point as `key=value` pairs with short keys (`lr=0.1 temperature=4`).
    pub fn point_label(&self) -> String {
        self.point
            .iter()
            .map(|(k, v)| format!("{}={v}", short_key(k)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The last component of a key path.
pub fn short_key(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

impl Campaign {
    /// Read and check a campaign file: its keys, bases, grid keys (each a config key; a typo gets
    /// the file, line and nearest key) and every trial's config.
    pub fn load(path: &Path) -> Result<Campaign> {
        let bytes = limits::read_file_at_most(path, limits::MAX_CONFIG_BYTES, "campaign file")?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::data(path, "the campaign file is not UTF-8"))?;
        let origin = path.display().to_string();
        limits::check_yaml(&text, &origin)?;
        let file: CampaignFile = serde_norway::from_str(&text).map_err(|e| {
            Error::Config(crate::config::diagnostics::describe_yaml_error(&e, &origin))
        })?;
        let campaign = Campaign::build(path, text, file)?;
        campaign.trials()?;
        Ok(campaign)
    }

    fn build(path: &Path, text: String, file: CampaignFile) -> Result<Campaign> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = file.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "campaign".into())
        });
        let mut c = Campaign {
            name,
            file: path.to_path_buf(),
            output: clean_path(&dir.join(&file.output)),
            bases: Vec::new(),
            grid: Vec::new(),
            seeds: file.seeds,
            trial_budget: TrialBudget::default(),
            text,
        };
        c.check_sizes(file.bases.len(), &file.grid)?;
        check_reference(&c, "reference", &file.reference)?;
        c.check_seeds_unique()?;
        for (i, entry) in file.bases.into_iter().enumerate() {
            let base = c.read_base(&dir, i, entry, &file.reference)?;
            c.bases.push(base);
        }
        for (k, v) in file.grid {
            c.grid.push(c.grid_key(k, v)?);
        }
        if let Some(b) = file.trial_budget {
            c.trial_budget = TrialBudget {
                time: b
                    .time
                    .map(|t| parse_duration(&t).map_err(|m| c.error_at("trial_budget.time", &m)))
                    .transpose()?,
                flops: b.flops,
            };
            if let Some(f) = c
                .trial_budget
                .flops
                .filter(|f| !(f.is_finite() && *f > 0.0))
            {
                return Err(c.error_at("trial_budget.flops", &format!("must be > 0 (got {f})")));
            }
        }
        Ok(c)
    }

    /// `file line L: key: message` for a top-level key of the campaign file.
    fn error_at(&self, key: &str, msg: &str) -> Error {
        let file = self.file.display();
        match crate::config::locate_key(&self.text, key) {
            Some(line) => Error::Config(format!("{file} line {line}: {key}: {msg}")),
            None => Error::Config(format!("{file}: {key}: {msg}")),
        }
    }

    /// `file line L: grid key `k`: message`, at the line where the grid key is written.
    fn grid_error(&self, key: &str, msg: &str) -> Error {
        let file = self.file.display();
        let after = crate::config::locate_key(&self.text, "grid").unwrap_or(1);
        let line = self
            .text
            .lines()
            .enumerate()
            .skip(after)
            .find(|(_, l)| {
                let l = l.trim_start().trim_start_matches(['"', '\'']);
                l.strip_prefix(key)
                    .is_some_and(|r| r.trim_start_matches(['"', '\'', ' ']).starts_with(':'))
            })
            .map(|(i, _)| i + 1);
        match line {
            Some(line) => Error::Config(format!("{file} line {line}: grid key `{key}`: {msg}")),
            None => Error::Config(format!("{file}: grid key `{key}`: {msg}")),
        }
    }

    fn check_sizes(&self, bases: usize, grid: &Mapping) -> Result<()> {
        let at_most = |key: &str, n: usize, limit: usize| {
            limits::at_most(key, n, limit).map_err(|e| self.error_at(key, &e.to_string()))
        };
        at_most("bases", bases, limits::MAX_CAMPAIGN_BASES)?;
        at_most("grid", grid.len(), limits::MAX_GRID_KEYS)?;
        at_most("seeds", self.seeds.len(), limits::MAX_CAMPAIGN_SEEDS)?;
        if bases == 0 {
            return Err(self.error_at("bases", "needs at least one base config"));
        }
        if self.seeds.is_empty() {
            return Err(self.error_at("seeds", "needs at least one seed"));
        }
        let mut trials = bases.saturating_mul(self.seeds.len());
        for (k, v) in grid {
            let n = v.as_sequence().map_or(0, Vec::len);
            let key = k.as_str().unwrap_or("?");
            if n > limits::MAX_GRID_VALUES {
                return Err(self.grid_error(
                    key,
                    &format!(
                        "has {n} values, above the limit of {}",
                        limits::MAX_GRID_VALUES
                    ),
                ));
            }
            trials = trials.saturating_mul(n.max(1));
        }
        at_most(
            "trials (bases × grid × seeds)",
            trials,
            limits::MAX_CAMPAIGN_TRIALS,
        )
        .map(|_| ())
        .map_err(|_| {
            self.error_at(
                "grid",
                &format!(
                    "the campaign has {trials} trials, above the limit of {}",
                    limits::MAX_CAMPAIGN_TRIALS
                ),
            )
        })
    }

    fn read_base(
        &self,
        dir: &Path,
        i: usize,
        entry: BaseEntry,
        common: &BTreeMap<String, f64>,
    ) -> Result<Base> {
        let at = format!("bases[{i}]");
        if !is_plain_name(&entry.name) {
            return Err(self.error_at(
                "bases",
                &format!(
                    "{at}: name `{}` must be letters, digits, `-` or `.` (it names folders)",
                    entry.name
                ),
            ));
        }
        if self.bases.iter().any(|b| b.name == entry.name) {
            return Err(self.error_at(
                "bases",
                &format!("{at}: name `{}` is used twice", entry.name),
            ));
        }
        check_reference(self, "bases", &entry.reference)?;
        let mut reference = common.clone();
        reference.extend(entry.reference);
        let (yaml, file) = match (entry.config, entry.inline) {
            (Some(p), None) => {
                let p = dir.join(p);
                // Parsed as a config first: a bad base gets the config system's own diagnosis.
                let cfg = Config::load(&p)?;
                let text = &cfg
                    .source
                    .as_ref()
                    .map(|s| s.text.clone())
                    .unwrap_or_default();
                let yaml: Value = serde_norway::from_str(text)
                    .map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
                (yaml, Some(p))
            }
            (None, Some(v)) => {
                let text = serde_norway::to_string(&v)
                    .map_err(|e| Error::Encode(format!("{at}.inline: {e}")))?;
                // Values are checked with each trial's config; here the keys, located in the
                // campaign file (the parser's line numbers are of the re-serialized text).
                if let Err(e) = Config::parse(&text, "inline") {
                    let m = match &e {
                        Error::Config(m) => m.clone(),
                        other => other.to_string(),
                    };
                    let m = m.split_once(": ").map_or(m.as_str(), |(_, rest)| rest);
                    let line = m
                        .split('`')
                        .nth(1)
                        .and_then(|key| self.inline_key_line(&entry.name, key))
                        .map_or(String::new(), |l| format!(" line {l}"));
                    return Err(Error::Config(format!(
                        "{}{line}: base `{}` (inline): {m}",
                        self.file.display(),
                        entry.name
                    )));
                }
                (v, None)
            }
            _ => {
                return Err(self.error_at(
                    "bases",
                    &format!(
                        "{at} (`{}`): give exactly one of `config` (a file) or `inline`",
                        entry.name
                    ),
                ))
            }
        };
        Ok(Base {
            name: entry.name,
            yaml,
            file,
            reference,
        })
    }

    fn grid_key(&self, key: Value, values: Value) -> Result<GridKey> {
        let Some(key) = key.as_str().map(str::to_string) else {
            return Err(self.error_at(
                "grid",
                "every grid key must be a config key path (a string)",
            ));
        };
        let paths = key_paths();
        if !paths.contains(&key) {
            let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
            let hint = match closest(&key, &refs) {
                Some(best) => format!(" (did you mean `{best}`?)"),
                None => String::new(),
            };
            return Err(self.grid_error(&key, &format!("is not a config key{hint}")));
        }
        if key.starts_with("params.") || key == "hyperparameters.seed" {
            return Err(self.grid_error(
                &key,
                "is set by the campaign (each trial's folder and `seeds`), not by the grid",
            ));
        }
        if self.grid.iter().any(|g| g.key == key) {
            return Err(self.grid_error(&key, "is given twice"));
        }
        let Value::Sequence(values) = values else {
            return Err(self.grid_error(&key, "needs a list of values, e.g. `[0.1, 0.05]`"));
        };
        if values.is_empty() {
            return Err(self.grid_error(&key, "has no values"));
        }
        if let Some(stage) = stage_of(&key) {
            if let Some(b) = self
                .bases
                .iter()
                .find(|b| lookup(&b.yaml, &["sequence", stage]).is_none())
            {
                return Err(self.grid_error(
                    &key,
                    &format!(
                        "base `{}` has no `sequence.{stage}` stage to set it in",
                        b.name
                    ),
                ));
            }
        }
        Ok(GridKey { key, values })
    }

    /// Every trial, in campaign order (base, then grid point, then seed), with its config
    /// checked; a value the config refuses is reported at its grid key's line.
    pub fn trials(&self) -> Result<Vec<Trial>> {
        let mut points: Vec<Vec<(String, Value)>> = vec![Vec::new()];
        for g in &self.grid {
            points = points
                .into_iter()
                .flat_map(|p| {
                    g.values.iter().map(move |v| {
                        let mut p = p.clone();
                        p.push((g.key.clone(), v.clone()));
                        p
                    })
                })
                .collect();
        }
        let mut out: Vec<Trial> = Vec::new();
        for base in &self.bases {
            for point in &points {
                for &seed in &self.seeds {
                    let trial = self.trial(base, point, seed)?;
                    if out.iter().any(|t| t.name == trial.name) {
                        return Err(self.error_at(
                            "grid",
                            &format!("two trials would share the folder `{}`", trial.name),
                        ));
                    }
                    out.push(trial);
                }
            }
        }
        Ok(out)
    }

    fn trial(&self, base: &Base, point: &[(String, Value)], seed: u64) -> Result<Trial> {
        let labels: Vec<(String, String)> = point
            .iter()
            .map(|(k, v)| (k.clone(), value_label(v)))
            .collect();
        let mut name = base.name.clone();
        for (k, v) in &labels {
            let shared = self
                .grid
                .iter()
                .filter(|g| short_key(&g.key) == short_key(k))
                .count();
            let k = if shared > 1 { k.as_str() } else { short_key(k) };
            name += &format!("_{k}={v}");
        }
        name += &format!("_seed{seed}");
        let dir = self.output.join(&name);
        let mut yaml = base.yaml.clone();
        for (k, v) in point {
            set_key(&mut yaml, k, v.clone());
        }
        set_key(&mut yaml, "hyperparameters.seed", Value::from(seed));
        set_key(&mut yaml, "params.save_directory", path_value(&dir));
        if let Value::Mapping(m) = &mut yaml {
            if let Some(Value::Mapping(p)) = m.get_mut("params") {
                p.remove("logdir");
            }
        }
        // A teacher trained inside the trial is the trial's own: parallel trials must not
        // write one file.
        if lookup(&yaml, &["sequence", "teacher"]).is_some() {
            set_key(
                &mut yaml,
                "models.base_model_path",
                path_value(&dir.join("teacher.safetensors")),
            );
        }
        let config_text = serde_norway::to_string(&yaml)
            .map_err(|e| Error::Encode(format!("trial {name}: {e}")))?;
        let origin = format!("trial {name} of {}", self.file.display());
        let mut config = Config::parse(&config_text, &origin)?;
        config
            .validate()
            .and_then(|()| crate::train::trainer::check_runnable(&config).map(|_| ()))
            .map_err(|e| self.locate_trial_error(e, base, point))?;
        config.source = Some(ConfigSource {
            path: dir.join("config.yml"),
            text: config_text.clone(),
        });
        Ok(Trial {
            name,
            base: base.name.clone(),
            point: labels,
            seed,
            dir,
            config,
            config_text,
        })
    }

    /// A trial config's validation error, at the grid key's line when a grid key is at fault,
    /// else at the base file's line.
    fn locate_trial_error(&self, e: Error, base: &Base, point: &[(String, Value)]) -> Error {
        let Error::Config(m) = &e else { return e };
        let key = m
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_end_matches(':');
        if let Some((k, v)) = point.iter().find(|(k, _)| k == key) {
            return self.grid_error(
                k,
                &format!("value {} in base `{}`: {m}", value_label(v), base.name),
            );
        }
        match &base.file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => match Config::parse(&text, &path.display().to_string()) {
                    Ok(mut cfg) => {
                        cfg.source = Some(ConfigSource {
                            path: path.clone(),
                            text,
                        });
                        cfg.locate(e)
                    }
                    Err(_) => e,
                },
                Err(_) => e,
            },
            None => {
                let line = self
                    .inline_key_line(&base.name, key)
                    .map_or(String::new(), |l| format!(" line {l}"));
                Error::Config(format!(
                    "{}{line}: base `{}` (inline): {m}",
                    self.file.display(),
                    base.name
                ))
            }
        }
    }

    /// The line of `key`'s last component inside the inline base `name`: the first `<last>:`
    /// after the base's `name: <name>` and before the next base.
    fn inline_key_line(&self, name: &str, key: &str) -> Option<usize> {
        let last = short_key(key).split('[').next()?;
        let lines: Vec<&str> = self.text.lines().collect();
        let start = lines.iter().position(|l| {
            l.split(['{', ',', '-'])
                .any(|part| part.trim().strip_prefix("name:").map(str::trim) == Some(name))
        })?;
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        lines[start..]
            .iter()
            .enumerate()
            .take_while(|(i, l)| *i == 0 || !l.trim_start().starts_with("- name:"))
            .find(|(_, l)| {
                l.match_indices(last).any(|(at, _)| {
                    !l[..at].ends_with(word) && l[at + last.len()..].trim_start().starts_with(':')
                })
            })
            .map(|(i, _)| start + i + 1)
    }
}

impl Campaign {
    /// Seeds must differ (two trials would share a folder).
    fn check_seeds_unique(&self) -> Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.seeds {
            if !seen.insert(s) {
                return Err(self.error_at("seeds", &format!("seed {s} is listed twice")));
            }
        }
        Ok(())
    }
}

fn check_reference(c: &Campaign, at: &str, r: &BTreeMap<String, f64>) -> Result<()> {
    for (metric, v) in r {
        if !REFERENCE_METRICS.contains(&metric.as_str()) {
            let hint = closest(metric, &REFERENCE_METRICS)
                .map(|b| format!(" (did you mean `{b}`?)"))
                .unwrap_or_default();
            return Err(c.error_at(
                at,
                &format!(
                    "reference metric `{metric}` is not one of {}{hint}",
                    REFERENCE_METRICS.join(", ")
                ),
            ));
        }
        if !v.is_finite() {
            return Err(c.error_at(at, &format!("reference {metric} must be a number")));
        }
    }
    Ok(())
}

/// Letters, digits, `-`, `.`, `_` (folder names).
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// The stage a `sequence.<stage>.<key>` path sets, if any.
fn stage_of(key: &str) -> Option<&str> {
    let mut parts = key.split('.');
    (parts.next() == Some("sequence"))
        .then(|| parts.next())
        .flatten()
        .filter(|_| parts.next().is_some())
}

/// A value as written in a trial's name: scalars as they are, lists joined with `-`; any other
/// character than letters, digits, `.`, `+`, `-` becomes `-`.
pub fn value_label(v: &Value) -> String {
    let raw = match v {
        Value::Sequence(s) => s.iter().map(value_label).collect::<Vec<_>>().join("-"),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        other => serde_norway::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".+-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `a/b/../c` as `a/c` (lexically: the campaign's folder names in messages stay readable).
fn clean_path(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

fn path_value(p: &Path) -> Value {
    Value::String(p.display().to_string())
}

/// The value at `path` (mapping keys), if present.
fn lookup<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.as_mapping()?.get(*k))
}

/// Set the dotted `key` to `value`, creating the mappings on the way.
fn set_key(root: &mut Value, key: &str, value: Value) {
    let parts: Vec<&str> = key.split('.').collect();
    let mut v = root;
    for (i, part) in parts.iter().enumerate() {
        if !v.is_mapping() {
            *v = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = v else { return };
        if i + 1 == parts.len() {
            m.insert(Value::from(*part), value);
            return;
        }
        if !m.contains_key(*part) {
            m.insert(Value::from(*part), Value::Mapping(Mapping::new()));
        }
        let Some(next) = m.get_mut(*part) else { return };
        v = next;
    }
}
