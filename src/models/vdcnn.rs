//! LIT's VDCNN (very deep character CNN) with max-pooling blocks and no shortcuts, on token ids
//! `[N, 1014]`: `character_embedding` → transpose to `[N, D, L]` → `conv1` (Conv1d k3 p1, no bias;
//! feature 0) → `sections.section_{0..3}` (features 1..4) → k-max pooling (k = 8) → flatten →
//! `fc1` → ReLU → `fc2` → ReLU → `fc3`.
//!
//! Block `sections.section_s.block_b`: when it increases the channels, MaxPool1d(3, 2, 1) first;
//! then relu(bn1(conv1 ·)) → relu(bn2(conv2 ·)) (k3 p1, no bias, BatchNorm1d). Conv1d init
//! kaiming_normal(fan_in); embedding N(0,1); linears PyTorch default.

use super::builder::Builder;
use super::layers::{self, BatchNorm, Conv1d, ConvSpec, Embedding, Linear};
use super::{Args, Input, Model};
use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::nn::init::Init;
use crate::nn::ParamStore;
use crate::ops::elementwise::relu;

/// Sequence length of the LIT text pipeline.
pub const SEQUENCE_LENGTH: usize = 1014;

/// The shape of a VDCNN; [`Config::standard`] gives LIT's.
#[derive(Clone, Debug)]
pub struct Config {
    /// Total depth: 9, 17, 29 or 49 (see [`blocks_for_depth`]).
    pub depth: usize,
    /// Conv channels of each of the four sections (four positive values).
    pub filters: Vec<usize>,
    /// Number of distinct token ids; every input id must be below it.
    pub vocab_size: usize,
    /// Dimension each token is embedded in (the channels `conv1` reads).
    pub embedding_size: usize,
    /// How many maxima per channel the k-max pooling keeps before `fc1`.
    pub k: usize,
    /// Units of the hidden layers `fc1` and `fc2`.
    pub num_hidden: usize,
}

/// Blocks per section for each depth.
pub fn blocks_for_depth(depth: usize) -> Option<[usize; 4]> {
    match depth {
        9 => Some([1, 1, 1, 1]),
        17 => Some([2, 2, 2, 2]),
        29 => Some([5, 5, 2, 2]),
        49 => Some([8, 8, 5, 3]),
        _ => None,
    }
}

impl Config {
    /// LIT's defaults: filters `[64, 128, 256, 512]`, 69 symbols embedded in 16 dims, k = 8,
    /// 2048 hidden.
    pub fn standard(depth: usize) -> Config {
        Config {
            depth,
            filters: vec![64, 128, 256, 512],
            vocab_size: 69,
            embedding_size: 16,
            k: 8,
            num_hidden: 2048,
        }
    }

    /// From a golden descriptor's `args`: `depth` required, the rest default to
    /// [`Config::standard`]; an error for a non-maxpool block, shortcuts or conv bias (not implemented).
    pub fn from_args(a: &Args) -> Result<Config> {
        let std = Config::standard(a.usize("depth")?);
        if a.str_or("block", "maxpool")? != "maxpool" {
            return Err(a.bad("block", "`maxpool` (the only block type implemented)"));
        }
        if a.bool_or("shortcut", false)? {
            return Err(a.bad("shortcut", "false (shortcut blocks are not implemented)"));
        }
        if a.bool_or("bias", false)? {
            return Err(a.bad("bias", "false (convs with bias are not implemented)"));
        }
        Ok(Config {
            depth: std.depth,
            filters: match a.get("filters") {
                Some(_) => a.usize_list("filters")?,
                None => std.filters,
            },
            vocab_size: a.usize_or("vocab_size", std.vocab_size)?,
            embedding_size: a.usize_or("embedding_size", std.embedding_size)?,
            k: a.usize_or("k", std.k)?,
            num_hidden: a.usize_or("num_hidden", std.num_hidden)?,
        })
    }
}

struct Block {
    /// MaxPool1d(3, 2, 1) before the convs (blocks that increase the channels).
    pool_first: bool,
    conv1: Conv1d,
    bn1: BatchNorm,
    conv2: Conv1d,
    bn2: BatchNorm,
}

impl Block {
    fn forward(&self, g: &mut Graph, store: &mut ParamStore, x: Var, train: bool) -> Result<Var> {
        let mut h = x;
        if self.pool_first {
            h = layers::max_pool1d(g, h, 3, 2, 1)?;
        }
        let h = self.conv1.traced_forward(g, store, h)?;
        let h = self.bn1.traced_forward(g, store, h, train, false, None)?;
        let h = relu(g, h)?;
        let h = self.conv2.traced_forward(g, store, h)?;
        let h = self.bn2.traced_forward(g, store, h, train, false, None)?;
        relu(g, h)
    }
}

