#!/bin/sh
# Paygress first-boot login for Proxmox VE LXC templates (installed as
# /usr/local/sbin/paygress-login, run by paygress-login.service before sshd).
#
# PVE's API installs a new container's password and SSH keys for root only. The Paygress
# backend adds one extra key line whose comment is `paygress-user=NAME` (a key nobody holds).
# This constant script reads that name, checks it, creates the user with root's keys and
# password hash, and locks root. It never evaluates what it reads: the name is matched against
# the same pattern Paygress validates with and passed to commands as one argument.
set -eu
keys=/root/.ssh/authorized_keys
[ -f "$keys" ] || exit 0
user=$(sed -n 's/^ssh-[a-z0-9-]* [A-Za-z0-9+/=]* paygress-user=\([a-z_][a-z0-9_-]\{0,31\}\)$/\1/p' "$keys" | head -n 1)
[ -n "$user" ] || exit 0
# Exactly the names Paygress reserves (src/validate.rs RESERVED_USERS): any other name the core
# accepts must work here, or a paid login would not exist.
case "$user" in
  root|daemon|bin|sys|sync|games|man|lp|mail|news|uucp|proxy|www-data|backup|list|irc|gnats|nobody|sshd|messagebus|_apt|systemd-*|polkitd|admin|operator|halt|shutdown)
    echo "paygress-login: refusing system account name" >&2; exit 1 ;;
esac
if ! id -u -- "$user" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash -- "$user"
fi
home=$(getent passwd -- "$user" | cut -d: -f6)
install -d -m 0700 -o "$user" -g "$user" -- "$home/.ssh"
grep -v ' paygress-user=' "$keys" > "$home/.ssh/authorized_keys" || true
chown -- "$user:$user" "$home/.ssh/authorized_keys"
chmod 0600 -- "$home/.ssh/authorized_keys"
hash=$(getent shadow root | cut -d: -f2)
usermod --password "$hash" -- "$user"
# Root is no longer a way in: no keys, no password.
: > "$keys"
passwd --lock root >/dev/null
