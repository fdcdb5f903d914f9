fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(shipit::run(std::env::args_os().skip(1).collect()))
}
