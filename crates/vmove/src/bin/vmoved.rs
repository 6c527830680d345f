//! The host agent.
fn main() -> std::process::ExitCode {
    vmove_agent::main()
}
