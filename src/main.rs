//! The `prof` binary: parse, dispatch, turn errors into one line and an exit code.

use clap::Parser;
use prof::cli::{Cli, Command};
use prof::commands;

fn main() {
    // prof run again as a launched command's keeper (see process::keeper), not by a person.
    if let Some(code) = prof::process::keeper::main_if_keeper() {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Dump(args) => commands::dump::run(args).map(|()| 0),
        Command::Record(args) => commands::record::run(args),
        Command::Top(args) => commands::top::run(args),
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
