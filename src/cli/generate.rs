//! `hsm-ca generate`: the man page and the shell completions, made from the command line's own
//! definition so they never drift from it. `ops/package.sh` puts them in the package.

use std::path::{Path, PathBuf};

use clap::CommandFactory;

use super::{Cli, CliError};
use crate::authority::write_file;

#[derive(clap::Subcommand, Debug)]
pub enum GenerateCommand {
    /// The man page, hsm-ca.1 (roff), for every command.
    Man {
        /// Folder to write hsm-ca.1 into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Completions for a shell, written to a file named as that shell expects.
    Completions {
        /// bash, zsh or fish.
        #[arg(long)]
        shell: clap_complete::Shell,
        /// Folder to write the file into.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: GenerateCommand) -> Result<(), CliError> {
    match cmd {
        GenerateCommand::Man { out } => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(|e| CliError::Message(format!("man page: {e}")))?;
            written(&out.join("hsm-ca.1"), &page)
        }
        GenerateCommand::Completions { shell, out } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "hsm-ca", &mut script);
            let name = match shell {
                clap_complete::Shell::Bash => "hsm-ca".to_string(),
                clap_complete::Shell::Zsh => "_hsm-ca".to_string(),
                clap_complete::Shell::Fish => "hsm-ca.fish".to_string(),
                other => format!("hsm-ca.{other}"),
            };
            written(&out.join(name), &script)
        }
    }
}

fn written(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::Message(format!("{}: {e}", dir.display())))?;
    }
    write_file(path, bytes, true)?;
    say!("{}", path.display());
    Ok(())
}
