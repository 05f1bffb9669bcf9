//! `netagent-shim DIR`: the task shim as a standalone binary (the agent also runs it as
//! `netagent shim DIR`). See `executor::shim`.

fn main() {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: netagent-shim TASK_DIR");
        std::process::exit(2);
    };
    std::process::exit(executor::shim::run(std::path::Path::new(&dir)));
}
