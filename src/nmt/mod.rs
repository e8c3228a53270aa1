//! Translation (issue 15): the data pipeline of the QD and LMA translation experiments and their
//! scores, in plain CPU Rust. /work/shared/golden/SPEC-TRANSLATION.md §1, §4.4 and §6.3 describe
//! what is reproduced.
//!
//! [`data`] reads a parallel corpus (one sentence a line, whitespace tokens) and filters it by
//! length; [`vocab`] builds the source and target vocabularies with torchtext 0.1.1's ordering;
//! [`batches`] turns sentences into ids and cuts them into time-major batches (by sentences or by
//! tokens, bucketed and sorted as the seed's iterators); [`bleu`] scores translations as Moses'
//! `multi-bleu.perl -lc` and as sacreBLEU do, and gives the perplexity. [`model`] puts the
//! translation model families behind one type; [`step`] is the training step of both seeds.

pub mod batches;
pub mod bleu;
pub mod config;
pub mod data;
pub mod model;
pub mod quantize;
pub mod search;
pub mod seq_kd;
pub mod step;
pub mod train;
pub mod vocab;
