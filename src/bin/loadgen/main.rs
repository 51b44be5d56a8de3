//! `contoso-loadgen`: the load generator of the benchmark suite. Subcommands drive one part
//! of the system each and print a human summary plus a JSON result (see BENCHMARKS.md).

mod broker;
mod drain;
mod hub;
mod idle;
mod orders;
mod pipeline;
mod plot;
mod procfs;
mod redis_nodes;
mod relay;
mod report;
mod shop;
mod targeted;
mod toast;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "contoso-loadgen", about = "Load generator for contoso benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// POST /api/orders at a fixed open-loop rate, or as fast as N workers can (rate 0).
    Orders(orders::Args),
    /// POST /api/orders at fixed rates and time each order to its order.processed on the bus.
    Pipeline(pipeline::Args),
    /// Opens authenticated hub connections and holds them idle (memory and keep-alive cost).
    Idle(idle::Args),
    /// Drains a notify process under traffic: reconnect time and rate, notifications missed.
    Drain(drain::Args),
    /// Cross-process fan-out: per-user notifications at rising rates to tabs on several processes.
    Targeted(Box<targeted::Args>),
    /// The bare relay: the smallest WebSocket relay on Redis pub/sub, the floor for `targeted`.
    Relay(relay::Args),
    /// Draws PNG plots from the JSON results.
    Plot(plot::Args),
    /// The whole pipeline as a shopper sees it: POST /api/orders to the toast on the user's tab.
    Toast(toast::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Orders(args) => orders::run(args).await,
        Command::Idle(args) => idle::run(args).await,
        Command::Drain(args) => drain::run(args).await,
        Command::Targeted(args) => targeted::run(*args).await,
        Command::Relay(args) => relay::run(args).await,
        Command::Plot(args) => plot::run(args),
        Command::Toast(args) => toast::run(args).await,
        Command::Pipeline(args) => pipeline::run(args).await,
    }
}
