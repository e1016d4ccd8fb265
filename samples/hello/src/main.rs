//! `hello`: the smallest useful workload (wasm32-wasip1), and a test fixture for the node.
//!
//! Prints each argument (`arg[0]=hello`) and each environment variable (`env GREETING=hi`), one per line,
//! then, driven by the environment:
//! - `TRAP=1`: traps (wasm `unreachable`), the guest equivalent of a crash;
//! - `ALLOC_MB=N`: allocates N MiB and writes to every page, then prints `allocated N MiB`; past the memory
//!   limit the allocation fails and the guest traps, the guest equivalent of an OOM kill;
//! - `GROW_MB=N`: allocates N MiB more, and writes to every page, again and again, keeping all of it: a
//!   guest that never stops growing, until its memory limit ends it;
//! - `SPIN=1`: busy-loops forever, for CPU-limit and deadline tests;
//! - `EXIT_CODE=N`: exits with N (default 0). wasmtime accepts 0..=125; a larger code makes the host report
//!   an error instead of an exit.
//!
//! A variable that cannot be parsed is reported on stderr and the program exits with 2.

use std::hint::black_box;
use std::process::ExitCode;

/// The exit code for bad input, as most CLI tools use.
const USAGE: u8 = 2;

/// Writes touch one byte per wasm page (64 KiB); that is enough to make the memory real on any host.
const PAGE: usize = 64 * 1024;

fn main() -> ExitCode {
    for (i, arg) in std::env::args_os().enumerate() {
        println!("arg[{i}]={}", arg.to_string_lossy());
    }
    for (name, value) in std::env::vars_os() {
        println!("env {}={}", name.to_string_lossy(), value.to_string_lossy());
    }
    match run(|name| std::env::var(name).ok()) {
        Ok(code) => {
            // process::exit, not a returned ExitCode, so any i32 the caller asked for reaches the host as is.
            std::process::exit(code)
        }
        Err(message) => {
            eprintln!("hello: {message}");
            ExitCode::from(USAGE)
        }
    }
}

/// Does what the environment asks and returns the exit code; an `Err` is a usage error.
fn run(env: impl Fn(&str) -> Option<String>) -> Result<i32, String> {
    if flag(&env, "TRAP")? {
        trap();
    }
    if let Some(mb) = env("ALLOC_MB") {
        let mb: usize = mb.trim().parse().map_err(|_| format!("ALLOC_MB={mb:?} is not a number of MiB"))?;
        let bytes = mb.checked_mul(1 << 20).ok_or_else(|| format!("ALLOC_MB={mb} is too large"))?;
        touch(bytes);
        println!("allocated {mb} MiB");
    }
    if let Some(mb) = env("GROW_MB") {
        let mb: usize = mb.trim().parse().map_err(|_| format!("GROW_MB={mb:?} is not a number of MiB"))?;
        grow(mb.checked_mul(1 << 20).filter(|b| *b > 0).ok_or_else(|| format!("GROW_MB={mb} is out of range"))?);
    }
    if flag(&env, "SPIN")? {
        spin();
    }
    match env("EXIT_CODE") {
        None => Ok(0),
        Some(code) => code.trim().parse().map_err(|_| format!("EXIT_CODE={code:?} is not an integer")),
    }
}

/// `1`/`true` on, `0`/`false`/empty/unset off; anything else is a mistake worth reporting.
fn flag(env: &impl Fn(&str) -> Option<String>, name: &str) -> Result<bool, String> {
    match env(name).as_deref().map(str::trim) {
        None | Some("" | "0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(other) => Err(format!("{name}={other:?} is not 0 or 1")),
    }
}

/// Allocates `bytes` and writes every page so the memory is really committed. `vec![0; n]` alone would not
/// do: zeroed allocations can come straight from fresh (untouched) pages.
fn touch(bytes: usize) {
    let mut memory = vec![0u8; bytes];
    for byte in memory.iter_mut().step_by(PAGE) {
        *byte = 1;
    }
    black_box(&memory);
}

fn grow(step: usize) -> ! {
    let mut kept = Vec::new();
    loop {
        let mut memory = vec![0u8; step];
        for byte in memory.iter_mut().step_by(PAGE) {
            *byte = 1;
        }
        kept.push(black_box(memory));
    }
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// A trap, not an exit: a panic could be caught or turned into exit code 101 by some hosts, `unreachable`
/// cannot.
fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn exit_code_defaults_to_zero_and_follows_exit_code() {
        assert_eq!(run(env(&[])), Ok(0));
        assert_eq!(run(env(&[("EXIT_CODE", "3")])), Ok(3));
        assert_eq!(run(env(&[("EXIT_CODE", " 42 ")])), Ok(42));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        assert!(run(env(&[("EXIT_CODE", "three")])).is_err());
        assert!(run(env(&[("ALLOC_MB", "-1")])).is_err());
        assert!(run(env(&[("TRAP", "yes")])).is_err());
        assert!(run(env(&[("SPIN", "2")])).is_err());
    }

    #[test]
    fn flags_off_values_do_nothing() {
        assert_eq!(run(env(&[("TRAP", "0"), ("SPIN", "false"), ("EXIT_CODE", "1")])), Ok(1));
        assert_eq!(run(env(&[("TRAP", "")])), Ok(0));
    }

    #[test]
    fn alloc_touches_and_returns() {
        assert_eq!(run(env(&[("ALLOC_MB", "2"), ("EXIT_CODE", "5")])), Ok(5));
    }
}
