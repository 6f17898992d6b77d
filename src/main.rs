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
        None => {
            prefer_software_renderer();
            vmoverlay::application::run(cli, argv)
        }
    };
    std::process::exit(code);
}

/// The desktop app draws one small dialog at a time, which GTK's GL renderer does not make
/// faster: on machines without a GPU (VMs, remote desktops, llvmpipe) its first frame took
/// 300–900 ms and 200 MiB, against 26–46 ms and 49 MiB with cairo. So cairo is the default
/// here; a `GSK_RENDERER` the user set always wins. This runs before GTK initialises (it reads
/// the variables once) and before any thread exists.
///
/// With cairo, GDK need not set up OpenGL either: on X11 it does so when the display opens
/// (to choose a visual), which maps Mesa and LLVM into the process before any window exists
/// (104 MiB RSS idle under Xvfb, 44 MiB with `GDK_DEBUG=gl-disable`). So GL is disabled as
/// well, unless the user set `GDK_DEBUG` or chose a renderer.
fn prefer_software_renderer() {
    if std::env::var_os("GSK_RENDERER").is_none() {
        std::env::set_var("GSK_RENDERER", "cairo");
        if std::env::var_os("GDK_DEBUG").is_none() {
            std::env::set_var("GDK_DEBUG", "gl-disable");
        }
    }
}
