//! Questions to the operator on the controlling terminal (`/dev/tty`), never on stdin/stdout:
//! a yes/no about an unknown host key, and a password read with echo off.
//!
//! Without a terminal (a script, CI) every question is answered "no", so nothing is accepted or
//! asked by accident; the flags `--yes`, `--host-key` and `--sudo-password-stdin` are the
//! non-interactive answers.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;

use crate::secret::Secret;

fn open_tty() -> Option<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()
}

/// Whether there is a terminal to ask on.
pub fn has_tty() -> bool {
    open_tty().is_some()
}

/// Ask a yes/no question; `false` without a terminal.
pub fn confirm(question: &str) -> bool {
    let Some(mut tty) = open_tty() else {
        return false;
    };
    if tty.write_all(question.as_bytes()).is_err() {
        return false;
    }
    let mut line = String::new();
    if BufReader::new(&tty).read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
}

/// Read a password with echo off; `None` without a terminal.
pub fn ask_secret(prompt: &str) -> Option<Secret> {
    let mut tty = open_tty()?;
    tty.write_all(prompt.as_bytes()).ok()?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    let have = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if have {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: a valid fd and a termios derived from its own.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = BufReader::new(&tty).read_line(&mut line);
    if have {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    read.ok()?;
    let line = line.trim_end_matches(['\n', '\r']).to_string();
    (!line.is_empty()).then(|| Secret::new(line))
}

/// The first line of standard input (a password given with `--…-stdin`).
pub fn stdin_line() -> Option<Secret> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).ok()?;
    let line = line.trim_end_matches(['\n', '\r']).to_string();
    (!line.is_empty()).then(|| Secret::new(line))
}
