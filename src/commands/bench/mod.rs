//! `arcface bench train|head|dist|data|infer`: throughput, never timed tests. Each
//! subcommand's arguments and printing are in its own file; what it measures is in the
//! library's `bench` room.

use anyhow::Result;
use clap::Subcommand;

mod data;
mod dist;
mod head;
mod infer;
mod train;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Training steps on random tensors: forward, backward and optimizer ms, img/s.
    Train(train::TrainArgs),
    /// The model-parallel head alone (partial FC's forward and backward, SGD on the centres)
    /// at a large class count over sample rates; --torch also times arcface_torch's
    /// PartialFC_V2 on the same sizes (scripts/bench_partial_fc.py).
    Head(head::HeadArgs),
    /// All-reduce bus bandwidth of the process group over message sizes (nccl-tests'
    /// definition): run under torchrun, with --nproc-per-node N (LibTorch's CPU, Gloo), or
    /// with --device cuda:0,1,... (NCCL).
    Dist(dist::DistArgs),
    /// Decoded + augmented images per second through the loader, per thread and in total.
    Data(data::DataArgs),
    /// Embeddings per second of one model through burn and through tract (the same weights:
    /// a checkpoint is exported, an ONNX file imported, in memory), optionally onnxruntime.
    Infer(infer::InferArgs),
}

pub fn run(what: &BenchCommand, cli_device: &Option<String>) -> Result<()> {
    match what {
        BenchCommand::Train(args) => train::run(args, cli_device),
        BenchCommand::Head(args) => head::run(args, cli_device),
        BenchCommand::Dist(args) => dist::run(args, cli_device),
        BenchCommand::Data(args) => data::run(args),
        BenchCommand::Infer(args) => infer::run(args, cli_device),
    }
}
