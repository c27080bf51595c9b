//! The `leadscore` binary: wiring only; everything lives in the library.

fn main() -> std::process::ExitCode {
    leadscore::cli::main()
}
