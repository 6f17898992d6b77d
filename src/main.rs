fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    vmoverlay::i18n::init();
    let cli = match vmoverlay::cli::Cli::try_parse_from_args(&std::env::args().collect::<Vec<_>>())
    {
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
    std::process::exit(vmoverlay::cli::run(cli));
}
