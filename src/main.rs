//! The `arcface` command line: parses arguments and hands each subcommand to its module in
//! `commands/`, which calls the library and prints the results.

mod commands;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use commands::{bench, data, eval, export, import, infer, summary, train};

#[derive(Parser)]
#[command(
    name = "arcface",
    version,
    about = "Train and run ArcFace face-recognition embedders"
)]
struct Cli {
    /// Device override for any command: cpu, cuda, cuda:N, cuda:N,M,... or libtorch-cpu
    /// (the config's `device` otherwise).
    #[arg(long, global = true)]
    device: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Per-stage output shapes, parameter counts and forward GFLOPs of a config's backbone.
    Summary(summary::SummaryArgs),
    /// Train a backbone and margin head as the config says (validates and checkpoints as it goes).
    Train(train::TrainArgs),
    /// Verification accuracy of a model on validation .bin files (insightface's 10-fold protocol).
    Eval(eval::EvalArgs),
    /// Export a backbone for other tools: safetensors (arcface_torch names) or opset-8 ONNX.
    Export(export::ExportArgs),
    /// Faces in photos: detect (MTCNN), align, embed, compare.
    Infer(infer::InferArgs),
    /// Another tool's model into a checkpoint: an ONNX embedder (LResNet-E-IR or MobileFaceNet:
    /// the model zoo's, arcface_torch's, MXNet's) or arcface_torch's backbone.pth.
    Import(import::ImportArgs),
    /// Synthetic face-like identities in insightface's formats (train.rec/.idx/property and
    /// synth_val.bin with pairs of identities not in training), deterministic by seed.
    Synth(data::SynthArgs),
    /// Pack identity folders (DIR/<identity>/<images>) into train.rec/.idx/property.
    Pack(data::PackArgs),
    /// Pack a pairs list (`pathA<TAB>pathB<TAB>1|0`, paths relative to --images) into a .bin.
    PackPairs(data::PackPairsArgs),
    /// What a dataset folder or .bin file holds; exits non-zero if anything is wrong.
    Inspect(data::InspectArgs),
    /// Throughput benchmarks.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

fn main() -> ExitCode {
    arcface::device::keep_freed_host_memory();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.downcast_ref::<arcface::signals::Stopped>().is_some() => {
            // Stopped on a signal with a checkpoint written: not an error, a request to be
            // started again (Slurm --requeue, torchrun, a retrying script).
            eprintln!("{error}");
            ExitCode::from(arcface::signals::EXIT_RESUME)
        }
        Err(error) => {
            // One line per rank of a distributed run, each saying whose it is.
            match std::env::var("RANK") {
                Ok(rank) => eprintln!("error (rank {rank}): {error:#}"),
                Err(_) => eprintln!("error: {error:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    let device = &cli.device;
    match &cli.command {
        Command::Summary(args) => summary::run(args, device),
        Command::Train(args) => train::run(args, device),
        Command::Eval(args) => eval::run(args, device),
        Command::Export(args) => export::export(args, device),
        Command::Import(args) => import::run(args, device),
        Command::Infer(args) => infer::run(args, device),
        Command::Synth(args) => data::synth(args),
        Command::Pack(args) => data::pack(args),
        Command::PackPairs(args) => data::pack_pairs(args),
        Command::Inspect(args) => data::inspect(args),
        Command::Bench { what } => bench::run(what, device),
    }
}
