//! The `prof` binary: parse, dispatch, turn errors into one line and an exit code.

use clap::Parser;
use clap::error::ErrorKind;
use prof::cli::{Cli, Command};
use prof::commands;

fn main() {
    // prof run again as a launched command's keeper (see process::keeper), not by a person.
    if let Some(code) = prof::process::keeper::main_if_keeper() {
        std::process::exit(code);
    }
    prof::process::limits::raise_open_files();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => parse_failed(e),
    };
    let result = match &cli.command {
        Command::Dump(args) => commands::dump::run(args).map(|()| 0),
        Command::Record(args) => commands::record::run(args),
        Command::Top(args) => commands::top::run(args),
        Command::Report(args) => commands::report::run(args).map(|()| 0),
        Command::Diff(args) => commands::diff::run(args),
        Command::Diagnose(args) => commands::diagnose::run(args),
    };
    if let Err(e) = result {
        // A closed pipe (`prof dump | head`) is the reader's choice, not an error.
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            std::process::exit(0);
        }
        // Expected failures are one line; the chain gives the cause without a backtrace.
        eprintln!("prof: {e:#}");
        std::process::exit(1);
    }
    if let Ok(code) = result {
        std::process::exit(code);
    }
}

/// Help and version go out as clap writes them; a usage error becomes one line and exit 1.
fn parse_failed(e: clap::Error) -> ! {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let argv: Vec<String> = std::env::args().collect();
    eprintln!("prof: {}", prof::cli::one_line_error(&e, &argv));
    std::process::exit(1);
}
