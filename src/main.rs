//! Parses the command line once, then runs a subcommand or the desktop application.

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    vmoverlay::i18n::init();
    let argv: Vec<String> = std::env::args().collect();
    let cli = match vmoverlay::cli::Cli::try_parse_from_args(&argv) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                vmoverlay::cli::EXIT_USAGE
            } else {
                0
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match &cli.command {
        Some(command) => vmoverlay::cli::run(&cli, command),
        None => vmoverlay::application::run(cli, argv),
    };
    std::process::exit(code);
}
