//! The `whatsapp-host` binary: hands off to [`whatsapp_host::cli::main`].

fn main() -> std::process::ExitCode {
    whatsapp_host::cli::main()
}
