//! The `whatsapp-host` binary: parses the command line and hands off to [`whatsapp_host::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = whatsapp_host::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("failed to start the tokio runtime");
    match runtime.block_on(whatsapp_host::cli::run(cli)) {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
