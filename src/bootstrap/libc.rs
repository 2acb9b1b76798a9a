//! Will the uploaded `paygress-cli` run on the host's C library?
//!
//! Why: bootstrap uploads the very binary it runs, and that binary is linked dynamically
//! against glibc. On a host whose glibc is older than the newest `GLIBC_x.y` symbol version
//! the binary references, the upload succeeds and the service then fails to start
//! ("version `GLIBC_2.39' not found"), after packages were installed and files written. So the
//! preflight (a constant script, [`super::plan::PREFLIGHT`]) prints the host's libc and the
//! needed version is read from the binary's ELF version-needs (`SHT_GNU_VERNEED`, with the
//! `object` crate); a host that is older, or runs another libc (musl), is refused before any
//! step changes anything.

use object::read::elf::{ElfFile, FileHeader};
use object::FileKind;

/// A glibc version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GlibcVersion(pub u32, pub u32);

impl std::fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// Why the binary cannot go to that host (or its needs cannot be read).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LibcError {
    #[error("this paygress-cli needs glibc {needed} or newer, and the host has glibc {host}: run the bootstrap from a paygress-cli built for that glibc (or upgrade the host)")]
    TooOld {
        needed: GlibcVersion,
        host: GlibcVersion,
    },
    #[error("this paygress-cli is linked against glibc (needs {needed}), and the host's C library is not glibc ({host}): run the bootstrap from a paygress-cli built for it (e.g. statically linked)")]
    NotGlibc { needed: GlibcVersion, host: String },
    #[error("cannot read the glibc versions this paygress-cli needs: {0}")]
    Elf(String),
}

/// Parse `GLIBC_2.34` (or `GLIBC_2.2.5`: the third part does not matter for ordering here).
fn parse_glibc_tag(tag: &str) -> Option<GlibcVersion> {
    let v = tag.strip_prefix("GLIBC_")?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().unwrap_or("0").parse().ok()?;
    Some(GlibcVersion(major, minor))
}

/// The newest `GLIBC_x.y` version an ELF file's version-needs reference; `None` when it needs
/// none (statically linked, or not against glibc).
pub fn needed_glibc(elf: &[u8]) -> Result<Option<GlibcVersion>, LibcError> {
    let err = |e: object::read::Error| LibcError::Elf(e.to_string());
    match FileKind::parse(elf).map_err(err)? {
        FileKind::Elf32 => newest::<object::elf::FileHeader32<object::Endianness>>(elf),
        FileKind::Elf64 => newest::<object::elf::FileHeader64<object::Endianness>>(elf),
        _ => Err(LibcError::Elf("not an ELF file".into())),
    }
}

fn newest<Elf: FileHeader<Endian = object::Endianness>>(
    data: &[u8],
) -> Result<Option<GlibcVersion>, LibcError> {
    let err = |e: object::read::Error| LibcError::Elf(e.to_string());
    let file = ElfFile::<Elf, &[u8]>::parse(data).map_err(err)?;
    let endian = file.endian();
    let sections = file.elf_section_table();
    let Some((mut needs, link)) = sections.gnu_verneed(endian, data).map_err(err)? else {
        return Ok(None);
    };
    let strings = sections.strings(endian, data, link).map_err(err)?;
    let mut best = None;
    while let Some((_need, mut aux)) = needs.next().map_err(err)? {
        while let Some(a) = aux.next().map_err(err)? {
            let name = a.name(endian, strings).map_err(err)?;
            if let Some(v) = std::str::from_utf8(name).ok().and_then(parse_glibc_tag) {
                best = best.max(Some(v));
            }
        }
    }
    Ok(best)
}

/// What the host's C library is, from the preflight's libc line: `glibc 2.36` (as
/// `getconf GNU_LIBC_VERSION` prints it), else `other: …` (the first line of `ldd --version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostLibc {
    Glibc(GlibcVersion),
    Other(String),
}

