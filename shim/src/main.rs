//! `tailnet-cni`: invoked by the container runtime once per CNI operation.

#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use tailnet_cni::commands::{read_stdin, run, MAX_STDIN_BYTES};
use tailnet_cni::error::{CniError, IO_FAILURE};
use tailnet_cni::{CniVersion, Failure, UdsDaemon};

fn main() -> ExitCode {
    let stdin = read_stdin(std::io::stdin().lock(), MAX_STDIN_BYTES);
    let outcome = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => {
            let lookup = |name: &str| std::env::var_os(name);
            runtime.block_on(run(&UdsDaemon::default(), &lookup, stdin))
        }
        Err(err) => Err(Failure {
            command: None,
            container_id: None,
            cni_version: CniVersion::LATEST,
            error: CniError::new(IO_FAILURE, format!("starting the async runtime: {err}")),
        }),
    };
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(success) => {
            for warning in &success.warnings {
                eprintln!("{warning}");
            }
            if let Some(output) = success.output {
                if writeln!(stdout, "{output}").is_err() {
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            // Nothing more can be reported if stdout is gone; the exit code
            // still tells the runtime.
            writeln!(stdout, "{}", failure.to_json()).ok();
            eprintln!("{}", failure.log_line());
            ExitCode::FAILURE
        }
    }
}