/// A VDCNN on token ids `[N, 1014]`; sectioned (embedding + `conv1`, four sections, k-max + FCs).
pub struct Vdcnn {
    name: String,
    num_classes: usize,
    k: usize,
    embedding: Embedding,
    conv1: Conv1d,
    sections: Vec<Vec<Block>>,
    fc: [Linear; 3],
}

impl Vdcnn {
    /// Register the layers `cfg` describes under `name`; an error for an unknown depth, filters
    /// that are not four positive widths, or a zero `k` or class count.
    pub fn new(b: &mut Builder, name: &str, cfg: &Config, num_classes: usize) -> Result<Vdcnn> {
        let blocks = blocks_for_depth(cfg.depth).ok_or_else(|| {
            Error::Config(format!(
                "`{name}`: VDCNN depth {} is not one of 9, 17, 29, 49",
                cfg.depth
            ))
        })?;
        if cfg.filters.len() != 4 || cfg.filters.contains(&0) || cfg.k == 0 || num_classes == 0 {
            return Err(Error::Config(format!(
                "`{name}`: VDCNN needs 4 positive section widths (got {:?}), k > 0 (got {}) and \
                 classes > 0",
                cfg.filters, cfg.k
            )));
        }
        let init = Init::KaimingNormalFanIn;
        let conv = |b: &mut Builder, n: &str, i: usize, o: usize| {
            let spec = ConvSpec {
                in_channels: i,
                out_channels: o,
                kernel: 3,
                stride: 1,
                padding: 1,
                bias: false,
                weight_init: init,
                bias_init: init,
            };
            Conv1d::build(b, n, spec)
        };
        let embedding =
            Embedding::build(b, "character_embedding", cfg.vocab_size, cfg.embedding_size)?;
        let conv1 = conv(b, "conv1", cfg.embedding_size, cfg.filters[0])?;
        let mut sections = Vec::new();
        let mut channels = cfg.filters[0];
        for (s, (&n, &out)) in blocks.iter().zip(&cfg.filters).enumerate() {
            let mut section = Vec::new();
            for i in 0..n {
                let p = format!("sections.section_{s}.block_{i}");
                let in_c = channels;
                section.push(Block {
                    pool_first: out > in_c,
                    conv1: conv(b, &layers::key(&p, "conv1"), in_c, out)?,
                    bn1: BatchNorm::standard(b, &layers::key(&p, "bn1"), out)?,
                    conv2: conv(b, &layers::key(&p, "conv2"), out, out)?,
                    bn2: BatchNorm::standard(b, &layers::key(&p, "bn2"), out)?,
                });
                channels = out;
            }
            sections.push(section);
        }
        let d = Init::PytorchDefault;
        let fc = [
            Linear::build(b, "fc1", channels * cfg.k, cfg.num_hidden, d)?,
            Linear::build(b, "fc2", cfg.num_hidden, cfg.num_hidden, d)?,
            Linear::build(b, "fc3", cfg.num_hidden, num_classes, d)?,
        ];
        Ok(Vdcnn {
            name: name.to_string(),
            num_classes,
            k: cfg.k,
            embedding,
            conv1,
            sections,
            fc,
        })
    }
}

impl Model for Vdcnn {
    fn architecture(&self) -> &str {
        &self.name
    }
    fn input_shape(&self) -> Vec<usize> {
        vec![SEQUENCE_LENGTH]
    }
    fn takes_ids(&self) -> bool {
        true
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn num_sections(&self) -> usize {
        self.sections.len()
    }
    fn section_names(&self) -> Vec<String> {
        (0..self.sections.len())
            .map(|s| format!("sections.section_{s}"))
            .collect()
    }
    fn stem(&self, g: &mut Graph, store: &mut ParamStore, x: Input, _train: bool) -> Result<Var> {
        let ids = x.ids(&self.name)?;
        let e = self.embedding.traced_forward(g, store, ids)?; // [N, L, D]
        let e = layers::swap_last_two(g, e)?; // [N, D, L]
        self.conv1.traced_forward(g, store, e)
    }
    fn forward_section(
        &self,
        i: usize,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
    ) -> Result<Var> {
        let mut h = x;
        for blk in super::section(&self.sections, i, &self.name)? {
            h = blk.forward(g, store, h, train)?;
        }
        Ok(h)
    }
    fn head(&self, g: &mut Graph, store: &mut ParamStore, x: Var, _train: bool) -> Result<Var> {
        let h = layers::kmax_pool(g, x, self.k)?;
        let h = layers::flatten(g, h)?;
        let h = self.fc[0].traced_forward(g, store, h)?;
        let h = relu(g, h)?;
        let h = self.fc[1].traced_forward(g, store, h)?;
        let h = relu(g, h)?;
        self.fc[2].traced_forward(g, store, h)
    }
}
