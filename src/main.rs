//! The `linesight` command: starts logging, runs the command its arguments name (see
//! [`cli`]), and turns errors into an exit code.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    bound_the_heap();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match cli::Cli::parse().run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("linesight: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A station runs for months: its resident memory must level off. glibc gives every thread
/// that allocates an arena of its own, up to 8 per core, and the free space scattered over
/// them is rarely handed back, so the heap creeps up with each new blocking thread. Two arenas
/// bound that, at no cost to inference (`inspect/score_224` 11.5 ms against 12.0 ms with the
/// default, criterion on the 2-core development machine); `linesight::heap` hands freed
/// pages back after transient peaks, and `make soak` shows what growth is left. A fixed mmap
/// threshold, the other usual remedy, made the model 40 % slower (16.8 ms): its per-frame
/// tensors would be mapped and unmapped every frame. `MALLOC_ARENA_MAX` in the environment wins.
fn bound_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any other thread.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
}
