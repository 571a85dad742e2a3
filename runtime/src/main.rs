//! `moat`: the command line (see `moat::cli`).

fn main() -> std::process::ExitCode {
    moat::cli::main()
}
