#!/usr/bin/env python3
"""Check that a setup script installs everything it (and the daemons it starts) runs.

Why: a script that works on a machine where a package happens to be installed already (brought
by an earlier install, or by a `Recommends` that someone once let in) fails on a fresh machine.
Running the script on a fresh machine is the only full proof; this check catches the same class
of mistake on *any* machine, including one where the missing package is present by accident.

How: each setup script answers `--print-deps` with the packages it installs
(`package NAME`) and the commands it, or a daemon it starts, calls (`command NAME`). After the
script has run, every command must exist and be shipped by a package that is

- one the script installs itself, or
- reachable from those through hard dependencies (Depends / Pre-Depends, among the packages
  actually installed; a Recommends does not count, the scripts install without them), or
- part of every Debian system (Essential: yes, or Priority: required).

Usage: check-setup-deps.py SCRIPT...   (exit 0 when all are covered, 1 otherwise)
"""

import os
import re
import shutil
import subprocess
import sys

BASE_PRIORITIES = {"required"}


def installed_packages():
    """name -> {depends: [[alternative, ...], ...], provides: [...], essential, priority}."""
    fmt = "${Package}\t${Status}\t${Essential}\t${Priority}\t${Pre-Depends}\t${Depends}\t${Provides}\n"
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", fmt], check=True, capture_output=True, text=True
    ).stdout
    pkgs = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) != 7 or "install ok installed" not in parts[1]:
            continue
        name, _, essential, priority, predeps, deps, provides = parts
        groups = []
        for field in (predeps, deps):
            for group in filter(None, (g.strip() for g in field.split(","))):
                groups.append([strip_version(a) for a in group.split("|")])
        pkgs[name] = {
            "depends": groups,
            "provides": [strip_version(p) for p in provides.split(",") if p.strip()],
            "essential": essential == "yes",
            "priority": priority,
        }
    return pkgs


def strip_version(dep):
    # "libc6 (>= 2.34)" -> "libc6"; "python3:any" -> "python3"
    return re.split(r"[\s(:]", dep.strip(), maxsplit=1)[0]


def closure(roots, pkgs):
    """Installed packages reachable from `roots` through hard dependencies."""
    providers = {}
    for name, p in pkgs.items():
        providers.setdefault(name, set()).add(name)
        for v in p["provides"]:
            providers.setdefault(v, set()).add(name)
    seen, todo = set(), [r for r in roots if r in pkgs]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        for group in pkgs[n]["depends"]:
            for alt in group:
                todo.extend(providers.get(alt, ()))
    return seen


def owner(command):
    path = shutil.which(command)
    if path is None:
        return None, None
    candidates = [path, os.path.realpath(path)]
    # usr-merge: dpkg may know the file under /bin while PATH finds /usr/bin, or the reverse.
    for p in list(candidates):
        if p.startswith("/usr/"):
            candidates.append(p[4:])
        else:
            candidates.append("/usr" + p)
    for p in candidates:
        r = subprocess.run(["dpkg-query", "-S", p], capture_output=True, text=True)
        if r.returncode == 0:
            # "pkg1, pkg2: /path" (diversions print other lines first)
            for line in r.stdout.splitlines():
                if line.endswith(": " + p) and not line.startswith("diversion"):
                    return path, [s.strip().split(":")[0] for s in line.rsplit(": ", 1)[0].split(",")]
    return path, []


def check(script, pkgs):
    out = subprocess.run(
        ["bash", script, "--print-deps"], check=True, capture_output=True, text=True
    ).stdout
    wanted, commands = [], []
    for line in out.splitlines():
        kind, _, name = line.partition(" ")
        (wanted if kind == "package" else commands if kind == "command" else []).append(name)
    if not commands:
        print(f"{script}: --print-deps named no commands", file=sys.stderr)
        return False
    missing_pkgs = [p for p in wanted if p not in pkgs]
    covered = closure(wanted, pkgs)
    ok = True
    for p in missing_pkgs:
        print(f"{script}: package {p} is listed but not installed (did the script run?)")
        ok = False
    for c in commands:
        path, owners = owner(c)
        if path is None:
            print(f"{script}: command {c} not found: install the package that ships it in the script")
            ok = False
            continue
        if not owners:
            print(f"{script}: command {c} ({path}) belongs to no Debian package: install it from a package")
            ok = False
            continue
        good = [
            o
            for o in owners
            if o in covered
            or (o in pkgs and (pkgs[o]["essential"] or pkgs[o]["priority"] in BASE_PRIORITIES))
        ]
        if good:
            print(f"{script}: {c} <- {good[0]}")
        else:
            print(
                f"{script}: command {c} comes from {', '.join(owners)}, which the script neither "
                f"installs nor gets through a hard dependency (a Recommends is not installed): add it"
            )
            ok = False
    return ok


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    pkgs = installed_packages()
    results = [check(s, pkgs) for s in argv[1:]]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
