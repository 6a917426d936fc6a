//! `aigc-worker`: the data-plane binary run in worker pods. Subcommands (`serve`, `train`,
//! `prepare`, `transfer`) arrive with their issues.

fn main() {
    eprintln!("aigc-worker: no subcommands are available in this build yet");
    std::process::exit(2);
}
