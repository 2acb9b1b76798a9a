#!/bin/sh
# Entrypoint of the Paygress SSH image: the Kubernetes backend's workload pods run it.
#
# It is constant: the buyer's login never reaches a shell string, and the password and key never
# reach a command line or an environment variable (the username, checked below and not a secret,
# is an argument to useradd and sshd's AllowUsers). The backend puts it in a Secret mounted read-only at $LOGIN_DIR
# (/etc/paygress/login): `username`, `password`, optionally `authorized_keys` and the SSH host key
# `ssh_host_ed25519_key` the backend made (buyers get its fingerprint). This script reads
# those files, checks the username against the rule Paygress already enforced, creates the user,
# sets the password by feeding "user:password" to chpasswd on stdin, installs the key, and
# runs sshd in the foreground as PID 1's only child.
set -eu

LOGIN_DIR=${LOGIN_DIR:-/etc/paygress/login}
SSHD=${SSHD:-/usr/sbin/sshd}

die() {
    echo "paygress-entrypoint: $*" >&2
    exit 1
}

[ -r "$LOGIN_DIR/username" ] || die "no login at $LOGIN_DIR (the pod's Secret volume)"
[ -r "$LOGIN_DIR/password" ] || die "no password at $LOGIN_DIR"
user=$(cat "$LOGIN_DIR/username")

# The same rule as Paygress's validation: ^[a-z_][a-z0-9_-]{0,31}$, not a system account.
case "$user" in
    "" | root | nobody | daemon | bin | sys | sshd) die "refusing the username" ;;
esac
if [ "${#user}" -gt 32 ]; then die "username too long"; fi
case "$user" in
    [a-z_]*) ;;
    *) die "username must start with a lowercase letter or _" ;;
esac
case "$user" in
    *[!a-z0-9_-]*) die "username may hold only a-z 0-9 _ -" ;;
esac
# The password is one line (Paygress refuses control characters): the whole file is its
# first line.
if [ "$(head -n 1 "$LOGIN_DIR/password" | wc -c)" -ne "$(wc -c <"$LOGIN_DIR/password")" ]; then
    die "password must be one line"
fi

if ! id -u -- "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash --user-group -- "$user"
fi
# chpasswd reads "name:password" on stdin; neither goes through an argument or the shell.
{
    printf '%s:' "$user"
    tr -d '\n' <"$LOGIN_DIR/password"
    printf '\n'
} | chpasswd

home=$(getent passwd -- "$user" | cut -d: -f6)
if [ -s "$LOGIN_DIR/authorized_keys" ]; then
    install -d -m 0700 -o "$user" -g "$user" -- "$home/.ssh"
    install -m 0600 -o "$user" -g "$user" -- "$LOGIN_DIR/authorized_keys" "$home/.ssh/authorized_keys"
fi

mkdir -p /run/sshd
chmod 0755 /run/sshd
if [ -s "$LOGIN_DIR/ssh_host_ed25519_key" ]; then
    # The host key the backend made: its fingerprint is in the buyer's spawn answer, so the
    # first connection can already be checked. It is the only host key sshd offers (any other
    # an image or its sshd_config brings is removed).
    rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
    install -m 0600 -o root -g root -- "$LOGIN_DIR/ssh_host_ed25519_key" /etc/ssh/ssh_host_ed25519_key
    set -- -h /etc/ssh/ssh_host_ed25519_key "$@"
else
    ssh-keygen -A >/dev/null
fi
# The tier's password and key logins; no root login, no forwarding to the cluster's inside.
exec "$SSHD" -D -e \
    -o PermitRootLogin=no \
    -o PasswordAuthentication=yes \
    -o KbdInteractiveAuthentication=no \
    -o AllowTcpForwarding=no \
    -o GatewayPorts=no \
    -o PermitTunnel=no \
    -o X11Forwarding=no \
    -o "AllowUsers=$user" \
    "$@"