pub fn parse_host_libc(line: &str) -> HostLibc {
    let line = line.trim();
    if let Some(v) = line.strip_prefix("glibc ") {
        let mut p = v.trim().split('.');
        if let (Some(Ok(a)), Some(Ok(b))) = (
            p.next().map(str::parse::<u32>),
            p.next().map(|s| {
                s.trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse::<u32>()
            }),
        ) {
            return HostLibc::Glibc(GlibcVersion(a, b));
        }
    }
    let what = line.strip_prefix("other:").unwrap_or(line).trim();
    HostLibc::Other(match what {
        "" => "unknown".to_string(),
        w => w.chars().take(120).collect(),
    })
}

/// Whether a binary needing `needed` runs on `host`.
pub fn check(needed: Option<GlibcVersion>, host: &HostLibc) -> Result<(), LibcError> {
    let Some(needed) = needed else {
        return Ok(());
    };
    match host {
        HostLibc::Glibc(h) if *h >= needed => Ok(()),
        HostLibc::Glibc(h) => Err(LibcError::TooOld { needed, host: *h }),
        HostLibc::Other(o) => Err(LibcError::NotGlibc {
            needed,
            host: o.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary itself is linked like paygress-cli: its needs are read, and agree with
    /// what binutils' `readelf -V` lists when it is installed.
    #[test]
    fn the_running_binary_needs_a_glibc_version() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let needed = needed_glibc(&exe).unwrap();
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            let n = needed.expect("a glibc binary references GLIBC_ versions");
            assert!(n >= GlibcVersion(2, 2), "{n}");
            if let Ok(o) = std::process::Command::new("readelf")
                .arg("-V")
                .arg(std::env::current_exe().unwrap())
                .output()
            {
                let text = String::from_utf8_lossy(&o.stdout);
                let max = text
                    .split_whitespace()
                    .filter_map(|w| parse_glibc_tag(w.trim_start_matches("Name:")))
                    .max();
                assert_eq!(max, Some(n), "readelf -V disagrees");
            }
        }
        assert!(matches!(
            needed_glibc(b"#!/bin/sh\n"),
            Err(LibcError::Elf(_))
        ));
        assert!(matches!(needed_glibc(b""), Err(LibcError::Elf(_))));
    }

    #[test]
    fn versions_order_and_hosts_are_judged() {
        assert_eq!(parse_glibc_tag("GLIBC_2.2.5"), Some(GlibcVersion(2, 2)));
        assert_eq!(parse_glibc_tag("GLIBC_2.34"), Some(GlibcVersion(2, 34)));
        assert_eq!(parse_glibc_tag("GLIBC_PRIVATE"), None);
        assert!(GlibcVersion(2, 34) > GlibcVersion(2, 9));
        assert_eq!(
            parse_host_libc("glibc 2.36\n"),
            HostLibc::Glibc(GlibcVersion(2, 36))
        );
        assert_eq!(
            parse_host_libc("other: musl libc (x86_64)"),
            HostLibc::Other("musl libc (x86_64)".into())
        );
        assert_eq!(parse_host_libc(""), HostLibc::Other("unknown".into()));
        assert_eq!(
            parse_host_libc("glibc x.y"),
            HostLibc::Other("glibc x.y".into())
        );
        let need = Some(GlibcVersion(2, 34));
        assert!(check(need, &HostLibc::Glibc(GlibcVersion(2, 36))).is_ok());
        assert!(check(need, &HostLibc::Glibc(GlibcVersion(2, 34))).is_ok());
        let e = check(need, &HostLibc::Glibc(GlibcVersion(2, 31))).unwrap_err();
        assert!(e
            .to_string()
            .contains("needs glibc 2.34 or newer, and the host has glibc 2.31"));
        let e = check(need, &parse_host_libc("other: musl libc (x86_64)")).unwrap_err();
        assert!(
            e.to_string().contains("not glibc (musl libc (x86_64))"),
            "{e}"
        );
        // A static binary needs nothing.
        assert!(check(None, &HostLibc::Other("musl".into())).is_ok());
    }
}
